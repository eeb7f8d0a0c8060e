"""Pack a tokenized corpus into blocks of at most ``block_length`` tokens, keeping what collators
need.

Three modes (an objective picks one with its ``packing`` attribute):

* ``document``: each document is cut into blocks of whole sentences: sentences are added to a
  block while they fit (BERT's and ALBERT's ``create_instances_from_document``), so a block
  starts at a sentence start and never crosses a document boundary (pairs for NSP/SOP/SSO,
  span masking). Only a sentence longer than a block is cut, at a word start where it can be.
* ``sentences``: RoBERTa's FULL-SENTENCES: documents are concatenated with a separator token
  after each one (it belongs to the document it closes) and blocks are filled with whole
  sentences as above, so they may cross documents; only a sentence longer than a block is cut.
* ``stream``: documents are concatenated with a separator token between them and cut into
  blocks of exactly ``block_length`` tokens (GPT, T5, ELECTRA); the last partial block is
  dropped.

A :class:`BlockDataset` item is a collator example: ``input_ids``, ``word_ids``,
``sentence_ids`` (numbered from 0 inside the block) and ``doc_ids`` (see
:mod:`plmkit.collator`): the corpus index of each token's document, so two blocks cut from one
document share it (the sentence tasks draw "another document" from a block of another
document); ``entity_ids`` when the corpus has precomputed entity spans (-1 outside a span; a
span cut by a block boundary keeps its part inside the block). All of it is computed with
NumPy over the whole corpus, not per token; only the walk from block to block is a loop.
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


#: The packing modes; see the module docstring.
PACKING_MODES = ("document", "sentences", "stream")


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
    if mode not in PACKING_MODES:
        raise ValueError(f"unknown packing mode '{mode}': use one of {', '.join(PACKING_MODES)}")
    if mode != "document" and separator_id is None:
        raise ValueError(f"{mode} packing needs a separator token id")
    doc_ids = np.asarray(doc_ids)
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
    doc_index = np.repeat(doc_ids, lengths)  # the corpus index of every token's document
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    entity_run = None
    if corpus.entity_id is not None:
        entity_run = _entity_runs(np.asarray(corpus.entity_id)[token_src], doc_index)

    if mode != "document":
        # one separator after every document; it belongs to the document (and sentence) it
        # closes
        positions = offsets[1:]
        ids = np.insert(ids, positions, separator_id)
        word_start = np.insert(word_start, positions, True)
        sent_index = np.insert(sent_index, positions, sent_index[positions - 1])
        doc_index = np.insert(doc_index, positions, doc_index[positions - 1])
        if entity_run is not None:
            entity_run = np.insert(entity_run, positions, -1)
    if mode == "stream":
        count = len(ids) // block_length
        starts = np.arange(count) * block_length
        ends = starts + block_length
    else:
        new_sentence = np.ones(len(ids), dtype=bool)
        new_sentence[1:] = sent_index[1:] != sent_index[:-1]  # sentence indices are global
        bounds = np.append(np.flatnonzero(new_sentence), len(ids))
        limits = None
        if mode == "document":  # a block ends at its document's end at the latest
            limits = offsets[np.searchsorted(offsets, bounds, side="right")
                             .clip(max=len(offsets) - 1)]
        starts, ends = _whole_sentence_blocks(bounds, word_start, block_length, limits)
    keep = (ends - starts) >= min_length
    return Blocks(ids, word_start, sent_index, doc_index, starts[keep], ends[keep], entity_run)


def _whole_sentence_blocks(
    bounds: np.ndarray, word_start: np.ndarray, block_length: int, limits: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Blocks filled greedily with whole sentences (``bounds``: every sentence start and the
    end; ``limits``: per bound, the end no block starting there may pass, e.g. its document's).

    Only a sentence longer than ``block_length`` is cut, into pieces ending at a word start
    where one is in reach (all such sentences at once, one piece per pass). With ``limits``
    (document packing) a block of a single sentence may take one from the block before it.
    """
    cuts = []
    start, end = bounds[:-1], bounds[1:]
    long = end - start > block_length
    start, end = start[long], end[long]
    word_starts = np.flatnonzero(word_start)
    while len(start):
        cap = start + block_length
        last = word_starts[(np.searchsorted(word_starts, cap, side="right") - 1).clip(min=0)]
        cut = np.where(last > start, last, cap)
        cuts.append(cut)
        more = end - cut > block_length
        start, end = cut[more], end[more]
    if cuts:
        cut_points = np.concatenate(cuts)
        if limits is not None:  # a piece ends where the sentence it cuts ends its document
            limits = np.concatenate([limits, limits[np.searchsorted(bounds, cut_points) - 1]])
        order = np.argsort(np.concatenate([bounds, cut_points]), kind="stable")
        bounds = np.concatenate([bounds, cut_points])[order]
        limits = limits[order] if limits is not None else None
    cap = bounds + block_length
    if limits is not None:
        cap = np.minimum(cap, limits)
    # the block starting at bound i ends at the last bound within its reach (every piece fits)
    following = (np.searchsorted(bounds, cap, side="right") - 1).tolist()
    chain, i, last = [], 0, len(bounds) - 1
    while i < last:
        chain.append(i)
        i = following[i]
    first = np.asarray(chain, dtype=np.int64)
    last = np.asarray(following, dtype=np.int64)[first]
    if limits is not None:
        # A block of one sentence (often a document's tail) takes the last sentence of the
        # block before it, in the same document, when that one keeps two and it fits: a
        # sentence pair then needs no cut inside a sentence.
        give = np.zeros(len(first), dtype=bool)
        give[:-1] = (last[1:] - first[1:] == 1) & (last[:-1] - first[:-1] >= 3)
        give[:-1] &= limits[first[1:]] == limits[first[:-1]]
        give[:-1] &= bounds[last[1:]] - bounds[np.maximum(last[:-1] - 1, 0)] <= block_length
        last[give] -= 1
        first[1:][give[:-1]] -= 1
    return bounds[first], bounds[last]


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
            "doc_ids": torch.from_numpy(b.doc_index[s:e].astype(np.int64)),
        }
        if b.entity_run is not None:
            run = b.entity_run[s:e]
            first = run[run >= 0].min() if (run >= 0).any() else 0
            example["entity_ids"] = torch.from_numpy(np.where(run >= 0, run - first, -1))
        return example
