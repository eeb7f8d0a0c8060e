"""Pack a tokenized corpus into fixed-length blocks, keeping what collators need.

Two modes (an objective picks one with its ``packing`` attribute):

* ``document``: each document is cut into consecutive blocks of at most ``block_length``
  tokens; a block never crosses a document boundary (pairs for NSP/SOP, span masking).
* ``stream``: documents are concatenated with a separator token between them and cut into
  blocks of exactly ``block_length`` tokens (RoBERTa FULL-SENTENCES, GPT, T5, ELECTRA);
  the last partial block is dropped.

A :class:`BlockDataset` item is a collator example: ``input_ids``, ``word_ids``,
``sentence_ids`` and ``doc_ids`` (see :mod:`plmkit.collator`), all numbered from 0 inside
the block, and ``entity_ids`` when the corpus has precomputed entity spans (-1 outside a span;
a span cut by a block boundary keeps its part inside the block). All of it is computed with
NumPy over the whole corpus, not per token.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from plmkit.data.preprocess import TokenizedCorpus


class Blocks:
    """Flat per-token arrays and the (start, end) of every block."""

    def __init__(
        self,
        ids: np.ndarray,
        word_start: np.ndarray,
        sent_index: np.ndarray,
        doc_index: np.ndarray,
        starts: np.ndarray,
        ends: np.ndarray,
        entity_run: np.ndarray | None = None,
    ) -> None:
        self.ids, self.word_start = ids, word_start
        self.sent_index, self.doc_index = sent_index, doc_index
        self.starts, self.ends = starts, ends
        self.entity_run = entity_run

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def num_tokens(self) -> int:
        return int((self.ends - self.starts).sum())


def _token_index(offsets: np.ndarray) -> np.ndarray:
    """For offsets [0, a, b, ...] the segment index of every token."""
    lengths = np.diff(offsets)
    return np.repeat(np.arange(len(lengths)), lengths)


def pack(
    corpus: TokenizedCorpus,
    doc_ids: np.ndarray,
    block_length: int,
    mode: str = "document",
    separator_id: int | None = None,
    min_length: int = 2,
) -> Blocks:
    """Cut the documents ``doc_ids`` of ``corpus`` into blocks of ``block_length`` tokens."""
    if block_length < 1:
        raise ValueError(f"block_length must be positive, got {block_length}")
    doc_starts, doc_ends = corpus.doc_token_bounds()
    doc_starts, doc_ends = doc_starts[doc_ids], doc_ends[doc_ids]
    lengths = doc_ends - doc_starts
    keep = lengths > 0
    doc_ids, doc_starts, lengths = doc_ids[keep], doc_starts[keep], lengths[keep]

    # Gather the selected documents' tokens into new flat arrays (vectorized).
    token_src = np.repeat(doc_starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    token_src = token_src + np.arange(int(lengths.sum()))
    sent_of_token = _token_index(corpus.sent_offsets)
    ids = np.asarray(corpus.ids)[token_src]
    word_start = np.asarray(corpus.word_start)[token_src].astype(bool)
    sent_index = sent_of_token[token_src]
    doc_index = np.repeat(np.arange(len(lengths)), lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    entity_run = None
    if corpus.entity_id is not None:
        entity_run = _entity_runs(np.asarray(corpus.entity_id)[token_src], doc_index)

    if mode == "document":
        per_doc = -(-lengths // block_length)
        first = np.repeat(offsets[:-1], per_doc)
        within = np.arange(int(per_doc.sum())) - np.repeat(np.cumsum(per_doc) - per_doc, per_doc)
        starts = first + within * block_length
        ends = np.minimum(starts + block_length, np.repeat(offsets[1:], per_doc))
    elif mode == "stream":
        if separator_id is None:
            raise ValueError("stream packing needs a separator token id")
        # one separator after every document; it belongs to the document it closes
        positions = offsets[1:]
        ids = np.insert(ids, positions, separator_id)
        word_start = np.insert(word_start, positions, True)
        sent_index = np.insert(sent_index, positions, sent_index[positions - 1])
        doc_index = np.insert(doc_index, positions, doc_index[positions - 1])
        if entity_run is not None:
            entity_run = np.insert(entity_run, positions, -1)
        count = len(ids) // block_length
        starts = np.arange(count) * block_length
        ends = starts + block_length
    else:
        raise ValueError(f"unknown packing mode '{mode}': use 'document' or 'stream'")
    keep = (ends - starts) >= min_length
    return Blocks(ids, word_start, sent_index, doc_index, starts[keep], ends[keep], entity_run)


def _entity_runs(entity_id: np.ndarray, doc_index: np.ndarray) -> np.ndarray:
    """Number every span (a run of one entity id inside one document) across the corpus."""
    inside = entity_id >= 0
    new = inside.copy()
    new[1:] &= (entity_id[1:] != entity_id[:-1]) | (doc_index[1:] != doc_index[:-1])
    return np.where(inside, np.cumsum(new) - 1, -1)


class BlockDataset(Dataset):
    """Map-style dataset of packed blocks; each item is a collator example."""

    def __init__(self, blocks: Blocks) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        b = self.blocks
        s, e = int(b.starts[index]), int(b.ends[index])
        word_start = b.word_start[s:e].copy()
        word_start[0] = True
        example = {
            "input_ids": torch.from_numpy(b.ids[s:e].astype(np.int64)),
            "word_ids": torch.from_numpy(np.cumsum(word_start) - 1),
            "sentence_ids": torch.from_numpy(b.sent_index[s:e] - b.sent_index[s]),
            "doc_ids": torch.from_numpy(b.doc_index[s:e] - b.doc_index[s]),
        }
        if b.entity_run is not None:
            run = b.entity_run[s:e]
            first = run[run >= 0].min() if (run >= 0).any() else 0
            example["entity_ids"] = torch.from_numpy(np.where(run >= 0, run - first, -1))
        return example
