"""The DataModule every objective trains with: corpus -> tokenizer -> cache -> blocks -> batches.

It asks the objective being trained (``trainer.lightning_module``) how to pack blocks and for
its collator, and gives the objective the tokenizer before the model is built.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from transformers import PreTrainedTokenizerFast

from plmkit.data import corpus as corpus_io
from plmkit.data.loader import POSITION_KEY, ResumableLoader
from plmkit.data.packing import BlockDataset, pack
from plmkit.data.preprocess import TokenizedCorpus, cached_tokenize
from plmkit.data.tokenizer import (
    TokenizerType,
    add_special_tokens,
    load_tokenizer,
    tokenizer_digest,
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
        num_workers: int = 1,
        num_proc: int | None = None,
        cache_dir: str | None = None,
        seed: int = 0,
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
            num_workers: DataLoader worker processes.
            num_proc: processes used to tokenize (default: up to 4).
            cache_dir: where tokenizers and tokenized corpora are cached
                (default ``$PLMKIT_CACHE`` or ``~/.cache/plmkit``).
            seed: seed of the shuffling, the masks and the validation split.
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
        self.num_workers, self.num_proc, self.seed = num_workers, num_proc, seed
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.tokenizer: PreTrainedTokenizerFast | None = None
        self.cache_hit: bool | None = None
        self._loaders: dict[str, ResumableLoader] = {}

    # ------------------------------------------------------------------------ tokenizer
    def use_tokenizer(self, tokenizer: PreTrainedTokenizerFast) -> None:
        """Use this tokenizer (e.g. the one stored in a checkpoint being resumed)."""
        self.tokenizer = tokenizer

    def _corpus_key(self, **extra: object) -> str:
        kind, files = corpus_io.resolve_corpus(self.corpus)
        return corpus_io.fingerprint(
            kind,
            files,
            text_field=self.text_field,
            line_per_document=self.line_per_document,
            **extra,
        )

    def _documents(self):
        docs = corpus_io.load_documents(
            self.corpus, self.text_field, self.line_per_document, self.cache_dir / "datasets"
        )
        if self.max_documents is not None:
            docs = docs.select(range(min(self.max_documents, len(docs))))
        return docs

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
                docs = self._documents()
                log.info("training a %s tokenizer (vocab %d)", self.tokenizer_type,
                         self.vocab_size)
                tokenizer = train_tokenizer(
                    iter(docs["text"]), self.tokenizer_type, self.vocab_size, self.lowercase,
                    length=len(docs),
                )
                tokenizer.save_pretrained(str(path))
        add_special_tokens(tokenizer, extra_special)
        self.tokenizer = tokenizer
        return tokenizer

    # ---------------------------------------------------------------------------- setup
    def prepare(self, objective: Any) -> TokenizedCorpus:
        """Resolve the tokenizer and the tokenized corpus for ``objective``."""
        tokenizer = self._resolve_tokenizer(objective.special_tokens())
        key = self._corpus_key(tokenizer=tokenizer_digest(tokenizer),
                               max_documents=self.max_documents)
        corpus, self.cache_hit = cached_tokenize(
            self._documents, tokenizer.backend_tokenizer, self.cache_dir, key, self.num_proc
        )
        if corpus.num_documents == 0 or len(corpus.ids) == 0:
            raise PlmkitError(f"corpus {self.corpus} produced no tokens; check its contents")
        top = int(np.max(corpus.ids))
        if top >= len(tokenizer):
            raise PlmkitError(
                f"the tokenized corpus holds token id {top} but the tokenizer has only "
                f"{len(tokenizer)} entries; delete {self.cache_dir / 'tokenized'} or pass the "
                "tokenizer the corpus was tokenized with"
            )
        return corpus

    def split_documents(self, num_documents: int) -> tuple[np.ndarray, np.ndarray]:
        """Deterministic train/validation split of document indices."""
        held_out = np.random.default_rng([self.seed, 1]).random(num_documents) < self.val_fraction
        if self.val_fraction > 0 and not held_out.any() and num_documents > 1:
            held_out[-1] = True
        return np.flatnonzero(~held_out), np.flatnonzero(held_out)

    def setup(self, stage: str | None = None) -> None:
        if self._loaders:
            return
        objective = self.trainer.lightning_module if self.trainer is not None else None
        if objective is None:
            raise RuntimeError("PretrainDataModule.setup needs a Trainer with an objective")
        corpus = self.prepare(objective)
        tokenizer = self.tokenizer
        assert tokenizer is not None
        objective.attach_tokenizer(tokenizer, self.max_length)
        block = objective.block_length(self.max_length)
        separator = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else (
            tokenizer.eos_token_id
        )
        train_docs, val_docs = self.split_documents(corpus.num_documents)
        rank, world = self.trainer.global_rank, self.trainer.world_size
        for split, docs, shuffle in (("train", train_docs, True), ("val", val_docs, False)):
            if len(docs) == 0:
                continue
            blocks = pack(corpus, docs, block, objective.packing, separator)
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
            )
            log.info("%s: %d blocks, %d tokens", split, len(blocks), blocks.num_tokens)

    def train_dataloader(self) -> ResumableLoader:
        return self._loaders["train"]

    def val_dataloader(self) -> ResumableLoader | list:
        loader = self._loaders.get("val")
        return loader if loader is not None and len(loader) > 0 else []

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and POSITION_KEY in batch:
            self._loaders["train"].mark_consumed(batch.pop(POSITION_KEY))
        return batch
