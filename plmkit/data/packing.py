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

Blocks are ranges of a *virtual stream*: the selected documents in order, each followed by its
separator (``sentences``/``stream``). :class:`Blocks` keeps per document where it starts in the
stream and in the corpus, and per block its range; nothing per token. Tokens are read from the
(memory-mapped) corpus when a block is read, and packing works one shard at a time, so memory
does not grow with the corpus.

A :class:`BlockDataset` item is a collator example: ``input_ids``, ``word_ids``,
``sentence_ids`` (numbered from 0 inside the block) and ``doc_ids`` (see
:mod:`plmkit.collator`): the corpus index of each token's document, so two blocks cut from one
document share it (the sentence tasks draw "another document" from a block of another
document); ``entity_ids`` when the corpus has precomputed entity spans (-1 outside a span; a
span cut by a block boundary keeps its part inside the block).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from plmkit.data.cache import ShardedCorpus, transient
from plmkit.data.preprocess import TokenizedCorpus

#: The packing modes; see the module docstring.
PACKING_MODES = ("document", "sentences", "stream")


class Blocks:
    """Blocks of the documents ``docs`` of ``corpus``: ranges ``[starts, ends)`` of the virtual
    stream, where document ``i`` (token ``tstart[i]`` of the corpus, ``lengths[i]`` tokens,
    then the separator if there is one) starts at ``vstart[i]``."""

    _ARRAYS = ("docs", "tstart", "lengths", "starts", "ends")

    def __init__(self, corpus: ShardedCorpus, docs: np.ndarray, tstart: np.ndarray,
                 lengths: np.ndarray, separator: int | None, starts: np.ndarray,
                 ends: np.ndarray) -> None:
        self.corpus, self.separator = corpus, separator
        self.docs, self.tstart, self.lengths = docs, tstart, lengths
        self.starts, self.ends = starts, ends
        extra = 0 if separator is None else 1
        self.vstart = np.concatenate([[0], np.cumsum(np.asarray(lengths) + extra)])

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def num_tokens(self) -> int:
        return int((np.asarray(self.ends) - np.asarray(self.starts)).sum())

    def read(self, start: int, end: int) -> dict[str, np.ndarray]:
        """Stream positions ``[start, end)``: ``ids``, ``word_start``, ``sent_index`` (global
        sentence number; a separator belongs to its document's last sentence),
        ``doc_index`` (the corpus index of each token's document) and, with entities,
        ``entity_id`` (the span number within its document, -1 outside spans)."""
        first = int(np.searchsorted(self.vstart, start, side="right")) - 1
        stop = int(np.searchsorted(self.vstart, end, side="left"))
        parts = []
        for d in range(first, stop):
            v0, n, t0 = int(self.vstart[d]), int(self.lengths[d]), int(self.tstart[d])
            a, b = max(start - v0, 0), min(end - v0, n + (self.separator is not None))
            if a < min(b, n):
                piece = self.corpus.read(t0 + a, t0 + min(b, n))
                piece["doc_index"] = np.full(min(b, n) - a, self.docs[d], dtype=np.int64)
                parts.append(piece)
            if b > n:  # the separator closing document d
                last = parts[-1] if a < n else self.corpus.read(t0 + n - 1, t0 + n)
                piece = {"ids": np.array([self.separator]), "word_start": np.array([True]),
                         "sent_index": last["sent_index"][-1:],
                         "doc_index": np.array([self.docs[d]], dtype=np.int64)}
                if self.corpus.has_entities:
                    piece["entity_id"] = np.array([-1], dtype=np.int32)
                parts.append(piece)
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

    def _whole(self, key: str) -> np.ndarray:
        """One field over the whole stream (materialized: for inspection and tests)."""
        return self.read(0, int(self.vstart[-1]))[key]

    ids = property(lambda self: self._whole("ids"))
    word_start = property(lambda self: self._whole("word_start"))
    sent_index = property(lambda self: self._whole("sent_index"))
    doc_index = property(lambda self: self._whole("doc_index"))

    def save(self, path: Path) -> None:
        """Write the block index (per document and per block arrays) into ``path``."""
        path.mkdir(parents=True, exist_ok=True)
        for name in self._ARRAYS:
            np.save(path / f"{name}.npy", np.asarray(getattr(self, name)))
        (path / "meta.json").write_text(json.dumps({"separator": self.separator}))

    @classmethod
    def load(cls, path: Path, corpus: ShardedCorpus) -> Blocks | None:
        """A saved block index opened by memory map; None if it is absent or partial."""
        try:
            meta = json.loads((path / "meta.json").read_text())
            arrays = {n: np.load(path / f"{n}.npy", mmap_mode="r") for n in cls._ARRAYS}
        except (OSError, ValueError):
            return None
        return cls(corpus, separator=meta["separator"], **arrays)


def pack(
    corpus: TokenizedCorpus | ShardedCorpus,
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
    corpus = ShardedCorpus.of(corpus)
    doc_ids = np.asarray(doc_ids, dtype=np.int64)
    doc_starts, doc_ends = corpus.doc_token_bounds()
    tstart, lengths = doc_starts[doc_ids], doc_ends[doc_ids] - doc_starts[doc_ids]
    keep = lengths > 0
    separator = None if mode == "document" else separator_id
    blocks = Blocks(corpus, doc_ids[keep], tstart[keep], lengths[keep], separator,
                    np.zeros(0, np.int64), np.zeros(0, np.int64))
    if mode == "stream":
        count = int(blocks.vstart[-1]) // block_length
        starts = np.arange(count, dtype=np.int64) * block_length
        ends = starts + block_length
    else:
        starts, ends = _sentence_blocks(blocks, block_length, mode == "document")
    keep = (ends - starts) >= min_length
    blocks.starts, blocks.ends = starts[keep], ends[keep]
    return blocks


def _window_arrays(blocks: Blocks, first: int, stop: int) -> tuple[np.ndarray, ...]:
    """Per stream position of documents ``[first, stop)`` (one shard): word starts, global
    sentence numbers, and the documents' stream offsets relative to the first."""
    corpus = blocks.corpus
    lengths = np.asarray(blocks.lengths[first:stop], dtype=np.int64)
    k = corpus.shard_of_token(int(blocks.tstart[first]))
    shard = corpus.shards[k]
    local = np.asarray(blocks.tstart[first:stop]) - corpus.token_base[k]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    token_src = np.repeat(local - offsets[:-1], lengths) + np.arange(int(offsets[-1]))
    word_start = transient(shard.word_start)[token_src].astype(bool)
    sent_index = np.searchsorted(transient(shard.sent_offsets), token_src, side="right") - 1
    sent_index += int(corpus.sent_base[k])
    if blocks.separator is not None:
        # one separator after every document; it belongs to the sentence it closes
        positions = offsets[1:]
        word_start = np.insert(word_start, positions, True)
        sent_index = np.insert(sent_index, positions, sent_index[positions - 1])
        offsets = offsets + np.arange(len(offsets))
    return word_start, sent_index, offsets


def _sentence_blocks(blocks: Blocks, block_length: int, within_documents: bool
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Whole-sentence blocks, one shard of documents at a time. Across documents
    (``sentences``) the last block of a shard is carried into the next one, so the result
    is the same as packing the whole stream at once."""
    corpus = blocks.corpus
    shard = np.searchsorted(corpus.token_base, np.asarray(blocks.tstart), side="right") - 1
    edges = np.concatenate([[0], np.flatnonzero(np.diff(shard)) + 1, [len(shard)]])
    out_starts, out_ends = [], []
    carry_words = carry_sents = np.zeros(0)
    base = 0  # stream position of the window's first token
    for w, (first, stop) in enumerate(zip(edges[:-1], edges[1:])):
        word_start, sent_index, offsets = _window_arrays(blocks, int(first), int(stop))
        limits = None
        if within_documents:
            base = int(blocks.vstart[first])
        else:
            word_start = np.concatenate([carry_words, word_start]).astype(bool)
            sent_index = np.concatenate([carry_sents, sent_index]).astype(np.int64)
        new_sentence = np.ones(len(sent_index), dtype=bool)
        new_sentence[1:] = sent_index[1:] != sent_index[:-1]
        bounds = np.append(np.flatnonzero(new_sentence), len(sent_index))
        if within_documents:  # a block ends at its document's end at the latest
            limits = offsets[np.searchsorted(offsets, bounds, side="right")
                             .clip(max=len(offsets) - 1)]
        starts, ends = _whole_sentence_blocks(bounds, word_start, block_length, limits)
        if not within_documents and w < len(edges) - 2:  # the last block may grow
            tail = int(starts[-1])
            carry_words, carry_sents = word_start[tail:], sent_index[tail:]
            out_starts.append(starts[:-1] + base)
            out_ends.append(ends[:-1] + base)
            base += tail
            continue
        out_starts.append(starts + base)
        out_ends.append(ends + base)
    if not out_starts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return (np.concatenate(out_starts).astype(np.int64),
            np.concatenate(out_ends).astype(np.int64))


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
    """Number every span (a run of one entity id inside one document) from 0."""
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
        tokens = self.blocks.read(int(self.blocks.starts[index]), int(self.blocks.ends[index]))
        word_start = tokens["word_start"]
        word_start[0] = True
        example = {
            "input_ids": torch.from_numpy(tokens["ids"].astype(np.int64)),
            "word_ids": torch.from_numpy(np.cumsum(word_start) - 1),
            "sentence_ids": torch.from_numpy(tokens["sent_index"] - tokens["sent_index"][0]),
            "doc_ids": torch.from_numpy(tokens["doc_index"]),
        }
        if "entity_id" in tokens:
            example["entity_ids"] = torch.from_numpy(
                _entity_runs(tokens["entity_id"], tokens["doc_index"]))
        return example
