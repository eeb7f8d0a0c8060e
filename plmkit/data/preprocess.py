"""Tokenize documents into flat arrays: one :class:`TokenizedCorpus` per shard of the cache.

A tokenized corpus (or one shard of it, see :mod:`plmkit.data.cache`) is a few flat arrays:

* ``ids``          token ids (no special tokens); uint16 when the vocabulary fits, else int32,
* ``word_start``   uint8, 1 where a token starts a word (from the tokenizer's word ids),
* ``sent_offsets`` int64, start of every sentence in ``ids`` (plus the end),
* ``doc_offsets``  int64, index into ``sent_offsets`` where every document starts (plus end),
* ``entity_id``    int32, only with precomputed entity spans: for every token the number (within
  its document) of the span it falls in, -1 outside spans. A token belongs to a span when
  their character ranges overlap.

Sentences are the document's non-blank lines, each encoded on its own (so a byte-level BPE
never sees a newline). Packing into blocks (:mod:`plmkit.data.packing`) works on these arrays,
so a new block length or packing mode never re-tokenizes. The ``tokenizers`` Rust batch encoder
does the work; only the flattening of its output into arrays happens in Python.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate, chain
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

#: sentences encoded per ``encode_batch`` call: bounds the memory of the Encoding objects
ENCODE_BATCH = 4096


@dataclass
class TokenizedCorpus:
    """Flat token arrays of a corpus (or a shard) with sentence and document offsets."""

    ids: np.ndarray
    word_start: np.ndarray
    sent_offsets: np.ndarray
    doc_offsets: np.ndarray
    entity_id: np.ndarray | None = None

    @property
    def num_documents(self) -> int:
        return len(self.doc_offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.sent_offsets[-1])

    @property
    def num_sentences(self) -> int:
        return len(self.sent_offsets) - 1

    def doc_token_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Token start and end of every document."""
        bounds = np.asarray(self.sent_offsets[self.doc_offsets])
        return bounds[:-1], bounds[1:]

    _FIELDS = ("ids", "word_start", "sent_offsets", "doc_offsets")

    def arrays(self) -> dict[str, np.ndarray]:
        out = {name: getattr(self, name) for name in self._FIELDS}
        if self.entity_id is not None:
            out["entity_id"] = self.entity_id
        return out

    def save(self, path: Path, **meta: object) -> dict[str, object]:
        """Write atomically (a temporary folder renamed into place) with ``meta.json`` last
        inside it: the arrays' sizes and CRC32s, so a damaged shard is recognized. Returns
        the meta."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".tmp-"))
        try:
            files = {}
            for name, array in self.arrays().items():
                target = tmp / f"{name}.npy"
                np.save(target, np.ascontiguousarray(array))
                files[name] = {"bytes": target.stat().st_size, "crc32": _crc32(target)}
            meta = {**meta, "documents": self.num_documents, "sentences": self.num_sentences,
                    "tokens": self.num_tokens,
                    "max_id": int(np.max(self.ids)) if len(self.ids) else -1, "files": files}
            (tmp / "meta.json").write_text(json.dumps(meta, sort_keys=True))
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return meta

    @classmethod
    def load(cls, path: Path, verify: bool = False) -> TokenizedCorpus | None:
        """Open a saved corpus by memory map; None when it is missing, partial or damaged
        (``verify``: also check every array's CRC32, which reads it whole)."""
        try:
            meta = json.loads((path / "meta.json").read_text())
            files = meta["files"]
            for name, info in files.items():
                target = path / f"{name}.npy"
                if target.stat().st_size != info["bytes"]:
                    return None
                if verify and _crc32(target) != info["crc32"]:
                    return None
            arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in files}
            corpus = cls(**arrays)
            if corpus.num_tokens != len(corpus.ids) or corpus.num_documents != meta["documents"]:
                return None
            return corpus
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def _lines(text: str) -> tuple[list[str], list[int]]:
    """The non-blank lines of a document, stripped, and where each starts in ``text``."""
    lines, starts, position = [], [], 0
    for line in text.split("\n"):
        stripped = line.strip()
        if stripped:
            lines.append(stripped)
            starts.append(position + len(line) - len(line.lstrip()))
        position += len(line) + 1
    return lines, starts


def _entity_ids(char_starts: np.ndarray, char_ends: np.ndarray, spans: list) -> np.ndarray:
    """Per token, the index of the first character span it overlaps (-1: none)."""
    out = np.full(len(char_starts), -1, dtype=np.int32)
    # Tokens are in text order, so each span covers one contiguous run of tokens.
    for k, (start, end) in enumerate(spans or []):
        if end <= start:
            continue
        first = int(np.searchsorted(char_ends, start, side="right"))
        stop = int(np.searchsorted(char_starts, end, side="left"))
        run = out[first:stop]
        run[run < 0] = k
    return out


def ids_dtype(tokenizer: Tokenizer) -> type:
    """The smallest id type for the tokenizer's vocabulary (uint16 up to 65,535 entries)."""
    return np.uint16 if tokenizer.get_vocab_size(with_added_tokens=True) <= 65535 else np.int32


def _word_ids(encodings: list, total: int) -> np.ndarray:
    words = chain.from_iterable(e.word_ids for e in encodings)
    try:
        return np.fromiter(words, dtype=np.int64, count=total)
    except TypeError:  # a token outside any word (None): count it as word -1
        words = chain.from_iterable(e.word_ids for e in encodings)
        return np.fromiter((-1 if w is None else w for w in words), dtype=np.int64, count=total)


_PROBE = ["Hello, world! It's 3.5 km (2.2 mi).", "naïve café — x² e.g. A-B c/d", "日本語 text",
          "\tTabs and  double  spaces ", "UPPER lower 12345 #@%&*", "﻿zero\u200bwidth",
          "CamelCase iPhone U.S.A. [x]{y}<z> ~`^_|\\\"quoted\" don't-stop a+b=c; 50%",
          "two\nlines\r\n\tand a tab"]
_JOINS_LINES: dict[str, bool] = {}
_ASCII_TWIN: dict[str, tuple[Tokenizer, bool] | None] = {}
#: ASCII control characters (tab, newline and carriage return aside) a normalizer may remove
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _same(a: list, b: list) -> bool:
    return all(x.ids == y.ids and x.offsets == y.offsets and x.word_ids == y.word_ids
               for x, y in zip(a, b))


def _ascii_twin(tokenizer: Tokenizer) -> tuple[Tokenizer, bool] | None:
    """A copy of ``tokenizer`` without its normalizer, and whether text must be lowercased
    for it, when that gives the same encodings (ids, offsets, words) on ASCII text. On ASCII,
    BERT's normalizer only lowercases, yet its Unicode work (cleaning, accent stripping by
    NFD) takes about half of WordPiece's encoding time. Probed once per tokenizer on fixed
    text; None when no twin matches (e.g. a normalizer that rewrites ASCII, as Metaspace's)."""
    key = tokenizer.to_str()
    if key not in _ASCII_TWIN:
        _ASCII_TWIN[key] = None
        if tokenizer.normalizer is not None:
            twin = Tokenizer.from_str(key)
            twin.normalizer = None
            probe = [text for text in _PROBE if text.isascii()]
            want = tokenizer.encode_batch(probe, add_special_tokens=False)
            for lower in (False, True):
                texts = [text.lower() for text in probe] if lower else probe
                if _same(want, twin.encode_batch(texts, add_special_tokens=False)):
                    _ASCII_TWIN[key] = (twin, lower)
                    break
    return _ASCII_TWIN[key]


def encode_batch(tokenizer: Tokenizer, texts: Sequence[str]) -> list:
    """``tokenizer.encode_batch(texts)`` without special tokens: the same encodings, with the
    ASCII texts (no control characters) sent to the tokenizer's ASCII twin when it has one
    (see :func:`_ascii_twin`; written by hand: ``tokenizers`` has no such shortcut)."""
    twin = _ascii_twin(tokenizer)
    if twin is None:
        return tokenizer.encode_batch(list(texts), add_special_tokens=False)
    fast, lower = twin
    plain = [t.isascii() and not _CONTROL.search(t) for t in texts]
    easy = [(t.lower() if lower else t) for t, p in zip(texts, plain) if p]
    hard = [t for t, p in zip(texts, plain) if not p]
    easy_out = iter(fast.encode_batch(easy, add_special_tokens=False) if easy else [])
    hard_out = iter(tokenizer.encode_batch(hard, add_special_tokens=False) if hard else [])
    return [next(easy_out) if p else next(hard_out) for p in plain]


def joins_lines(tokenizer: Tokenizer) -> bool:
    """Whether encoding a document's lines joined by newlines gives exactly the tokens of
    encoding each line on its own (WordPiece with BERT's normalizer: the newline is mere
    whitespace; not byte-level BPE or Metaspace, where it is a character). Probed once per
    tokenizer on fixed text, so the answer is the same for every shard."""
    key = tokenizer.to_str()
    if key not in _JOINS_LINES:
        lines = [line.strip() for line in _PROBE]
        alone = tokenizer.encode_batch(lines, add_special_tokens=False)
        joined = tokenizer.encode("\n".join(lines), add_special_tokens=False)
        _JOINS_LINES[key] = [t for e in alone for t in e.ids] == joined.ids
    return _JOINS_LINES[key]


def _encode_joined(texts: Sequence[str], tokenizer: Tokenizer, dtype: type
                   ) -> tuple[dict[str, list[np.ndarray]], np.ndarray]:
    """Per document, one encoding of its lines joined by newlines (several times faster than
    one encoding per line); each token's sentence is the line its characters fall in."""
    pieces: dict[str, list[np.ndarray]] = {"ids": [], "words": [], "lengths": []}
    counts = np.zeros(len(texts), dtype=np.int64)
    for first in range(0, len(texts), ENCODE_BATCH // 8):
        joined, line_starts = [], []
        for d, text in enumerate(texts[first:first + ENCODE_BATCH // 8], first):
            lines = [line for line in map(str.strip, text.split("\n")) if line]
            counts[d] = len(lines)
            line_starts.append(list(accumulate((len(line) + 1 for line in lines[:-1]),
                                               initial=0)) if lines else [])
            joined.append("\n".join(lines))
        encodings = encode_batch(tokenizer, joined)
        total = sum(len(e) for e in encodings)
        pieces["lengths"].append(_tokens_per_line(encodings, line_starts))
        pieces["ids"].append(np.fromiter(chain.from_iterable(e.ids for e in encodings),
                                         dtype=dtype, count=total))
        pieces["words"].append(_word_ids(encodings, total))
    return pieces, counts


def _tokens_per_line(encodings: list, line_starts: list[list[int]]) -> np.ndarray:
    """The number of tokens of every line of the joined documents (``line_starts``: per
    document, where each line starts). A line's first token is the one holding its first
    character (the newline before it ends every word); only where a normalizer removed that
    character is each token's line looked up from its offsets (slower)."""
    marks, base = [], 0
    for encoding, starts in zip(encodings, line_starts):
        for char in starts:
            token = encoding.char_to_token(char)
            if token is None:
                return _tokens_per_line_by_offsets(encodings, line_starts)
            marks.append(base + token)
        base += len(encoding)
    return np.diff(np.asarray(marks + [base], dtype=np.int64))


def _tokens_per_line_by_offsets(encodings: list, line_starts: list[list[int]]) -> np.ndarray:
    counts = []
    for encoding, starts in zip(encodings, line_starts):
        chars = np.fromiter((o[0] for o in encoding.offsets), dtype=np.int64,
                            count=len(encoding))
        line = np.searchsorted(np.asarray(starts, dtype=np.int64), chars, side="right") - 1
        counts.append(np.bincount(line, minlength=len(starts)))
    return np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)


def encode_documents(
    texts: Sequence[str],
    tokenizer: Tokenizer,
    entities: Sequence[list | None] | None = None,
) -> TokenizedCorpus:
    """Tokenize ``texts`` (sentence by sentence) into one :class:`TokenizedCorpus`.

    ``entities``: per document, its ``[start, end)`` character spans (see the module docs).
    """
    dtype = ids_dtype(tokenizer)
    if entities is None and joins_lines(tokenizer):
        pieces, counts = _encode_joined(texts, tokenizer, dtype)
        return _assemble(pieces, counts, dtype)
    sentences: list[str] = []
    line_starts: list[int] = []
    counts = np.zeros(len(texts), dtype=np.int64)
    for d, text in enumerate(texts):
        lines, starts = _lines(text)
        sentences.extend(lines)
        line_starts.extend(starts)
        counts[d] = len(lines)
    pieces: dict[str, list[np.ndarray]] = {"ids": [], "words": [], "lengths": [], "chars": []}
    for first in range(0, len(sentences), ENCODE_BATCH):
        encodings = encode_batch(tokenizer, sentences[first:first + ENCODE_BATCH])
        lengths = np.fromiter((len(e) for e in encodings), dtype=np.int64,
                              count=len(encodings))
        total = int(lengths.sum())
        pieces["lengths"].append(lengths)
        pieces["ids"].append(np.fromiter(chain.from_iterable(e.ids for e in encodings),
                                         dtype=dtype, count=total))
        pieces["words"].append(_word_ids(encodings, total))
        if entities is not None:  # character range of every token within its line
            pieces["chars"].append(np.fromiter(
                chain.from_iterable(chain.from_iterable(e.offsets) for e in encodings),
                dtype=np.int64, count=2 * total).reshape(-1, 2))
    corpus = _assemble(pieces, counts, dtype)
    if entities is not None:
        lengths = np.diff(corpus.sent_offsets)
        chars = np.concatenate(pieces["chars"]).reshape(-1, 2) if pieces["chars"] else (
            np.zeros((0, 2), dtype=np.int64))
        chars = chars + np.repeat(np.asarray(line_starts, dtype=np.int64), lengths)[:, None]
        entity_id = np.full(len(corpus.ids), -1, dtype=np.int32)
        bounds = corpus.sent_offsets[corpus.doc_offsets]
        for d, spans in enumerate(entities):
            a, b = bounds[d], bounds[d + 1]
            if spans and b > a:
                entity_id[a:b] = _entity_ids(chars[a:b, 0], chars[a:b, 1], spans)
        corpus.entity_id = entity_id
    return corpus


def _assemble(pieces: dict[str, list[np.ndarray]], counts: np.ndarray, dtype: type
              ) -> TokenizedCorpus:
    """The arrays of the encoded batches joined into one corpus."""
    joined = {k: np.concatenate(v) if v else np.zeros(0, dtype=np.int64)
              for k, v in pieces.items() if k != "chars"}
    ids = joined["ids"].astype(dtype, copy=False)
    lengths = joined["lengths"]
    sent_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    words = joined["words"]
    word_start = np.ones(len(ids), dtype=np.uint8)
    if len(ids) > 1:
        word_start[1:] = words[1:] != words[:-1]
    word_start[sent_offsets[:-1][lengths > 0]] = 1  # word ids restart in every sentence
    doc_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return TokenizedCorpus(ids, word_start, sent_offsets, doc_offsets)


def tokenize_corpus(documents: object, tokenizer: Tokenizer, num_proc: int | None = None
                    ) -> TokenizedCorpus:
    """Tokenize a small in-memory corpus in this process: ``documents`` is a list of texts,
    of ``(text, spans)`` pairs, or anything with a ``"text"`` column (e.g. a ``datasets``
    Dataset). Large corpora go through :func:`plmkit.data.cache.cached_tokenize`."""
    del num_proc  # one process: the Rust encoder already uses every core
    if hasattr(documents, "column_names"):
        texts = list(documents["text"])  # type: ignore[index]
        spans = list(documents["entities"]) if "entities" in documents.column_names else None
    else:
        items = list(documents)  # type: ignore[call-overload]
        if items and isinstance(items[0], tuple):
            texts = [t for t, _ in items]
            spans = [s for _, s in items] if any(s is not None for _, s in items) else None
        else:
            texts, spans = items, None
    return encode_documents(texts, tokenizer, spans)
