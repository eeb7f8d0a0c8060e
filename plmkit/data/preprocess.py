"""Tokenize a corpus once (several processes) and cache it on disk as flat arrays.

The cache holds, for the whole corpus, one flat array per field plus offsets:

* ``ids``          int32 token ids (no special tokens),
* ``word_start``   uint8, 1 where a token starts a word (from the tokenizer's word ids),
* ``sent_offsets`` int64, start of every sentence in ``ids`` (plus the end),
* ``doc_offsets``  int64, index into ``sent_offsets`` where every document starts (plus end),
* ``entity_id``    int32, only with precomputed entity spans: for every token the number (within
  its document) of the span it falls in, -1 outside spans. A token belongs to a span when
  their character ranges overlap.

Packing into blocks (:mod:`plmkit.data.packing`) works on these arrays, so a new block length
or packing mode never re-tokenizes. The cache key covers the corpus files (paths, sizes, mtimes),
the tokenizer definition and the reading settings.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from tokenizers import Tokenizer

log = logging.getLogger("plmkit")
CACHE_VERSION = 2


@dataclass
class TokenizedCorpus:
    """Flat token arrays of a corpus with sentence and document offsets."""

    ids: np.ndarray
    word_start: np.ndarray
    sent_offsets: np.ndarray
    doc_offsets: np.ndarray
    entity_id: np.ndarray | None = None

    @property
    def num_documents(self) -> int:
        return len(self.doc_offsets) - 1

    def doc_token_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Token start and end of every document."""
        bounds = self.sent_offsets[self.doc_offsets]
        return bounds[:-1], bounds[1:]

    _FIELDS = ("ids", "word_start", "sent_offsets", "doc_offsets")

    def save(self, path: Path) -> None:
        """Write atomically: a temporary folder renamed into place."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".tmp-"))
        for name in self._FIELDS:
            np.save(tmp / f"{name}.npy", getattr(self, name))
        if self.entity_id is not None:
            np.save(tmp / "entity_id.npy", self.entity_id)
        (tmp / "meta.json").write_text(json.dumps({"version": CACHE_VERSION}))
        try:
            os.replace(tmp, path)
        except OSError:  # another process won the race; its cache is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load(cls, path: Path) -> TokenizedCorpus | None:
        try:
            meta = json.loads((path / "meta.json").read_text())
            if meta.get("version") != CACHE_VERSION:
                return None
            fields = [np.load(path / f"{name}.npy", mmap_mode="r") for name in cls._FIELDS]
            entities = path / "entity_id.npy"
            entity_id = np.load(entities, mmap_mode="r") if entities.exists() else None
            return cls(*fields, entity_id=entity_id)
        except (OSError, ValueError):
            return None


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


def _entity_ids(char_starts: np.ndarray, char_ends: np.ndarray, spans: list) -> list[int]:
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
    return out.tolist()


def _encode_batch(batch: dict[str, list], tokenizer_json: str) -> dict[str, list]:
    tokenizer = _TOKENIZERS.get(tokenizer_json)
    if tokenizer is None:
        tokenizer = _TOKENIZERS[tokenizer_json] = Tokenizer.from_str(tokenizer_json)
    sentences: list[str] = []
    line_starts: list[int] = []
    counts: list[int] = []
    for text in batch["text"]:
        lines, starts = _lines(text)
        sentences.extend(lines)
        line_starts.extend(starts)
        counts.append(len(lines))
    encodings = tokenizer.encode_batch(sentences, add_special_tokens=False)
    ids, starts, lengths = [], [], []
    for enc in encodings:
        words = np.asarray([-1 if w is None else w for w in enc.word_ids], dtype=np.int64)
        start = np.ones(len(words), dtype=np.uint8)
        if len(words) > 1:
            start[1:] = words[1:] != words[:-1]
        ids.append(enc.ids)
        starts.append(start.tolist())
        lengths.append(len(enc.ids))
    out_ids, out_starts, out_lengths, out_entities = [], [], [], []
    position = 0
    for d, count in enumerate(counts):
        doc = range(position, position + count)
        out_ids.append([t for i in doc for t in ids[i]])
        out_starts.append([s for i in doc for s in starts[i]])
        out_lengths.append([lengths[i] for i in doc])
        if "entities" in batch:
            # character range of every token in the document's text
            offsets = np.asarray(
                [(a + line_starts[i], b + line_starts[i]) for i in doc
                 for a, b in encodings[i].offsets], dtype=np.int64,
            ).reshape(-1, 2)
            out_entities.append(_entity_ids(offsets[:, 0], offsets[:, 1], batch["entities"][d]))
        position += count
    out = {"ids": out_ids, "word_start": out_starts, "sent_lengths": out_lengths}
    if "entities" in batch:
        out["entity_id"] = out_entities
    return out


_TOKENIZERS: dict[str, Tokenizer] = {}


def tokenize_corpus(
    documents: datasets.Dataset, tokenizer: Tokenizer, num_proc: int | None = None
) -> TokenizedCorpus:
    """Tokenize every document (sentence by sentence) into a :class:`TokenizedCorpus`."""
    num_proc = num_proc or min(4, os.cpu_count() or 1)
    num_proc = max(1, min(num_proc, len(documents) // 1000 or 1))
    encoded = documents.map(
        _encode_batch,
        batched=True,
        batch_size=1000,
        num_proc=num_proc if num_proc > 1 else None,
        remove_columns=documents.column_names,
        fn_kwargs={"tokenizer_json": tokenizer.to_str()},
        desc="tokenizing",
        load_from_cache_file=False,
        keep_in_memory=True,
    )
    table = encoded.data.table
    ids = table.column("ids").combine_chunks().flatten().to_numpy().astype(np.int32)
    word_start = table.column("word_start").combine_chunks().flatten().to_numpy()
    sent_lengths = table.column("sent_lengths").combine_chunks()
    per_doc = np.diff(sent_lengths.offsets.to_numpy())
    lengths = sent_lengths.flatten().to_numpy().astype(np.int64)
    sent_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    doc_offsets = np.concatenate([[0], np.cumsum(per_doc)]).astype(np.int64)
    entity_id = None
    if "entity_id" in table.column_names:
        entity_id = table.column("entity_id").combine_chunks().flatten().to_numpy()
        entity_id = entity_id.astype(np.int32)
    return TokenizedCorpus(
        ids, word_start.astype(np.uint8), sent_offsets, doc_offsets, entity_id=entity_id
    )


def cached_tokenize(
    documents_fn, tokenizer: Tokenizer, cache_dir: Path, key: str, num_proc: int | None = None
) -> tuple[TokenizedCorpus, bool]:
    """Load the tokenized corpus for ``key`` from ``cache_dir`` or build and store it.

    ``documents_fn`` is called only on a cache miss. Returns ``(corpus, hit)``.
    """
    path = cache_dir / "tokenized" / key
    cached = TokenizedCorpus.load(path)
    if cached is not None:
        log.info("tokenized corpus loaded from cache %s", path)
        return cached, True
    corpus = tokenize_corpus(documents_fn(), tokenizer, num_proc)
    corpus.save(path)
    return TokenizedCorpus.load(path) or corpus, False
