"""A resumable, rank-sharded batch loader.

Lightning stores the state of any train loader with ``state_dict``/``load_state_dict`` in the
checkpoint and restores it on resume. This loader's state is ``(epoch, batches consumed)``;
the order of an epoch is a permutation seeded by ``(seed, epoch)`` and every batch reseeds the
collator from ``(seed, epoch, batch, rank)``, so a resumed run sees exactly the batches,
and the masks, it would have seen. Written by hand because torch's DataLoader has no state
and torchdata's StatefulDataLoader would pull another torch build.

Batches are counted as consumed when the training step receives them (the DataModule's
``on_before_batch_transfer``), not when a worker produced them, so prefetching is harmless.
Every rank reads a disjoint slice of the same permutation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

POSITION_KEY = "_position"
NUM_TOKENS_KEY = "_num_tokens"


def batch_seed(seed: int, epoch: int, position: int, rank: int) -> int:
    """A 63-bit seed unique to one batch of one rank."""
    mixed = np.random.SeedSequence([seed, epoch, position, rank]).generate_state(2, np.uint32)
    return int(mixed[0]) << 31 | int(mixed[1]) >> 1


class _Batches(Dataset):
    """Item k is the collated batch k of one rank for one epoch."""

    def __init__(self, loader: ResumableLoader, epoch: int) -> None:
        self.loader = loader
        self.epoch = epoch
        self.order = loader.order(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __getitem__(self, position: int) -> dict[str, Any]:
        ld = self.loader
        first = (position * ld.world_size + ld.rank) * ld.batch_size
        examples = [ld.dataset[int(i)] for i in self.order[first : first + ld.batch_size]]
        reseed = getattr(ld.collator, "reseed", None)
        if reseed is not None:
            reseed(batch_seed(ld.seed, self.epoch, position, ld.rank))
        batch = ld.collator(examples)
        mask = batch.get("attention_mask")
        batch[NUM_TOKENS_KEY] = int(mask.sum()) if mask is not None else sum(
            len(e["input_ids"]) for e in examples
        )
        return batch


class ResumableLoader:
    """Iterates the batches of one rank; its position is saved in checkpoints."""

    def __init__(
        self,
        dataset: Dataset,
        collator: Callable[[list[dict[str, Any]]], dict[str, Any]],
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        self.dataset, self.collator = dataset, collator
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.epoch = 0
        self.consumed = 0

    def __len__(self) -> int:
        return len(self.dataset) // (self.batch_size * self.world_size)  # type: ignore[arg-type]

    def order(self, epoch: int) -> np.ndarray:
        n = len(self.dataset)  # type: ignore[arg-type]
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, start = self.epoch, self.consumed
        if start >= len(self):
            epoch, start = epoch + 1, 0
            self.epoch, self.consumed = epoch, 0
        batches = _Batches(self, epoch)
        positions = range(start, len(self))
        loader = DataLoader(
            batches,
            batch_size=None,
            sampler=positions,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            prefetch_factor=4 if self.num_workers else None,
            # its own generator: creating an iterator must not draw from the global RNG
            generator=torch.Generator().manual_seed(self.seed),
        )
        for position, batch in zip(positions, loader):
            if self.shuffle:
                batch[POSITION_KEY] = (epoch, position)
            yield batch
        if self.shuffle and self.epoch == epoch and self.consumed >= len(self):
            self.epoch, self.consumed = epoch + 1, 0

    def mark_consumed(self, position: tuple[int, int]) -> None:
        """Record that the training step received batch ``position = (epoch, index)``."""
        self.epoch, self.consumed = position[0], position[1] + 1

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
