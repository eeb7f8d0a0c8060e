"""The DataModule every objective trains with: corpus -> tokenizer -> cache -> blocks -> batches.

It asks the objective being trained (``trainer.lightning_module``) how to pack blocks and for
its collator, and gives the objective the tokenizer before the model is built.

With several processes, ``prepare_data`` (Lightning runs it on local rank 0 of every node, or
on global rank 0 only with ``shared_filesystem``; the other ranks wait) trains the tokenizer
and tokenizes the corpus into the cache once; ``setup`` then opens the caches by memory map on
every rank, and every rank uses rank 0's tokenizer (broadcast), so no two ranks can disagree on
the vocabulary. The tokenized corpus is a sharded cache written in bounded memory and resumed
after an interruption (:mod:`plmkit.data.cache`); the packed block index of each split is
cached beside it, so a second run starts training at once whatever the corpus size.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from transformers import PreTrainedTokenizerFast

from plmkit.data import corpus as corpus_io
from plmkit.data.cache import ShardedCorpus, cached_tokenize, exclusive, staged
from plmkit.data.loader import POSITION_KEY, Collate, ResumableLoader
from plmkit.data.packing import BlockDataset, Blocks, pack
from plmkit.data.streaming import CHUNK_DOCUMENTS, held_out, streaming_loaders
from plmkit.data.tokenizer import (
    TokenizerType,
    add_special_tokens,
    load_tokenizer,
    tokenizer_digest,
    tokenizer_from_state,
    tokenizer_to_state,
    train_tokenizer,
)
from plmkit.errors import PlmkitError

log = logging.getLogger("plmkit")


def default_cache_dir() -> Path:
    """``$PLMKIT_CACHE`` or ``~/.cache/plmkit``."""
    return Path(os.environ.get("PLMKIT_CACHE", Path.home() / ".cache" / "plmkit"))


class PretrainDataModule(L.LightningDataModule):
    """Reads a corpus, tokenizes it once (cached), packs it and serves resumable batches."""

    def __init__(
        self,
        corpus: str | list[str] = "bundled",
        tokenizer: str | None = None,
        tokenizer_type: TokenizerType = "wordpiece",
        vocab_size: int = 8192,
        lowercase: bool = True,
        max_length: int = 128,
        batch_size: int = 32,
        val_fraction: float = 0.01,
        max_documents: int | None = None,
        line_per_document: bool = False,
        text_field: str = "text",
        entity_field: str | None = None,
        num_workers: int = 1,
        num_proc: int | None = None,
        shared_filesystem: bool = False,
        shard_mb: float = 32.0,
        cache_dir: str | None = None,
        seed: int = 0,
        collate: Collate = "global",
        streaming: bool = False,
        stream_chunk_documents: int = CHUNK_DOCUMENTS,
    ) -> None:
        """
        Args:
            corpus: "bundled" (WordNet glosses), a .txt/.jsonl/.parquet file (gz allowed),
                a folder, a glob, a list of those, or a folder saved with ``save_to_disk``.
            tokenizer: a tokenizer.json or HF tokenizer folder; unset: train one on the corpus.
            tokenizer_type: model of the tokenizer trained when none is given.
            vocab_size: vocabulary size of the tokenizer trained when none is given.
            lowercase: lowercase text in the trained tokenizer.
            max_length: model input length in tokens, special tokens included.
            batch_size: sequences per batch on each device.
            val_fraction: fraction of documents held out (deterministically) for validation.
            max_documents: use only the first N documents (quick experiments and tests).
            line_per_document: in .txt files, every line is a document (default: blank-line
                separated blocks, one sentence per line).
            text_field: the text column of .jsonl / .parquet / saved datasets.
            entity_field: a column of .jsonl / .parquet / saved datasets holding each
                document's precomputed entity spans as character offsets into its text,
                ``[[start, end], ...]`` (or ``[start, end, label]`` / ``{"start", "end"}``);
                they reach the collator as ``entity_ids`` (ERNIE masks each as one unit).
            num_workers: DataLoader worker processes.
            num_proc: processes that tokenize the corpus (default: every core available).
            shared_filesystem: the cache folder is shared by every node: one process in all
                tokenizes (default: one process per node, each with its own cache).
            shard_mb: at most this many MB of text per shard of the tokenized cache (the
                memory a tokenizer process and the packing of one shard need grow with it); a
                corpus under 16 x shard_mb is cut into 16 shards of at least 1 MB.
            cache_dir: where tokenizers and tokenized corpora are cached
                (default ``$PLMKIT_CACHE`` or ``~/.cache/plmkit``).
            seed: seed of the shuffling, the masks and the validation split.
            collate: with several ranks, ``global`` (default): every rank collates the whole
                global batch and keeps its rows, so masks do not depend on the number of
                ranks; ``local``: each rank collates only its rows (less work on many ranks,
                masks depend on the world size). See :mod:`plmkit.data.loader`.
            streaming: train straight from the text, tokenized in the loader workers, with
                nothing cached (a corpus read once); needs --trainer.max_steps and shuffles
                only within chunks. Without --data.tokenizer one is still trained first (a
                pass over the corpus, cached). See :mod:`plmkit.data.streaming`.
            stream_chunk_documents: with ``streaming``, documents per chunk (the unit that
                is tokenized, packed and shuffled).
        """
        super().__init__()
        if max_length < 8:
            raise PlmkitError(f"data.max_length must be at least 8, got {max_length}")
        if batch_size < 1:
            raise PlmkitError(f"data.batch_size must be at least 1, got {batch_size}")
        if not 0.0 <= val_fraction < 1.0:
            raise PlmkitError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        corpus_io.resolve_corpus(corpus)  # fail now, before a run folder is written
        self.corpus, self.tokenizer_path = corpus, tokenizer
        self.tokenizer_type, self.vocab_size, self.lowercase = tokenizer_type, vocab_size, lowercase
        self.max_length, self.batch_size = max_length, batch_size
        self.val_fraction, self.max_documents = val_fraction, max_documents
        self.line_per_document, self.text_field = line_per_document, text_field
        self.entity_field = entity_field
        self.num_workers, self.num_proc, self.seed = num_workers, num_proc, seed
        if num_proc is not None and num_proc < 1:
            raise PlmkitError(f"data.num_proc must be at least 1, got {num_proc}")
        self.shared_filesystem = shared_filesystem
        if shard_mb <= 0:
            raise PlmkitError(f"data.shard_mb must be positive, got {shard_mb}")
        self.shard_mb = shard_mb
        # Lightning runs prepare_data on local rank 0 of each node, or on global rank 0 only
        self.prepare_data_per_node = not shared_filesystem
        if collate not in ("global", "local"):
            raise PlmkitError(f"data.collate must be 'global' or 'local', got {collate!r}")
        self.collate = collate
        if stream_chunk_documents < 1:
            raise PlmkitError("data.stream_chunk_documents must be at least 1, got "
                              f"{stream_chunk_documents}")
        self.streaming, self.stream_chunk_documents = streaming, stream_chunk_documents
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.tokenizer: PreTrainedTokenizerFast | None = None
        self.cache_hit: bool | None = None
        self.corpus_key: str | None = None
        self._loaders: dict[str, ResumableLoader] = {}

    # ------------------------------------------------------------------------ tokenizer
    def use_tokenizer(self, tokenizer: PreTrainedTokenizerFast) -> None:
        """Use this tokenizer (e.g. the one stored in a checkpoint being resumed)."""
        self.tokenizer = tokenizer

    def _corpus_key(self, **extra: object) -> str:
        return corpus_io.fingerprint(
            corpus_io.resolve_corpus(self.corpus),
            text_field=self.text_field,
            entity_field=self.entity_field,
            line_per_document=self.line_per_document,
            **extra,
        )

    def tokenized_key(self, tokenizer: PreTrainedTokenizerFast) -> str:
        """The cache key of the corpus tokenized with ``tokenizer`` (folder under
        ``<cache_dir>/tokenized``)."""
        return self._corpus_key(tokenizer=tokenizer_digest(tokenizer),
                                max_documents=self.max_documents, shard_mb=self.shard_mb)

    def _documents(self) -> Iterator[corpus_io.Document]:
        """The corpus's documents, streamed (the first ``max_documents`` only)."""
        docs = corpus_io.read_documents(self.corpus, self.text_field, self.line_per_document,
                                        entity_field=self.entity_field)
        return itertools.islice(docs, self.max_documents)

    def _resolve_tokenizer(self, extra_special: list[str]) -> PreTrainedTokenizerFast:
        if self.tokenizer is not None:
            tokenizer = self.tokenizer
        elif self.tokenizer_path:
            tokenizer = load_tokenizer(self.tokenizer_path)
        else:
            key = self._corpus_key(
                tokenizer_type=self.tokenizer_type, vocab=self.vocab_size, lower=self.lowercase,
                max_documents=self.max_documents,
            )
            path = self.cache_dir / "tokenizers" / key
            if (path / "tokenizer.json").exists():
                tokenizer = load_tokenizer(path)
            else:
                log.info("training a %s tokenizer (vocab %d)", self.tokenizer_type,
                         self.vocab_size)
                tokenizer = train_tokenizer(
                    (text for text, _ in self._documents()), self.tokenizer_type,
                    self.vocab_size, self.lowercase,
                )
                _save_atomically(tokenizer, path)
        add_special_tokens(tokenizer, extra_special)
        self.tokenizer = tokenizer
        return tokenizer

    # ---------------------------------------------------------------------------- setup
    def prepare(self, objective: Any) -> ShardedCorpus | None:
        """Resolve the tokenizer and the tokenized corpus for ``objective``."""
        tokenizer = self._resolve_tokenizer(objective.special_tokens())
        key = self.tokenized_key(tokenizer)
        self.corpus_key = key
        if self.streaming:  # the loader workers tokenize as they read: nothing is cached
            return None
        size, plain = corpus_io.corpus_size(corpus_io.resolve_corpus(self.corpus))
        # at least 16 shards when the corpus is small, so every tokenizer process has work
        shard_bytes = int(min(self.shard_mb * 2**20, max(2**20, size // 16)))
        corpus, self.cache_hit = cached_tokenize(
            self._documents, tokenizer.backend_tokenizer, self.cache_dir, key, self.num_proc,
            total_bytes=size if plain and not self.max_documents else None,
            shard_bytes=shard_bytes,
        )
        if corpus.num_documents == 0 or corpus.num_tokens == 0:
            raise PlmkitError(f"corpus {self.corpus} produced no tokens; check its contents")
        top = int(corpus.max_id)
        if top >= len(tokenizer):
            raise PlmkitError(
                f"the tokenized corpus holds token id {top} but the tokenizer has only "
                f"{len(tokenizer)} entries; delete {self.cache_dir / 'tokenized'} or pass the "
                "tokenizer the corpus was tokenized with"
            )
        return corpus

    def split_documents(self, num_documents: int) -> tuple[np.ndarray, np.ndarray]:
        """Deterministic train/validation split: masks of the training and the held-out
        documents, by the same hash of ``(seed, index)`` as streaming mode (computed a million
        documents at a time, so its memory stays small)."""
        held = np.zeros(num_documents, dtype=bool)
        for first in range(0, num_documents, 1 << 20):
            index = np.arange(first, min(first + (1 << 20), num_documents))
            held[index] = held_out(self.seed, index, self.val_fraction)
        if self.val_fraction > 0 and not held.any() and num_documents > 1:
            held[-1] = True
        return ~held, held

    def check_max_length(self, objective: Any) -> None:
        """A one-line error when ``max_length`` exceeds what the objective's model supports."""
        limit = objective.max_positions() if hasattr(objective, "max_positions") else None
        if limit is not None and self.max_length > limit:
            raise PlmkitError(
                f"data.max_length {self.max_length} is above the {limit} positions of the "
                f"{getattr(objective, 'objective_name', 'model')} model; lower --data.max_length "
                f"or raise --model.max_position_embeddings to at least {self.max_length}"
            )

    def prepare_data(self) -> None:
        """Fill the tokenizer and tokenized-corpus caches once, before ``setup``.

        Lightning calls this on local rank 0 only while the other ranks wait, so several
        processes never train the tokenizer or tokenize the corpus at the same time.
        """
        objective = self.trainer.lightning_module if self.trainer is not None else None
        if objective is not None:
            self.check_max_length(objective)
            self.prepare(objective)

    def _same_tokenizer_on_every_rank(self, objective: Any) -> ShardedCorpus | None:
        """Use rank 0's tokenizer on every rank (tokenizer training is not guaranteed to be
        deterministic across machines); returns the corpus again when it had to change."""
        strategy = self.trainer.strategy if self.trainer is not None else None
        if strategy is None or self.trainer.world_size < 2:
            return None
        assert self.tokenizer is not None
        state = strategy.broadcast(tokenizer_to_state(self.tokenizer), src=0)
        if tokenizer_digest(tokenizer_from_state(state)) == tokenizer_digest(self.tokenizer):
            return None
        log.warning("rank %d built another tokenizer than rank 0; using rank 0's",
                    self.trainer.global_rank)
        self.tokenizer = tokenizer_from_state(state)
        return self.prepare(objective)

    def setup(self, stage: str | None = None) -> None:
        if self._loaders:
            return
        objective = self.trainer.lightning_module if self.trainer is not None else None
        if objective is None:
            raise RuntimeError("PretrainDataModule.setup needs a Trainer with an objective")
        self.check_max_length(objective)
        corpus = self.prepare(objective)
        corpus = self._same_tokenizer_on_every_rank(objective) or corpus
        tokenizer = self.tokenizer
        assert tokenizer is not None
        objective.attach_tokenizer(tokenizer, self.max_length)
        block = objective.block_length(self.max_length)
        separator = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else (
            tokenizer.eos_token_id
        )
        if self.streaming:
            self._loaders = streaming_loaders(self, objective, block, separator)
            return
        train_docs, val_docs = self.split_documents(corpus.num_documents)
        rank, world = self.trainer.global_rank, self.trainer.world_size
        for split, docs, shuffle in (("train", train_docs, True), ("val", val_docs, False)):
            if not docs.any():
                continue
            blocks = self._blocks(corpus, docs, block, objective.packing, separator)
            if len(blocks) < self.batch_size * world and split == "train":
                raise PlmkitError(
                    f"the corpus gives only {len(blocks)} training blocks of {block} tokens, "
                    f"fewer than one batch ({self.batch_size} x {world} devices); "
                    "use a larger corpus or a smaller data.batch_size"
                )
            self._loaders[split] = ResumableLoader(
                BlockDataset(blocks),
                objective.build_collator(seed=self.seed),
                self.batch_size,
                seed=self.seed,
                shuffle=shuffle,
                rank=rank,
                world_size=world,
                num_workers=self.num_workers,
                pin_memory=True,
                collate=self.collate,
            )
            log.info("%s: %d blocks, %d tokens", split, len(blocks), blocks.num_tokens)

    def _blocks(self, corpus: ShardedCorpus, docs: np.ndarray, block: int, mode: str,
                separator: int | None) -> Blocks:
        """The packed blocks of ``docs``, from the cache beside the tokenized corpus or
        packed now and stored there (atomically)."""
        digest = hashlib.sha256(np.packbits(docs).tobytes())
        name = f"{mode}-{block}-{separator}-{digest.hexdigest()[:12]}"
        path = self.cache_dir / "tokenized" / str(self.corpus_key) / "packed" / name
        blocks = Blocks.load(path, corpus)
        if blocks is None:
            with exclusive(path, "packs this block index"):
                blocks = Blocks.load(path, corpus)  # another run may have packed it meanwhile
                if blocks is None:
                    try:
                        with staged(path) as tmp:
                            pack(corpus, docs, block, mode, separator, path=tmp)
                    except OSError as exc:
                        if exc.errno == errno.ENOSPC:
                            raise PlmkitError(
                                f"the disk is full while writing the block index to {path}; "
                                "free space or set --data.cache_dir to a larger disk") from exc
                        raise
                    blocks = Blocks.load(path, corpus)
                    assert blocks is not None
        return blocks

    def train_dataloader(self) -> ResumableLoader:
        loader = self._loaders["train"]
        if self.trainer is not None:  # the collators' step counts optimizer steps
            loader.accumulate_grad_batches = int(self.trainer.accumulate_grad_batches)
        return loader

    def val_dataloader(self) -> ResumableLoader | list:
        loader = self._loaders.get("val")
        if self.streaming:  # a streamed split has no len()
            return loader if loader is not None else []
        return loader if loader is not None and len(loader) > 0 else []

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and POSITION_KEY in batch:
            self._loaders["train"].mark_consumed(batch.pop(POSITION_KEY))
        return batch

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        """Stored in checkpoints: which tokenized corpus the run trained on."""
        return {"corpus_key": self.corpus_key} if self.corpus_key else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("corpus_key")
        if saved and self.corpus_key and saved != self.corpus_key:
            log.warning(
                "the corpus (files, sizes or modification times) or its settings changed since "
                "the checkpoint was written: training goes on, but not with the batches an "
                "uninterrupted run would have seen"
            )


def _save_atomically(tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    """``save_pretrained`` into a temporary folder renamed into place (no torn reads); a run
    that trains the same tokenizer at the same time waits and keeps the first one saved."""
    with exclusive(path, "saves this tokenizer"):
        if not (path / "tokenizer.json").exists():
            with staged(path) as tmp:
                tokenizer.save_pretrained(str(tmp))
