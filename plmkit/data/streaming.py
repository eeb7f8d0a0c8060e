"""Streaming mode (``--data.streaming true``): train straight from the text, for a corpus read
once, without the tokenize-everything pre-pass and without any cache on disk.

**Chunks.** The corpus's document stream is cut into chunks of ``chunk_documents`` documents
(chunk ``j`` holds documents ``[j * C, (j + 1) * C)``, global corpus indices). A chunk is the
unit of work: it is read, its training (or held-out) documents are tokenized
(:func:`~plmkit.data.preprocess.encode_documents`) and packed with the objective's packing
mode (:func:`~plmkit.data.packing.pack`; blocks keep the *global* document index in
``doc_ids``, so the sentence tasks' "another document" logic works as with the cache), its
blocks are shuffled with a seed from ``(seed, epoch, j)`` and cut into global batches; the
remainder of a chunk that does not fill a global batch is dropped. There is no shuffle across
chunks: the order of the corpus is the order of training, shuffled within a chunk only.

**Workers.** Loader worker ``w`` of ``W`` handles chunks ``j ≡ w (mod W)`` and yields one item
per chunk (the list of its batches); torch's DataLoader returns the workers' items round
robin, so the main process sees the chunks in order and flattens them into batches. Every
worker reads through the whole text (cheap) but tokenizes only its own chunks.

**Ranks.** Global batch ``k`` of chunk ``j`` holds ``batch_size x world_size`` blocks; rank
``r`` trains on rows ``[r * batch_size, (r + 1) * batch_size)`` of it, exactly as
:class:`~plmkit.data.loader.ResumableLoader` shards ranks (``collate="global"``: every rank
collates the whole global batch with its seed and keeps its rows, so masks do not depend on
the world size; ``"local"``: only its rows, seeded per rank). Ranks are disjoint and all have
the same number of batches per chunk (so no rank waits on another at a chunk's end), at the
cost that every rank tokenizes every chunk.

**Resume.** The loader's state is ``(epoch, chunk, batch within the chunk, batches in all)``,
saved in checkpoints by Lightning (``state_dict``/``load_state_dict``) and advanced when the
training step receives a batch (:meth:`StreamingLoader.mark_consumed`, called by the
DataModule's ``on_before_batch_transfer``). A resumed run re-reads the text up to that chunk,
re-tokenizes it and skips its consumed batches, so it trains on exactly the batches an
unbroken run would have. Every batch reseeds the collator from ``(seed, epoch, chunk, batch)``
and a collator with ``set_step`` gets the optimizer step of the batch (``batches //
accumulate_grad_batches``), so masks are the same too. A worker cannot know how many batches
the chunks before its own hold, so a collator with ``set_step`` (ERNIE's level schedule)
collates in the main process; every other collator collates in the workers.

**Validation.** A document is held out when a hash of ``(seed, document index)`` falls below
``val_fraction`` (independent of the chunk size). The validation loader streams the held-out
documents from the start of the corpus in order (no shuffle), packed chunk by chunk, and
stops after ``max_batches`` batches, so a validation reads only the head of the corpus.

The number of training batches is unknown, so the loaders have no ``len()``: ``fit`` needs
``--trainer.max_steps`` (schedules and the progress bar use it).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from plmkit.data.corpus import Document, read_documents
from plmkit.data.loader import POSITION_KEY, Collate, batch_seed, collate_rows
from plmkit.data.packing import BlockDataset, pack
from plmkit.data.preprocess import encode_documents
from plmkit.errors import PlmkitError

log = logging.getLogger("plmkit")

#: documents per chunk (``--data.stream_chunk_documents``)
CHUNK_DOCUMENTS = 2000
#: validation batches when ``--trainer.limit_val_batches`` is not a number of batches
VAL_BATCHES = 100

Split = Literal["train", "val"]


@dataclass(frozen=True)
class StreamSource:
    """Where the documents come from: the ``--data`` reading options (picklable, so loader
    workers can open the corpus themselves)."""

    corpus: str | tuple[str, ...]
    text_field: str = "text"
    line_per_document: bool = False
    entity_field: str | None = None
    max_documents: int | None = None

    def documents(self) -> Iterator[Document]:
        """The documents in corpus order (the first ``max_documents`` only)."""
        spec = self.corpus if isinstance(self.corpus, str) else list(self.corpus)
        docs = read_documents(spec, self.text_field, self.line_per_document,
                              entity_field=self.entity_field)
        return itertools.islice(docs, self.max_documents)


def held_out(seed: int, indices: np.ndarray, fraction: float) -> np.ndarray:
    """Whether each document (by corpus index) is held out for validation: a hash of
    ``(seed, index)`` (SplitMix64) below ``fraction``."""
    indices = np.asarray(indices)
    if fraction <= 0:
        return np.zeros(len(indices), dtype=bool)
    key = np.random.SeedSequence([seed, 1]).generate_state(1, np.uint64)[0]
    with np.errstate(over="ignore"):
        z = (indices.astype(np.uint64) ^ key) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53 < fraction


def _chunks(documents: Iterator[Document], size: int, wanted: Callable[[int], bool]
            ) -> Iterator[tuple[int, list[Document]]]:
    """``(j, documents of chunk j)`` for the wanted chunks; the others are only counted."""
    j, count, chunk = 0, 0, []
    for doc in documents:
        if wanted(j):
            chunk.append(doc)
        count += 1
        if count == size:
            if wanted(j):
                yield j, chunk
            j, count, chunk = j + 1, 0, []
    if count and wanted(j):
        yield j, chunk


def _identity(item: Any) -> Any:
    return item


class _ChunkStream(IterableDataset):
    """One item per chunk from ``first`` on, this worker's chunks only: ``(j, count, items)``
    with ``count`` the chunk's global batches and ``items`` its ``(k, batch)`` pairs from
    batch ``skip`` on (train; ``batch`` is the examples when the main process collates), or
    ``(j, 0, examples)`` (validation)."""

    def __init__(self, loader: StreamingLoader, epoch: int, first: int, skip: int) -> None:
        self.loader, self.epoch, self.first, self.skip = loader, epoch, first, skip

    def __iter__(self) -> Iterator[tuple[int, int, list]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        ld, first = self.loader, self.first

        def wanted(j: int) -> bool:
            return j >= first and (j - first) % workers == worker

        for j, docs in _chunks(ld.source.documents(), ld.chunk_documents, wanted):
            dataset = ld.chunk_dataset(j, docs)
            if ld.split == "val":
                examples = [] if dataset is None else [dataset[i] for i in range(len(dataset))]
                yield j, 0, examples
                continue
            if dataset is None:
                yield j, 0, []
                continue
            size = ld.global_batch_size
            count = len(dataset) // size
            order = np.random.default_rng([ld.seed, self.epoch, j]).permutation(len(dataset))
            items = []
            for k in range(self.skip if j == first else 0, count):
                rows = order[k * size:(k + 1) * size]
                if not ld.whole:
                    rows = rows[ld.rank * ld.batch_size:(ld.rank + 1) * ld.batch_size]
                examples = [dataset[int(i)] for i in rows]
                items.append((k, examples if ld.main_collates else
                              ld.collate_batch(examples, ld.chunk_seed(self.epoch, j, k))))
            yield j, count, items


class StreamingLoader:
    """Iterates one rank's batches straight from the corpus text; resumable by position.

    Args:
        source: the corpus and its reading options.
        tokenizer: the ``tokenizers`` tokenizer (``PreTrainedTokenizerFast.backend_tokenizer``).
        collator: ``collator(examples) -> batch``; reseeded per batch when it has ``reseed``.
        block_length, packing, separator: as for :func:`~plmkit.data.packing.pack`.
        batch_size: rows per batch on this rank (the global batch is ``batch_size x
            world_size``).
        split: ``"train"`` (shuffled within chunks, resumable) or ``"val"`` (held-out
            documents in order, at most ``max_batches`` batches).
        chunk_documents: documents per chunk.
        val_fraction: fraction of documents held out (see :func:`held_out`).
        seed, rank, world_size, num_workers, pin_memory, collate: as for
            :class:`~plmkit.data.loader.ResumableLoader`.
        max_batches: validation only: stop after this many batches.
    """

    def __init__(
        self,
        source: StreamSource,
        tokenizer: Tokenizer,
        collator: Callable[[list[dict[str, Any]]], dict[str, Any]],
        block_length: int,
        packing: str,
        separator: int | None,
        batch_size: int,
        split: Split = "train",
        chunk_documents: int = CHUNK_DOCUMENTS,
        val_fraction: float = 0.0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
        collate: Collate = "global",
        max_batches: int | None = None,
    ) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if collate not in ("global", "local"):
            raise ValueError(f"collate must be 'global' or 'local', got {collate!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if chunk_documents < 1:
            raise ValueError(f"chunk_documents must be positive, got {chunk_documents}")
        self.source, self.tokenizer, self.collator = source, tokenizer, collator
        self.block_length, self.packing, self.separator = block_length, packing, separator
        self.batch_size, self.split, self.chunk_documents = batch_size, split, chunk_documents
        self.val_fraction, self.seed = val_fraction, seed
        self.rank, self.world_size = rank, world_size
        self.num_workers, self.pin_memory, self.collate = num_workers, pin_memory, collate
        self.max_batches = max_batches
        self.epoch = 0
        self.chunk = 0  # the chunk of the next batch
        self.skip = 0  # batches of that chunk already consumed
        self.batches = 0  # training batches consumed over all epochs
        self.accumulate_grad_batches = 1
        self._epoch_end: tuple[int, int] | None = None  # (epoch, number of its last batch)

    # ------------------------------------------------------------------------ batches
    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    @property
    def whole(self) -> bool:
        """Whether this rank collates the whole global batch (then keeps its rows)."""
        return self.collate == "global" and self.world_size > 1

    @property
    def main_collates(self) -> bool:
        """Training batches are collated in the main process: the collator follows the
        training step, which only the main process knows."""
        return self.split == "train" and hasattr(self.collator, "set_step")

    def chunk_seed(self, epoch: int, chunk: int, k: int) -> int:
        """The collator seed of training batch ``k`` of ``chunk`` in ``epoch``."""
        rank = self.rank if self.collate == "local" else 0
        return batch_seed(self.seed, epoch, (chunk << 32) | k, rank)

    def chunk_dataset(self, chunk: int, docs: list[Document]) -> BlockDataset | None:
        """The packed blocks of the chunk's documents of this split (None: no tokens)."""
        index = chunk * self.chunk_documents + np.arange(len(docs))
        chosen = np.flatnonzero(held_out(self.seed, index, self.val_fraction)
                                == (self.split == "val"))
        if len(chosen) == 0:
            return None
        spans = [docs[i][1] for i in chosen] if docs[0][1] is not None else None
        corpus = encode_documents([docs[i][0] for i in chosen], self.tokenizer, spans)
        if corpus.num_tokens == 0:
            return None
        blocks = pack(corpus, np.arange(len(chosen)), self.block_length, self.packing,
                      self.separator)
        blocks.docs = index[chosen][np.asarray(blocks.docs)]  # global corpus indices
        return BlockDataset(blocks) if len(blocks) else None

    def collate_batch(self, examples: list[dict[str, Any]], seed: int,
                      step: int | None = None) -> dict[str, Any]:
        """Collate ``examples`` (this rank's rows, or the whole global batch) reseeded with
        ``seed`` (at training step ``step``) and keep this rank's rows."""
        start = self.rank * self.batch_size if self.whole else None
        return collate_rows(self.collator, examples, seed, step, start, self.batch_size)

    def _chunk_items(self, epoch: int, first: int, skip: int) -> Iterator[tuple[int, int, list]]:
        stream = _ChunkStream(self, epoch, first, skip)
        if self.num_workers == 0:
            return iter(stream)
        return iter(DataLoader(
            stream, batch_size=None, num_workers=self.num_workers, collate_fn=_identity,
            pin_memory=self.pin_memory and torch.cuda.is_available(), prefetch_factor=2,
            # its own generator: creating an iterator must not draw from the global RNG
            generator=torch.Generator().manual_seed(self.seed),
        ))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.split == "val":
            yield from self._val_batches()
            return
        self._roll_over()
        epoch, first, skip, number = self.epoch, self.chunk, self.skip, self.batches
        start = number
        for j, count, items in self._chunk_items(epoch, first, skip):
            for k, payload in items:
                batch = payload
                if self.main_collates:
                    batch = self.collate_batch(payload, self.chunk_seed(epoch, j, k),
                                               number // self.accumulate_grad_batches)
                batch[POSITION_KEY] = (epoch, j, k, number, count)
                yield batch
                number += 1
        if number > start:
            self._epoch_end = (epoch, number - 1)
            self._roll_over()
        elif first or skip:  # resumed after the epoch's last batch: on to the next epoch
            if (self.epoch, self.chunk, self.skip) == (epoch, first, skip):
                self.epoch, self.chunk, self.skip = epoch + 1, 0, 0
            yield from self.__iter__()
        else:
            raise PlmkitError(
                f"streaming gave no training batch ({self.batch_size} x {self.world_size} "
                f"blocks from {self.chunk_documents}-document chunks); use a larger corpus, a "
                "larger --data.stream_chunk_documents or a smaller --data.batch_size"
            )

    def _val_batches(self) -> Iterator[dict[str, Any]]:
        size, limit = self.global_batch_size, self.max_batches
        pending: list[dict[str, Any]] = []
        position = 0
        for _, _, examples in self._chunk_items(0, 0, 0):
            pending.extend(examples)
            while len(pending) >= size and (limit is None or position < limit):
                rows, pending = pending[:size], pending[size:]
                if not self.whole:
                    rows = rows[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
                rank = self.rank if self.collate == "local" else 0
                yield self.collate_batch(rows, batch_seed(self.seed, 0, position, rank))
                position += 1
            if limit is not None and position >= limit:
                return

    # ------------------------------------------------------------------ position
    def _roll_over(self) -> None:
        """On to the next epoch once the last batch of this one was consumed."""
        if self._epoch_end == (self.epoch, self.batches - 1):
            self.epoch, self.chunk, self.skip = self.epoch + 1, 0, 0
            self._epoch_end = None

    def mark_consumed(self, position: tuple[int, ...]) -> None:
        """Record that the training step received batch ``position = (epoch, chunk, k,
        number, batches of the chunk)``."""
        epoch, chunk, k, number, count = position
        self.epoch, self.batches = epoch, number + 1
        self.chunk, self.skip = (chunk + 1, 0) if k + 1 >= count else (chunk, k + 1)
        self._roll_over()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "chunk": self.chunk, "skip": self.skip,
                "batches": self.batches, "seed": self.seed,
                "global_batch_size": self.global_batch_size,
                "chunk_documents": self.chunk_documents}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the position; another global batch size or chunk size continues near,
        not exactly at, the same place (with a warning)."""
        if "chunk" not in state:
            log.warning("the checkpoint was trained from the tokenized cache, not streamed: "
                        "streaming starts again at the beginning of the corpus")
            self.epoch = int(state.get("epoch", 0))
            self.batches = int(state.get("batches", 0))
            return
        self.epoch, self.batches = int(state["epoch"]), int(state["batches"])
        self.chunk, self.skip = int(state["chunk"]), int(state["skip"])
        saved = int(state.get("global_batch_size", self.global_batch_size))
        chunk_documents = int(state.get("chunk_documents", self.chunk_documents))
        if chunk_documents != self.chunk_documents:
            self.chunk = self.chunk * chunk_documents // self.chunk_documents
            self.skip = 0
            log.warning("the checkpoint streamed chunks of %d documents, this run %d: the "
                        "epoch continues near, not exactly at, the same document",
                        chunk_documents, self.chunk_documents)
        elif saved != self.global_batch_size:
            self.skip = self.skip * saved // self.global_batch_size
            log.warning("the checkpoint was trained with a global batch of %d, this run uses "
                        "%d: the chunk continues near, not exactly at, the same block", saved,
                        self.global_batch_size)


def streaming_loaders(datamodule: Any, objective: Any, block_length: int,
                      separator: int | None) -> dict[str, StreamingLoader]:
    """The train (and validation) loaders of a ``PretrainDataModule`` with ``streaming``."""
    trainer = datamodule.trainer
    if trainer.state.fn == "fit" and trainer.max_steps in (None, -1):
        raise PlmkitError("--data.streaming true needs --trainer.max_steps: the number of "
                          "batches of a streamed corpus is unknown")
    corpus = datamodule.corpus
    source = StreamSource(corpus if isinstance(corpus, str) else tuple(corpus),
                          datamodule.text_field, datamodule.line_per_document,
                          datamodule.entity_field, datamodule.max_documents)
    limit = trainer.limit_val_batches
    common = dict(
        source=source, tokenizer=datamodule.tokenizer.backend_tokenizer,
        block_length=block_length, packing=objective.packing, separator=separator,
        batch_size=datamodule.batch_size, chunk_documents=datamodule.stream_chunk_documents,
        val_fraction=datamodule.val_fraction, seed=datamodule.seed, rank=trainer.global_rank,
        world_size=trainer.world_size, num_workers=datamodule.num_workers, pin_memory=True,
        collate=datamodule.collate,
    )
    loaders = {"train": StreamingLoader(collator=objective.build_collator(seed=datamodule.seed),
                                        split="train", **common)}
    if datamodule.val_fraction > 0:
        loaders["val"] = StreamingLoader(
            collator=objective.build_collator(seed=datamodule.seed), split="val",
            max_batches=limit if isinstance(limit, int) else VAL_BATCHES, **common)
    log.info("streaming %s in chunks of %d documents (nothing is cached)", corpus,
             datamodule.stream_chunk_documents)
    return loaders
