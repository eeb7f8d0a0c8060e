"""Phrase / entity lexicons, a fast batch matcher over token ids, and entity-span masking.

ERNIE-style knowledge masking masks a phrase or a named entity as **one unit**: all of its
tokens or none. This module supplies the three pieces such a collator needs, vectorized over a
(batch, length) tensor of token ids:

* **Lexicons** (:func:`read_lexicon`, :func:`load_lexicon`): a list of ``(phrase, kind)``
  entries. The default is the bundled WordNet lexicon (:mod:`plmkit.data.wordnet`: multi-word
  lemmas with kind ``person`` / ``location`` / ``group`` / ``phrase``); a user file is either
  ``phrase<TAB>kind`` per line or one phrase per line (kind ``phrase``), optionally gzipped.
  Kind ``phrase`` is a phrase; **every other kind is an entity** (so ``PER`` / ``ORG`` labels
  of a NER-derived lexicon work as they are).
* **Matching** (:class:`PhraseMatcher`): every entry is tokenized once into token ids (with
  the word-start pattern of its tokens). At match time the matcher computes, with tensor ops
  over the whole batch, a rolling polynomial hash of every window of ``n`` tokens for each
  ``n`` up to ``max_tokens`` (two independent hashes modulo primes below 2^31, combined into
  one 62-bit key, so no int64 overflow); a 2^21-bit filter over all entry keys discards most
  windows with one gather, and the rest are looked up in the sorted key table of length ``n``
  with ``torch.searchsorted``. Cost: ``O(max_tokens * B * L)`` plus a binary search for the
  few windows that pass the filter; no Python loop over tokens or over lexicon entries.
  A window matches only when it starts at a word start, ends at a word end and has the same
  internal word boundaries as the entry, so a phrase never matches inside a word or across a
  word boundary the entry does not have.
  Overlapping matches are resolved **longest first**, then **leftmost first** among matches
  of the same length (exactly the greedy left-to-right choice, computed in a few vectorized
  rounds).
* **Entity-span masking** (:func:`span_units`, :func:`select_units`): matched spans become
  *unit ids* (a span's tokens share one id; other tokens keep their word or token id), and
  :func:`select_units` picks whole units under an exact token budget with
  :func:`plmkit.masking.select_exact`, topping the budget up in a few extra passes with the
  units that still fit (BERT's whole-word rule: a unit that would overshoot is skipped, the
  next one is tried), so spans are never cut and the masked fraction stays at the target.

The hashes make false matches possible in principle: two different token sequences share a
62-bit key with probability about 2^-62 per pair, i.e. never in practice.
"""

from __future__ import annotations

import gzip
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from plmkit import masking
from plmkit.masking import greedy_non_overlapping, window_count

__all__ = [
    "ENTITY",
    "PHRASE",
    "PhraseMatcher",
    "SpanMatches",
    "load_lexicon",
    "read_lexicon",
    "complete_runs",
    "select_units",
    "span_units",
    "spans_from_offsets",
    "word_starts",
]

#: Coarse span classes used by the masking code: a phrase, or an entity (any other kind).
PHRASE, ENTITY = 0, 1

# Two moduli below 2^31 and bases below 2^20: every product stays below 2^51 (no overflow).
_MOD = (2_147_483_647, 2_147_483_629)
_BASE = (1_000_003, 999_983)
_FILTER_SIZE = 1 << 21

LexiconSource = str | Path | Iterable[str | tuple[str, str]] | None


# ------------------------------------------------------------------------------- lexicons
def read_lexicon(path: str | Path) -> list[tuple[str, str]]:
    """Read a lexicon file: ``phrase<TAB>kind`` lines, or one phrase per line (kind phrase).

    ``.gz`` files are decompressed; blank lines and lines starting with ``#`` are skipped;
    surrounding whitespace is stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"lexicon file {path} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    entries: list[tuple[str, str]] = []
    with opener(path, "rt", encoding="utf-8") as handle:  # type: ignore[operator]
        for line in handle:
            row = line.strip()
            if not row or row.startswith("#"):
                continue
            phrase, _, kind = row.partition("\t")
            entries.append((phrase.strip(), kind.strip() or "phrase"))
    return entries


def load_lexicon(source: LexiconSource = None) -> list[tuple[str, str]]:
    """Lexicon entries from ``source``.

    Args:
        source: ``None`` or ``"wordnet"`` for the bundled WordNet lexicon; a path to a lexicon
            file (see :func:`read_lexicon`); or an iterable of phrases / ``(phrase, kind)``.
    """
    if source is None or (isinstance(source, str) and source == "wordnet"):
        from plmkit.data.wordnet import load_lexicon as load_wordnet

        return load_wordnet()
    if isinstance(source, (str, Path)):
        return read_lexicon(source)
    return [(e, "phrase") if isinstance(e, str) else (str(e[0]), str(e[1])) for e in source]


# ------------------------------------------------------------------------------- helpers
def word_starts(word_ids: Tensor) -> Tensor:
    """(B, L) bool: the position starts a word (its word id differs from the previous one).

    Positions with word id -1 (special tokens, padding) count as one-token words.
    """
    previous = torch.cat([torch.full_like(word_ids[:, :1], -2), word_ids[:, :-1]], dim=1)
    return (word_ids != previous) | (word_ids < 0)


def _cover(starts: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Per position, the start of the span covering it (-1 if none) from span starts/lengths.

    ``starts`` (B, L) bool marks span starts, ``lengths`` (B, L) their lengths (spans must not
    overlap). Returns ``(start_of, inside)``.
    """
    batch, length = starts.shape
    pos = torch.arange(length).expand(batch, length)
    last = torch.where(starts, pos, torch.full_like(pos, -1)).cummax(dim=1).values
    span_len = lengths.gather(1, last.clamp(min=0))
    inside = (last >= 0) & (pos < last + span_len)
    return torch.where(inside, last, torch.full_like(last, -1)), inside


# ------------------------------------------------------------------------------- matching
@dataclass
class SpanMatches:
    """Matched spans of a batch, as per-position tensors.

    Attributes:
        start: (B, L) long, the position where the span covering this position starts;
            -1 outside matched spans.
        kind: (B, L) long, :data:`PHRASE` or :data:`ENTITY` inside spans, -1 outside.
        label: (B, L) long, index into :attr:`PhraseMatcher.kinds` (the entry's fine kind,
            e.g. ``person``), -1 outside.
    """

    start: Tensor
    kind: Tensor
    label: Tensor

    @property
    def num_spans(self) -> int:
        pos = torch.arange(self.start.shape[1])
        return int((self.start == pos).sum())

    def spans(self) -> list[list[tuple[int, int, int]]]:
        """Per row, the list of ``(start, end, kind)`` (end exclusive); for tests/debugging."""
        out: list[list[tuple[int, int, int]]] = []
        for row_start, row_kind in zip(self.start.tolist(), self.kind.tolist()):
            spans: list[tuple[int, int, int]] = []
            for p, s in enumerate(row_start):
                if s < 0:
                    continue
                if s == p:
                    spans.append((p, p + 1, row_kind[p]))
                else:
                    spans[-1] = (spans[-1][0], p + 1, spans[-1][2])
            out.append(spans)
        return out


def _hash_windows(values: Tensor, n: int) -> list[Tensor]:
    """Keys of every window of length 1..n of ``values`` (B, L): list index k = length k+1."""
    keys = []
    hashes = [values % m for m in _MOD]
    keys.append(hashes[0] * _MOD[1] + hashes[1])
    for k in range(2, n + 1):
        if values.shape[1] - k + 1 <= 0:
            break
        hashes = [
            (h[:, :-1] * b + values[:, k - 1 :]) % m for h, b, m in zip(hashes, _BASE, _MOD)
        ]
        keys.append(hashes[0] * _MOD[1] + hashes[1])
    return keys


class PhraseMatcher:
    """Find lexicon phrases/entities in batches of token ids (see the module docstring).

    Args:
        sequences: token ids of every entry.
        word_start_flags: per entry, whether each token starts a word.
        labels: per entry, its kind (``phrase``, ``person``, ``ORG`` ...).
        max_tokens: entries longer than this (in tokens) are ignored.
        excluded_ids: entries containing any of these ids (e.g. ``[UNK]``) are ignored.
    """

    def __init__(
        self,
        sequences: Sequence[Sequence[int]],
        word_start_flags: Sequence[Sequence[bool]],
        labels: Sequence[str],
        max_tokens: int = 8,
        excluded_ids: Sequence[int] = (),
    ) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.max_tokens = max_tokens
        # fine kinds: entity kinds first (they win over 'phrase' for the same tokens)
        order = ["person", "location", "group"]
        extra = sorted(set(labels) - set(order) - {"phrase"})
        self.kinds: list[str] = order + extra + ["phrase"]
        code = {k: i for i, k in enumerate(self.kinds)}
        self._phrase_label = code["phrase"]
        excluded = set(int(i) for i in excluded_ids)
        keep = [
            i for i, seq in enumerate(sequences)
            if 1 <= len(seq) <= max_tokens and not excluded.intersection(seq)
        ]
        self.num_entries = len(keep)
        self.num_skipped = len(sequences) - len(keep)
        # per length n: sorted unique keys and the best (lowest) fine-kind code per key
        self._keys: dict[int, Tensor] = {}
        self._labels: dict[int, Tensor] = {}
        # a one-bit-per-slot filter over all keys: most windows match nothing and skip the
        # binary search (false positives ~ entries / 2^21, a few percent)
        self._filter = torch.zeros(_FILTER_SIZE, dtype=torch.bool)
        if not keep:
            return
        lengths_np = np.fromiter((len(sequences[i]) for i in keep), np.int64, len(keep))
        flat_ids = np.fromiter(
            itertools.chain.from_iterable(sequences[i] for i in keep), np.int64
        )
        flat_starts = np.fromiter(
            itertools.chain.from_iterable(word_start_flags[i] for i in keep), np.int64
        )
        row_of = np.repeat(np.arange(len(keep)), lengths_np)
        first = np.cumsum(lengths_np) - lengths_np
        col_of = np.arange(len(flat_ids)) - np.repeat(first, lengths_np)
        ids_np = np.zeros((len(keep), max_tokens), np.int64)
        starts_np = np.zeros((len(keep), max_tokens), np.int64)
        ids_np[row_of, col_of] = flat_ids
        starts_np[row_of, col_of] = flat_starts
        lengths = torch.from_numpy(lengths_np)
        ids, starts = torch.from_numpy(ids_np), torch.from_numpy(starts_np)
        entry_label = torch.tensor([code[labels[i]] for i in keep])
        keys = _hash_windows(_token_values(ids, starts), max_tokens)
        for n in range(1, max_tokens + 1):
            rows = lengths == n
            if not bool(rows.any()):
                continue
            k = keys[n - 1][rows, 0]
            lab = entry_label[rows]
            # sort by (key, label) so the first of equal keys has the best label
            order_ = torch.argsort(lab, stable=True)
            k, lab = k[order_], lab[order_]
            order_ = torch.argsort(k, stable=True)
            k, lab = k[order_], lab[order_]
            first = torch.ones_like(k, dtype=torch.bool)
            first[1:] = k[1:] != k[:-1]
            self._keys[n], self._labels[n] = k[first].contiguous(), lab[first].contiguous()
            self._filter[_filter_slot(self._keys[n], n)] = True

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_tokenizer(
        cls,
        tokenizer: Any,
        lexicon: LexiconSource = None,
        max_tokens: int = 8,
    ) -> PhraseMatcher:
        """Tokenize every entry of ``lexicon`` once with ``tokenizer`` (a HF fast tokenizer
        or a ``tokenizers.Tokenizer``) and build the matcher.

        Entries containing the tokenizer's unknown token are skipped (``[UNK]`` would match
        any unknown word).
        """
        entries = load_lexicon(lexicon)
        phrases = [p for p, _ in entries]
        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        encodings = backend.encode_batch(phrases, add_special_tokens=False)
        sequences = [enc.ids for enc in encodings]
        flags = [_start_flags(enc.word_ids) for enc in encodings]
        excluded = []
        unk = getattr(tokenizer, "unk_token_id", None)
        if unk is None and hasattr(backend, "token_to_id"):
            unk = backend.token_to_id("[UNK]")
        if unk is not None:
            excluded.append(int(unk))
        excluded += [int(i) for i in getattr(tokenizer, "all_special_ids", [])]
        return cls(sequences, flags, [k for _, k in entries], max_tokens, excluded)

    def __len__(self) -> int:
        return self.num_entries

    def __repr__(self) -> str:
        return (f"PhraseMatcher({self.num_entries} entries, max_tokens={self.max_tokens}, "
                f"kinds={self.kinds})")

    # ------------------------------------------------------------------ matching
    def match(
        self,
        input_ids: Tensor,
        word_ids: Tensor | None = None,
        candidates: Tensor | None = None,
    ) -> SpanMatches:
        """Find non-overlapping lexicon matches in every row of ``input_ids`` (B, L).

        Args:
            input_ids: (B, L) token ids (special tokens and padding never match: entries
                holding special ids are dropped when built from a tokenizer).
            word_ids: (B, L) word ids (collator convention, -1 for none); default: every
                token its own word (then entries whose words span several tokens never
                match; pass word ids).
            candidates: (B, L) bool, positions a match may cover (default: all).
        """
        batch, length = input_ids.shape
        minus = torch.full((batch, length), -1, dtype=torch.long)
        if not self._keys or length == 0:
            return SpanMatches(minus, minus.clone(), minus.clone())
        if word_ids is None:
            word_ids = torch.arange(length).expand(batch, length)
        ws = word_starts(word_ids)
        # a window [s, s + n) ends at a word end when position s + n starts a word (or is past)
        ends_word = torch.cat([ws[:, 1:], torch.ones(batch, 1, dtype=torch.bool)], dim=1)
        keys = _hash_windows(_token_values(input_ids, ws.long()), self.max_tokens)
        blocked = torch.zeros(batch, length, dtype=torch.bool)
        if candidates is not None:
            blocked |= ~candidates
        span_start = torch.zeros(batch, length, dtype=torch.bool)
        span_len = torch.zeros(batch, length, dtype=torch.long)
        span_label = torch.zeros(batch, length, dtype=torch.long)
        for n in sorted(self._keys, reverse=True):  # longest first
            if n > length:
                continue
            table, labels = self._keys[n], self._labels[n]
            key = keys[n - 1]
            width = key.shape[1]
            # word-aligned windows that pass the bit filter; only those are searched
            maybe = ws[:, :width] & ends_word[:, n - 1 :]
            maybe &= self._filter[_filter_slot(key, n)]
            rows, cols = maybe.nonzero(as_tuple=True)
            if len(rows) == 0:
                continue
            query = key[rows, cols]
            index = torch.searchsorted(table, query).clamp(max=len(table) - 1)
            found = table[index] == query
            if not bool(found.any()):
                continue
            rows, cols, index = rows[found], cols[found], index[found]
            hit = torch.zeros(batch, width, dtype=torch.bool)
            hit[rows, cols] = True
            entry_label = torch.zeros(batch, width, dtype=torch.long)
            entry_label[rows, cols] = labels[index]
            hit &= window_count(blocked, 0, n - 1)[:, :width] == 0
            take = greedy_non_overlapping(hit, n)
            if not bool(take.any()):
                continue
            full = torch.zeros(batch, length, dtype=torch.bool)
            full[:, :width] = take
            span_start |= full
            span_len = torch.where(full, n, span_len)
            label = torch.zeros(batch, length, dtype=torch.long)
            label[:, :width] = entry_label
            span_label = torch.where(full, label, span_label)
            blocked |= window_count(full, -(n - 1), 0) > 0
        start_of, inside = _cover(span_start, span_len)
        fine = torch.where(inside, span_label.gather(1, start_of.clamp(min=0)), minus)
        kind = torch.where(fine == self._phrase_label, PHRASE, ENTITY)
        kind = torch.where(inside, kind, minus)
        return SpanMatches(start_of, kind, fine)


def _filter_slot(keys: Tensor, n: int) -> Tensor:
    """The filter slot of ``keys`` of windows of length ``n`` (low bits of the mod-p hash)."""
    return (keys + n * 1_000_003) & (_FILTER_SIZE - 1)


def _start_flags(words: list[int | None]) -> list[bool]:
    """Word-start flag of every token from a tokenizer's word ids."""
    return [i == 0 or w != words[i - 1] for i, w in enumerate(words)]


def _token_values(ids: Tensor, starts: Tensor) -> Tensor:
    """The value hashed per token: token id and word-start bit (never 0)."""
    return ids.long() * 2 + starts.long() + 1


# ------------------------------------------------------------------------- spans -> units
def spans_from_offsets(
    spans: Sequence[Tensor | Sequence[Sequence[int]] | None],
    width: int,
    kinds: Sequence[int] | None = None,
    lengths: Sequence[int] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token tags of precomputed spans given as token ``[start, end)`` offsets.

    Args:
        spans: per row, a (num_spans, 2) long tensor (or list of pairs), or None.
        width: the row length of the output tensors.
        kinds: per row, the span class (:data:`PHRASE` / :data:`ENTITY`) of all its spans;
            default :data:`ENTITY`.
        lengths: per row, its number of tokens (default ``width``): offsets are clipped to
            it and spans left empty are dropped.

    Returns:
        ``(tag, length, kind)``: (B, width) long tensors; ``tag`` is the span's global id
        ``row * width + start`` on its tokens (-1 elsewhere), ``length`` its token count and
        ``kind`` its class. Where spans overlap, the later one wins on the shared tokens (the
        earlier one then looks incomplete and callers drop it).
    """
    batch = len(spans)
    tag = torch.full((batch, width), -1, dtype=torch.long)
    length = torch.zeros(batch, width, dtype=torch.long)
    kind = torch.full((batch, width), -1, dtype=torch.long)
    tables = []
    for row, s in enumerate(spans):
        if s is None:
            continue
        t = torch.as_tensor(s, dtype=torch.long).reshape(-1, 2)
        code = ENTITY if kinds is None else kinds[row]
        limit = width if lengths is None else min(int(lengths[row]), width)
        extra = torch.tensor([[row, code, limit]], dtype=torch.long).expand(len(t), 3)
        tables.append(torch.cat([extra, t], dim=1))
    if not tables:
        return tag, length, kind
    table = torch.cat(tables)
    rows, codes, limit = table[:, 0], table[:, 1], table[:, 2]
    start = torch.minimum(table[:, 3].clamp(min=0), limit)
    end = torch.minimum(table[:, 4].clamp(min=0), limit)
    size = end - start
    ok = size > 0
    rows, codes, start, size = rows[ok], codes[ok], start[ok], size[ok]
    if len(size) == 0:
        return tag, length, kind
    offsets = torch.repeat_interleave(size.cumsum(0) - size, size)
    cols = torch.repeat_interleave(start, size) + torch.arange(int(size.sum())) - offsets
    span_rows = torch.repeat_interleave(rows, size)
    tag[span_rows, cols] = torch.repeat_interleave(rows * width + start, size)
    length[span_rows, cols] = torch.repeat_interleave(size, size)
    kind[span_rows, cols] = torch.repeat_interleave(codes, size)
    return tag, length, kind


def complete_runs(tag: Tensor, length: Tensor) -> Tensor:
    """Positions of spans present **whole and contiguous** in a row, as span starts.

    ``tag`` (B, L) holds a span id per token (-1 outside), ``length`` the span's full token
    count. Returns (B, L) long: the position where the token's span starts in the row, or -1
    when the token is outside spans or its span was cut (truncated, split by a separator).
    """
    batch, width = tag.shape
    pos = torch.arange(width).expand(batch, width)
    previous = torch.cat([torch.full_like(tag[:, :1], -1), tag[:, :-1]], dim=1)
    inside = tag >= 0
    run_start = inside & (tag != previous)
    last = torch.where(run_start, pos, torch.full_like(pos, -1)).cummax(dim=1).values
    run_len = torch.zeros(batch, width, dtype=torch.long).scatter_add_(
        1, last.clamp(min=0), inside.long()
    )
    whole = inside & (run_len.gather(1, last.clamp(min=0)) == length)
    return torch.where(whole, last, torch.full_like(last, -1))


def span_units(basic_units: Tensor, span_start: Tensor, active: Tensor) -> Tensor:
    """Unit ids where every active span is one unit and other tokens keep their basic unit.

    Args:
        basic_units: (B, L) long basic unit ids (word ids or positions; -1 = not maskable).
        span_start: (B, L) long, start position of the span covering each token, -1 outside.
        active: (B, L) bool, the token's span is to be masked as one unit.

    A span's unit is the basic unit of its first token (spans cover whole basic units, so
    the id is not shared with any token outside the span).
    """
    merged = basic_units.gather(1, span_start.clamp(min=0))
    return torch.where(active & (span_start >= 0), merged, basic_units)


def select_units(
    candidates: Tensor,
    unit_ids: Tensor,
    counts: Tensor,
    generator: torch.Generator,
    passes: int = 4,
) -> Tensor:
    """Select whole units, in random order, up to an exact token budget per row.

    The first pass is :func:`plmkit.masking.select_exact` with ``unit_ids`` (which skips a
    unit that would overshoot the budget). Each further pass offers the units not yet
    taken **that still fit** in the remaining budget (the remaining budget of a row is then
    never exceeded), which is BERT's whole-word rule "skip a word that does not fit, try the
    next". Units are never split; a row ends under budget only when no remaining unit fits.

    Args:
        candidates: (B, L) bool, positions that may be selected.
        unit_ids: (B, L) long unit ids (-1 = not in any unit, never selected).
        counts: (B,) long token budget per row.
        generator: the source of randomness.
        passes: at most this many selection passes.
    """
    batch, length = candidates.shape
    selected = torch.zeros(batch, length, dtype=torch.bool)
    if length == 0:
        return selected
    inside = unit_ids >= 0
    index = unit_ids.clamp(min=0)
    slots = int(index.max()) + 1
    remaining = counts.clone().long()
    for _ in range(passes):
        free = candidates & inside & ~selected
        # units that are whole, free and fit in the remaining budget
        size = torch.zeros(batch, slots, dtype=torch.long).scatter_add_(1, index, inside.long())
        bad = torch.zeros(batch, slots, dtype=torch.long).scatter_add_(
            1, index, (inside & ~free).long()
        )
        fits = (bad == 0) & (size > 0) & (size <= remaining.unsqueeze(1))
        offer = free & fits.gather(1, index)
        active = remaining > 0
        if not bool((offer.any(dim=1) & active).any()):
            break
        counts_now = torch.where(active, remaining, torch.zeros_like(remaining))
        new = masking.select_exact(offer, counts_now, generator, unit_ids)
        selected |= new
        remaining = counts - selected.sum(dim=1)
    return selected
