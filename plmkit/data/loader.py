"""A resumable, rank-sharded batch loader.

Lightning stores the state of any train loader with ``state_dict``/``load_state_dict`` in the
checkpoint and restores it on resume. This loader's state is ``(epoch, batches consumed)``;
the order of an epoch is a permutation seeded by ``(seed, epoch)`` and every batch reseeds the
collator from ``(seed, epoch, batch)``, so a resumed run sees exactly the batches, and the
masks, it would have seen. Written by hand because torch's DataLoader has no state and
torchdata's StatefulDataLoader would pull another torch build.

Batches are counted as consumed when the training step receives them (the DataModule's
``on_before_batch_transfer``), not when a worker produced them, so prefetching is harmless.

Training step of a batch: the loader counts every training batch it hands out (saved in the
state, so a resume continues the count) and, before collating batch ``n``, calls
``collator.set_step(n // accumulate_grad_batches)`` when the collator has ``set_step``, in
the worker that builds it. So a collator whose behaviour follows the training step (ERNIE's
masking-level schedule) sees the exact optimizer step that will train on the batch, however
far ahead the workers prefetch.

Sharding across ranks (``world_size`` processes, ``batch_size`` rows each): global batch ``k``
of an epoch is ``order[k * G : (k + 1) * G]`` with ``G = batch_size * world_size``, and rank
``r`` trains on rows ``[r * batch_size, (r + 1) * batch_size)`` of it. So the union of the
ranks' batch ``k`` is exactly batch ``k`` of a single process with ``batch_size = G``, ranks
never overlap, and every sample is seen at most once per epoch. The remainder of an epoch
that does not fill a global batch (``len(dataset) % G`` samples) is dropped; since every
epoch is a new permutation, a different remainder is dropped each epoch.

Masks do not depend on the world size (``collate="global"``, the default): every rank
collates the whole global batch with the seed of that global batch and keeps its own rows,
so a run on N ranks draws the same masks, pairs and spans as one process with the same global
batch (the collator works world_size times; it is vectorized and runs in the loader workers,
so this is cheap next to the model). ``collate="local"`` collates only the rank's rows, seeded
per ``(batch, rank)``: less collator work on many ranks, but the masks then depend on the
world size. With one process both modes are the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger("plmkit")

POSITION_KEY = "_position"
NUM_TOKENS_KEY = "_num_tokens"

Collate = Literal["global", "local"]


def batch_seed(seed: int, epoch: int, position: int, rank: int = 0) -> int:
    """A 63-bit seed unique to one batch (``collate="local"``: one batch of one rank)."""
    mixed = np.random.SeedSequence([seed, epoch, position, rank]).generate_state(2, np.uint32)
    return int(mixed[0]) << 31 | int(mixed[1]) >> 1


def slice_batch(batch: dict[str, Any], start: int, stop: int, rows: int) -> dict[str, Any]:
    """Rows ``[start, stop)`` of a collated batch of ``rows`` rows.

    Every tensor (and list) whose first dimension is ``rows`` is sliced; a collator whose
    output has other per-batch values must define ``slice_batch(batch, start, stop)`` itself.
    """
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == rows:
            # a copy: a view would drag the whole global batch through worker pipes
            out[key] = value[start:stop].clone()
        elif isinstance(value, list) and len(value) == rows:
            out[key] = value[start:stop]
        else:
            raise ValueError(
                f"collated batch field '{key}' is not one row per example, so it cannot be "
                "split between ranks; give the collator a slice_batch(batch, start, stop) "
                "method or use --data.collate local"
            )
    return out


class _Batches(Dataset):
    """Item k is the collated batch k of one rank for one epoch."""

    def __init__(self, loader: ResumableLoader, epoch: int, first_number: int = 0) -> None:
        self.loader = loader
        self.epoch = epoch
        # batch ``position`` is the training batch number ``first_number + position``
        self.first_number = first_number
        self._order: np.ndarray | None = None

    @property
    def order(self) -> np.ndarray:
        """The epoch's order, computed where batches are made (in the loader worker, not the
        main process) and never pickled: it is one index per block of the corpus."""
        if self._order is None:
            self._order = self.loader.order(self.epoch)
        return self._order

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_order": None}

    def number(self, position: int) -> int:
        return self.first_number + position

    def __len__(self) -> int:
        return len(self.loader)

    def __getitem__(self, position: int) -> dict[str, Any]:
        ld = self.loader
        first, stop = ld.rows(position)
        whole = ld.collate == "global" and ld.world_size > 1
        if whole:
            first, stop = ld.rows(position, whole=True)
        examples = [ld.dataset[int(i)] for i in self.order[first:stop]]
        rank = ld.rank if ld.collate == "local" else 0
        step = self.number(position) // ld.accumulate_grad_batches if ld.shuffle else None
        return collate_rows(ld.collator, examples, batch_seed(ld.seed, self.epoch, position, rank),
                            step, ld.rank * ld.batch_size if whole else None, ld.batch_size)


def collate_rows(collator: Callable[[list[dict[str, Any]]], dict[str, Any]],
                 examples: list[dict[str, Any]], seed: int, step: int | None,
                 start: int | None, rows: int) -> dict[str, Any]:
    """Collate one batch: reseed the collator with ``seed`` (when it has ``reseed``), give it
    the training step ``step`` (when not None and it has ``set_step``), collate, and with
    ``start`` (``examples`` is the whole global batch) keep rows ``[start, start + rows)``.
    The batch also counts its real tokens (``NUM_TOKENS_KEY``)."""
    reseed = getattr(collator, "reseed", None)
    if reseed is not None:
        reseed(seed)
    set_step = getattr(collator, "set_step", None)
    if set_step is not None and step is not None:
        set_step(step)
    batch = collator(examples)
    if start is not None:
        custom = getattr(collator, "slice_batch", None)
        batch = (custom(batch, start, start + rows) if custom is not None
                 else slice_batch(batch, start, start + rows, len(examples)))
        examples = examples[start : start + rows]
    mask = batch.get("attention_mask")
    batch[NUM_TOKENS_KEY] = int(mask.sum()) if mask is not None else sum(
        len(e["input_ids"]) for e in examples
    )
    return batch


class ResumableLoader:
    """Iterates the batches of one rank; its position is saved in checkpoints.

    Args:
        dataset: map-style dataset of collator examples.
        collator: ``collator(examples) -> batch``; reseeded per batch when it has ``reseed``.
        batch_size: rows per batch on this rank (the global batch is ``batch_size x
            world_size``).
        seed: seed of the epoch permutations and of the collator.
        shuffle: a new permutation every epoch (else the dataset order, e.g. validation).
        rank, world_size: this process's data-parallel rank and the number of ranks.
        num_workers, pin_memory: as in ``torch.utils.data.DataLoader``.
        collate: ``"global"`` (masks independent of the world size) or ``"local"``; see the
            module docstring.
    """

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
        collate: Collate = "global",
    ) -> None:
        if collate not in ("global", "local"):
            raise ValueError(f"collate must be 'global' or 'local', got {collate!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.dataset, self.collator = dataset, collator
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.collate = collate
        self.epoch = 0
        self.consumed = 0
        self.batches = 0  # training batches consumed over all epochs
        self.accumulate_grad_batches = 1

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank; the remainder is dropped)."""
        return len(self.dataset) // self.global_batch_size  # type: ignore[arg-type]

    def rows(self, position: int, whole: bool = False) -> tuple[int, int]:
        """Slice of the epoch's order that this rank reads for batch ``position``
        (``whole=True``: the slice of the whole global batch)."""
        first = position * self.global_batch_size
        if whole:
            return first, first + self.global_batch_size
        first += self.rank * self.batch_size
        return first, first + self.batch_size

    def order(self, epoch: int) -> np.ndarray:
        """The dataset indices of ``epoch`` in the order they are read."""
        n = len(self.dataset)  # type: ignore[arg-type]
        # int32 halves the one array per corpus block; shuffling it draws the same order as
        # ``permutation(n)`` in int64, so runs resume across this change
        order = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
        if self.shuffle:
            np.random.default_rng([self.seed, epoch]).shuffle(order)
        return order

    def sample_ids(self, epoch: int, position: int) -> np.ndarray:
        """Dataset indices of this rank's batch ``position`` in ``epoch`` (for checks)."""
        first, stop = self.rows(position)
        return self.order(epoch)[first:stop]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, start = self.epoch, self.consumed
        if start >= len(self):
            epoch, start = epoch + 1, 0
            self.epoch, self.consumed = epoch, 0
        batches = _Batches(self, epoch, first_number=self.batches - start)
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
                batch[POSITION_KEY] = (epoch, position, batches.number(position))
            yield batch
        if self.shuffle and self.epoch == epoch and self.consumed >= len(self):
            self.epoch, self.consumed = epoch + 1, 0

    def mark_consumed(self, position: tuple[int, ...]) -> None:
        """Record that the training step received batch ``position = (epoch, index,
        number)`` (``number``: its count over all epochs)."""
        self.epoch, self.consumed = position[0], position[1] + 1
        if len(position) > 2:
            self.batches = position[2] + 1

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed,
                "global_batch_size": self.global_batch_size, "batches": self.batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore ``(epoch, consumed)``; the position counts global batches, so a run may be
        resumed on another number of ranks as long as the global batch size is the same."""
        if "consumed" not in state:  # a streamed run (--data.streaming) resumed from the cache
            log.warning("the checkpoint was trained with --data.streaming true: the data "
                        "starts again at the beginning of the corpus")
            return
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
        self.batches = int(state.get("batches", self.epoch * len(self) + self.consumed))
        saved = int(state.get("global_batch_size", self.global_batch_size))
        if saved != self.global_batch_size:
            # same samples consumed, rounded down to whole batches of the new size
            self.consumed = self.consumed * saved // self.global_batch_size
            log.warning(
                "the checkpoint was trained with a global batch of %d, this run uses %d: the "
                "epoch continues near, not exactly at, the same sample", saved,
                self.global_batch_size,
            )
