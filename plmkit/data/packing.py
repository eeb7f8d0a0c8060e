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
(memory-mapped) corpus when a block is read. Packing works one shard at a time and, given a
folder, appends these arrays to files opened by memory map afterwards, so its memory does not
grow with the corpus.

A :class:`BlockDataset` item is a collator example: ``input_ids``, ``word_ids``,
``sentence_ids`` (numbered from 0 inside the block) and ``doc_ids`` (see
:mod:`plmkit.collator`): the corpus index of each token's document, so two blocks cut from one
document share it (the sentence tasks draw "another document" from a block of another
document); ``entity_ids`` when the corpus has precomputed entity spans (-1 outside a span; a
span cut by a block boundary keeps its part inside the block).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
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
    then the separator if there is one) starts at ``vstart[i]`` (``vstart[-1]``: the end)."""

    _ARRAYS = ("docs", "tstart", "lengths", "vstart", "starts", "ends")

    def __init__(self, corpus: ShardedCorpus, docs: np.ndarray, tstart: np.ndarray,
                 lengths: np.ndarray, vstart: np.ndarray, separator: int | None,
                 starts: np.ndarray, ends: np.ndarray, num_tokens: int | None = None) -> None:
        self.corpus, self.separator = corpus, separator
        self.docs, self.tstart, self.lengths, self.vstart = docs, tstart, lengths, vstart
        self.starts, self.ends = starts, ends
        self._num_tokens = num_tokens

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def num_tokens(self) -> int:
        if self._num_tokens is None:
            self._num_tokens = int((np.asarray(self.ends) - np.asarray(self.starts)).sum())
        return self._num_tokens

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

    @classmethod
    def load(cls, path: Path, corpus: ShardedCorpus) -> Blocks | None:
        """A block index written by :func:`pack` opened by memory map; None if it is absent or
        partial (``meta.json`` is written last)."""
        try:
            meta = json.loads((path / "meta.json").read_text())
            arrays = {n: np.load(path / f"{n}.npy", mmap_mode="r") for n in cls._ARRAYS}
        except (OSError, ValueError):
            return None
        return cls(corpus, separator=meta["separator"], num_tokens=meta["num_tokens"], **arrays)


class _IndexWriter:
    """Collects the arrays of a block index piece by piece: in memory, or (with ``folder``)
    appended to files, so the index of a corpus of any size is written in bounded memory and
    read back by memory map. numpy cannot append to a ``.npy`` file, hence the raw files
    turned into ``.npy`` at the end."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.pieces: dict[str, list[np.ndarray]] = {}
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def append(self, **arrays: np.ndarray) -> None:
        for name, array in arrays.items():
            array = np.asarray(array, dtype=np.int64)
            if self.folder is None:
                self.pieces.setdefault(name, []).append(array)
            else:
                with open(self.folder / f"{name}.bin", "ab") as f:
                    f.write(array.tobytes())

    def finish(self, *names: str) -> list[np.ndarray]:
        """The arrays ``names`` as written so far (empty if nothing was appended)."""
        if self.folder is None:
            return [np.concatenate(self.pieces.get(n) or [np.zeros(0, np.int64)])
                    for n in names]
        out = []
        for name in names:
            raw = self.folder / f"{name}.bin"
            raw.touch()
            count = raw.stat().st_size // 8
            target = np.lib.format.open_memmap(self.folder / f"{name}.npy", mode="w+",
                                               dtype=np.int64, shape=(count,))
            with open(raw, "rb") as f:
                for first in range(0, count, 1 << 20):
                    piece = np.fromfile(f, dtype=np.int64, count=1 << 20)
                    target[first:first + len(piece)] = piece
            target.flush()
            del target
            raw.unlink()
            out.append(np.load(self.folder / f"{name}.npy", mmap_mode="r"))
        return out


def pack(
    corpus: TokenizedCorpus | ShardedCorpus,
    docs: np.ndarray,
    block_length: int,
    mode: str = "document",
    separator_id: int | None = None,
    min_length: int = 2,
    path: Path | None = None,
) -> Blocks:
    """Cut the documents ``docs`` of ``corpus`` into blocks of ``block_length`` tokens.

    ``docs``: ascending document indices, or a boolean mask over the corpus' documents. With
    ``path`` the block index is written there (shard by shard, in bounded memory, with
    ``meta.json`` last) and opened by memory map; else it is kept in memory.
    """
    if block_length < 1:
        raise ValueError(f"block_length must be positive, got {block_length}")
    if mode not in PACKING_MODES:
        raise ValueError(f"unknown packing mode '{mode}': use one of {', '.join(PACKING_MODES)}")
    if mode != "document" and separator_id is None:
        raise ValueError(f"{mode} packing needs a separator token id")
    corpus = ShardedCorpus.of(corpus)
    docs = np.asarray(docs)
    if docs.dtype != bool:
        if np.any(np.diff(docs) <= 0):
            raise ValueError("pack takes ascending document indices")
        mask = np.zeros(corpus.num_documents, dtype=bool)
        mask[docs] = True
        docs = mask
    separator = None if mode == "document" else separator_id
    out = _IndexWriter(path)
    windows = _select_documents(corpus, docs, 0 if separator is None else 1, out)
    per_doc = out.finish("docs", "tstart", "lengths", "vstart")
    blocks = Blocks(corpus, *per_doc, separator, np.zeros(0, np.int64), np.zeros(0, np.int64))
    num_tokens = 0
    if mode == "stream":
        count = int(blocks.vstart[-1]) // block_length if block_length >= min_length else 0
        for first in range(0, count, 1 << 20):
            starts = np.arange(first, min(first + (1 << 20), count)) * block_length
            out.append(starts=starts, ends=starts + block_length)
        num_tokens = count * block_length
    else:
        for starts, ends in _sentence_blocks(blocks, windows, block_length,
                                             mode == "document"):
            keep = (ends - starts) >= min_length
            out.append(starts=starts[keep], ends=ends[keep])
            num_tokens += int((ends[keep] - starts[keep]).sum())
    if path is not None:
        (path / "meta.json").write_text(json.dumps({"separator": separator,
                                                    "num_tokens": num_tokens}))
    return Blocks(corpus, *per_doc, separator, *out.finish("starts", "ends"), num_tokens)


#: tokens of documents packed at a time: the packing temporaries (about 40 bytes per token)
#: stay the same whatever the shard and corpus size
WINDOW_TOKENS = 1 << 20


def _select_documents(corpus: ShardedCorpus, mask: np.ndarray, extra: int,
                      out: _IndexWriter) -> list[tuple[int, int, int]]:
    """Write the per-document arrays of the non-empty documents in ``mask``, one shard at a
    time (``extra``: the separator after each document). Returns the windows
    ``(shard, first, stop)``: runs of selected documents of one shard, about
    ``WINDOW_TOKENS`` tokens each, packed one at a time."""
    windows, count, position = [], 0, 0
    for k in range(len(corpus.shards)):
        starts, ends = corpus.shard_doc_bounds(k)
        lengths = ends - starts
        chosen = np.flatnonzero(mask[corpus.doc_base[k]:corpus.doc_base[k + 1]] & (lengths > 0))
        if len(chosen) == 0:
            continue
        lengths = lengths[chosen]
        ends_in_stream = position + np.cumsum(lengths + extra)
        out.append(docs=chosen + corpus.doc_base[k], tstart=starts[chosen] + corpus.token_base[k],
                   lengths=lengths, vstart=np.concatenate([[position], ends_in_stream[:-1]]))
        # a new window at the first document starting past each WINDOW_TOKENS of the shard
        window = (np.cumsum(lengths) - lengths) // WINDOW_TOKENS
        edges = [0, *(np.flatnonzero(np.diff(window)) + 1).tolist(), len(chosen)]
        windows.extend((k, count + a, count + b) for a, b in zip(edges[:-1], edges[1:]))
        count, position = count + len(chosen), int(ends_in_stream[-1])
    out.append(vstart=[position])
    return windows


def _window_arrays(blocks: Blocks, k: int, first: int, stop: int) -> tuple[np.ndarray, ...]:
    """Per stream position of documents ``[first, stop)`` (all in shard ``k``): word starts,
    global sentence numbers, and the documents' stream offsets relative to the first."""
    corpus = blocks.corpus
    # through maps of their own: the per-document index is read once, window by window, and
    # its pages must not pile up in the resident memory of the long-lived maps
    lengths = np.asarray(transient(blocks.lengths)[first:stop], dtype=np.int64)
    shard = corpus.shards[k]
    local = np.asarray(transient(blocks.tstart)[first:stop]) - corpus.token_base[k]
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


def _sentence_blocks(blocks: Blocks, windows: list[tuple[int, int, int]], block_length: int,
                     within_documents: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Whole-sentence blocks (stream positions), one window of documents at a time. Across
    documents (``sentences``) the last block of a window is carried into the next one, so the
    result is the same as packing the whole stream at once."""
    carry_words, carry_sents = np.zeros(0, bool), np.zeros(0, np.int64)
    base = 0  # stream position of the window's first token
    for w, (k, first, stop) in enumerate(windows):
        word_start, sent_index, offsets = _window_arrays(blocks, k, first, stop)
        limits = None
        if within_documents:
            base = int(blocks.vstart[first])
        elif len(carry_words):
            word_start = np.concatenate([carry_words, word_start])
            sent_index = np.concatenate([carry_sents, sent_index])
        new_sentence = np.ones(len(sent_index), dtype=bool)
        new_sentence[1:] = sent_index[1:] != sent_index[:-1]
        bounds = np.append(np.flatnonzero(new_sentence), len(sent_index))
        if within_documents:  # a block ends at its document's end at the latest
            limits = offsets[np.searchsorted(offsets, bounds, side="right")
                             .clip(max=len(offsets) - 1)]
        starts, ends = _whole_sentence_blocks(bounds, word_start, block_length, limits)
        if not within_documents and w < len(windows) - 1:  # the last block may grow
            tail = int(starts[-1])
            carry_words, carry_sents = word_start[tail:], sent_index[tail:]
            yield starts[:-1] + base, ends[:-1] + base
            base += tail
            continue
        yield starts + base, ends + base


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
