"""Vectorized masking primitives shared by the collators of every method.

Every function works on a whole batch at once, (batch, length) tensors, with no Python loop
over tokens, and draws its randomness from the ``generator`` it is given. Selection functions
return a boolean mask of the positions to predict; :func:`corrupt` then decides, per token or
per unit (word / span), whether a selected position becomes ``[MASK]``, a random token or
stays unchanged, and builds the labels (-100 where nothing is predicted).

Words and spans are described by *unit ids*: a (batch, length) long tensor in which positions
sharing a non-negative id belong to the same unit and -1 marks positions outside any unit.

The span selectors (:func:`select_ngrams` for ALBERT, :func:`select_geometric_spans` for
SpanBERT) take ``word_ids`` in the collator convention and measure spans in **words**: a word
is a maximal run of consecutive positions sharing one non-negative word id (a position with
id -1 is a one-token word of its own). A word holding any non-candidate token (special token,
padding) is never selected, and a span never extends across such a word. Both loop over
*rounds* of span proposals (one proposal per row per round, all rows at once), never over
tokens; the number of rounds is about the number of spans a row receives.

Two window helpers close the module: :func:`window_count` (sums over a window around every
position) and :func:`greedy_non_overlapping` (non-overlapping fixed-length windows, leftmost
first), for collators that place n-token windows of their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from plmkit.collator import IGNORE_INDEX


def exact_counts(
    num_candidates: Tensor, rate: float, max_predictions: int | None = None
) -> Tensor:
    """BERT's per-sequence budget: ``min(max_predictions, max(1, round(n * rate)))``.

    Rows with no candidate get 0. ``round`` is Python's (half to even), as in the original.
    """
    counts = torch.round(num_candidates.to(torch.float64) * rate).long().clamp(min=1)
    if max_predictions is not None:
        counts = counts.clamp(max=max_predictions)
    return torch.where(num_candidates > 0, counts, torch.zeros_like(counts))


def ceil_counts(
    num_candidates: Tensor, rate: float, max_predictions: int | None = None
) -> Tensor:
    """SpanBERT's per-sequence budget: ``ceil(n * rate)`` tokens (optionally capped).

    Computed in float64, so it equals the original's ``math.ceil(sent_length * mask_ratio)``
    bit for bit (floating-point rounding included). Rows with no candidate get 0.
    """
    counts = torch.ceil(num_candidates.to(torch.float64) * rate).long()
    if max_predictions is not None:
        counts = counts.clamp(max=max_predictions)
    return torch.where(num_candidates > 0, counts, torch.zeros_like(counts))


def _unit_table(unit_ids: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor, int]:
    """Per-row unit sizes and validity: a unit is valid when all its tokens are candidates."""
    batch = unit_ids.shape[0]
    num_units = int(unit_ids.max().item()) + 1 if unit_ids.numel() else 0
    num_units = max(num_units, 1)
    index = unit_ids.clamp(min=0)
    inside = unit_ids >= 0
    sizes = torch.zeros(batch, num_units, dtype=torch.long).scatter_add_(
        1, index, inside.long()
    )
    bad = torch.zeros(batch, num_units, dtype=torch.long).scatter_add_(
        1, index, (inside & ~candidates).long()
    )
    valid = (sizes > 0) & (bad == 0)
    return sizes, valid, num_units


def select_exact(
    candidates: Tensor,
    counts: Tensor,
    generator: torch.Generator,
    unit_ids: Tensor | None = None,
) -> Tensor:
    """Select ``counts[b]`` random candidate positions in row ``b`` (an exact count).

    With ``unit_ids`` (e.g. word ids for whole-word masking) whole units are offered in random
    order and a unit is taken when it fits in what is left of the budget, else skipped for
    the next one, as in BERT's ``create_masked_lm_predictions``: a row never exceeds its
    budget, and ends under it only when no remaining unit fits. A unit with a non-candidate
    token is never taken.
    """
    if unit_ids is None:
        keys = torch.rand(candidates.shape, generator=generator)
        keys = keys.masked_fill(~candidates, 2.0)
        ranks = keys.argsort(dim=1).argsort(dim=1)
        return (ranks < counts.unsqueeze(1)) & candidates

    sizes, valid, _ = _unit_table(unit_ids, candidates)
    keys = torch.rand(sizes.shape, generator=generator).masked_fill(~valid, 2.0)
    order = keys.argsort(dim=1)
    sorted_sizes = sizes.gather(1, order)
    open_ = valid.gather(1, order)
    take_sorted = torch.zeros_like(open_)
    room = counts.clone().long()
    # Each pass takes, in order, the open units up to the first that overshoots; that one
    # cannot fit later either (the room only shrinks), so it is closed by the next pass. A
    # pass takes at least one unit, so there are at most ``max(counts) + 1`` passes.
    while True:
        open_ &= sorted_sizes <= room.unsqueeze(1)
        if not bool(open_.any()):
            break
        fits = open_ & ((sorted_sizes * open_).cumsum(dim=1) <= room.unsqueeze(1))
        take_sorted |= fits
        room -= (sorted_sizes * fits).sum(dim=1)
        open_ &= ~fits
    take = torch.zeros_like(take_sorted).scatter_(1, order, take_sorted)
    return take.gather(1, unit_ids.clamp(min=0)) & (unit_ids >= 0)


def random_choice(mask: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One uniformly random True position per row of ``mask`` (B, N): ``(index, found)``;
    ``found`` is False (and ``index`` meaningless) where a row has none."""
    keys = torch.rand(mask.shape, generator=generator).masked_fill(~mask, -1.0)
    return keys.argmax(dim=1), mask.any(dim=1)


def select_bernoulli(
    candidates: Tensor,
    rate: float,
    generator: torch.Generator,
    unit_ids: Tensor | None = None,
) -> Tensor:
    """Select each candidate (or each whole unit) independently with probability ``rate``."""
    if unit_ids is None:
        return (torch.rand(candidates.shape, generator=generator) < rate) & candidates
    sizes, valid, _ = _unit_table(unit_ids, candidates)
    take = (torch.rand(sizes.shape, generator=generator) < rate) & valid
    return take.gather(1, unit_ids.clamp(min=0)) & (unit_ids >= 0)


def corrupt(
    input_ids: Tensor,
    selected: Tensor,
    generator: torch.Generator,
    mask_token_id: int,
    random_token_ids: Tensor,
    mask_rate: float = 0.8,
    random_rate: float = 0.1,
    unit_ids: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Replace selected positions by [MASK] / a random token / themselves; build labels.

    Of the selected positions, ``mask_rate`` become ``mask_token_id``, ``random_rate`` a token
    drawn uniformly from ``random_token_ids`` and the rest keep their token. With ``unit_ids``
    the choice is made once per unit (SpanBERT decides per span); otherwise per token.

    Returns ``(corrupted_ids, labels)``: new tensors, the input is not modified; labels hold
    the original id at selected positions and -100 elsewhere.
    """
    if unit_ids is None:
        draw = torch.rand(input_ids.shape, generator=generator)
    else:
        num_units = int(unit_ids.max().item()) + 1 if unit_ids.numel() else 1
        per_unit = torch.rand((input_ids.shape[0], max(num_units, 1)), generator=generator)
        draw = per_unit.gather(1, unit_ids.clamp(min=0))
    to_mask = selected & (draw < mask_rate)
    to_random = selected & (draw >= mask_rate) & (draw < mask_rate + random_rate)
    picks = torch.randint(len(random_token_ids), input_ids.shape, generator=generator)
    corrupted = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    corrupted = torch.where(to_random, random_token_ids[picks], corrupted)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return corrupted, labels


def non_special_ids(vocab_size: int, special_ids: list[int]) -> Tensor:
    """All token ids except the special ones: what a random replacement may draw."""
    keep = torch.ones(vocab_size, dtype=torch.bool)
    keep[torch.tensor(special_ids, dtype=torch.long)] = False
    return keep.nonzero().squeeze(1)


# --------------------------------------------------------------------------- span masking
@dataclass
class _Words:
    """Per-row word table (``W = length + 1`` word slots; the last one is an empty sentinel).

    Attributes:
        index: (B, L) word index of every position (0-based, counted from the row start).
        size: (B, W) tokens per word (0 for slots past the row's last word).
        valid: (B, W) the word exists and all its tokens are candidates.
        before: (B, W + 1) tokens before word ``w`` (``before[:, w + k] - before[:, w]`` is the
            token count of words ``w .. w + k - 1``).
        next_invalid: (B, W) the first invalid word at or after ``w`` (a span starting at a
            valid word ``w`` may cover words up to ``next_invalid[w] - 1``).
    """

    index: Tensor
    size: Tensor
    valid: Tensor
    before: Tensor
    next_invalid: Tensor


def _word_table(word_ids: Tensor, candidates: Tensor) -> _Words:
    batch, length = word_ids.shape
    previous = torch.cat([torch.full((batch, 1), -2, dtype=torch.long), word_ids[:, :-1]], 1)
    is_start = (word_ids != previous) | (word_ids < 0)
    index = is_start.long().cumsum(dim=1) - 1
    slots = length + 1
    size = torch.zeros(batch, slots, dtype=torch.long).scatter_add_(
        1, index, torch.ones_like(index)
    )
    bad = torch.zeros(batch, slots, dtype=torch.long).scatter_add_(
        1, index, (~candidates).long()
    )
    valid = (size > 0) & (bad == 0)
    before = torch.cat([torch.zeros(batch, 1, dtype=torch.long), size.cumsum(dim=1)], 1)
    slot = torch.arange(slots).expand(batch, slots)
    invalid_at = torch.where(valid, torch.full_like(slot, slots - 1), slot)
    next_invalid = invalid_at.flip(1).cummin(dim=1).values.flip(1)
    return _Words(index, size, valid, before, next_invalid)


def _sample_lengths(probs: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """``size`` draws of an index ``k`` with probability ``probs[k]`` (inverse CDF)."""
    cdf = probs.cumsum(0)
    u = torch.rand(size, generator=generator, dtype=torch.float64) * cdf[-1]
    return torch.searchsorted(cdf, u, right=True).clamp(max=len(probs) - 1)


def _check_inputs(candidates: Tensor, word_ids: Tensor, counts: Tensor) -> None:
    if candidates.shape != word_ids.shape or candidates.dim() != 2:
        raise ValueError(
            f"candidates {tuple(candidates.shape)} and word_ids {tuple(word_ids.shape)} must "
            "be (batch, length) tensors of the same shape"
        )
    if counts.shape != candidates.shape[:1]:
        raise ValueError(f"counts must have shape ({candidates.shape[0]},)")


def run_ids(selected: Tensor) -> Tensor:
    """Number the maximal runs of consecutive selected positions of each row 0, 1, ...

    Returns a (B, L) long tensor, -1 where ``selected`` is False. Touching or overlapping
    spans thus share one id, as SpanBERT's ``merge_intervals`` merges them.
    """
    previous = torch.cat([torch.zeros_like(selected[:, :1]), selected[:, :-1]], 1)
    starts = selected & ~previous
    ids = starts.long().cumsum(dim=1) - 1
    return torch.where(selected, ids, torch.full_like(ids, -1))


def span_bounds(span_ids: Tensor) -> tuple[Tensor, Tensor]:
    """First and last position of the span holding each position (-1 outside spans).

    ``span_ids`` is (B, L) with ids unique per row and -1 outside spans; spans are assumed
    contiguous (as :func:`run_ids` and the selectors below return them).
    """
    batch, length = span_ids.shape
    inside = span_ids >= 0
    index = span_ids.clamp(min=0)
    pos = torch.arange(length).expand(batch, length)
    slots = max(length, 1)
    first = torch.full((batch, slots), length, dtype=torch.long).scatter_reduce(
        1, index, torch.where(inside, pos, length), reduce="amin"
    )
    last = torch.full((batch, slots), -1, dtype=torch.long).scatter_reduce(
        1, index, torch.where(inside, pos, -1), reduce="amax"
    )
    minus = torch.full_like(span_ids, -1)
    return (
        torch.where(inside, first.gather(1, index), minus),
        torch.where(inside, last.gather(1, index), minus),
    )


def select_ngrams(
    candidates: Tensor,
    word_ids: Tensor,
    counts: Tensor,
    generator: torch.Generator,
    max_n: int = 3,
    probs: Sequence[float] | None = None,
) -> tuple[Tensor, Tensor]:
    """Whole-word n-gram masking (ALBERT): n words with p(n) ∝ 1/n, up to a token budget.

    Follows google-research/albert ``create_masked_lm_predictions`` (n-gram branch), row by
    row but vectorized over the batch: the candidate words are visited in a random order; at
    each start word ``n`` is drawn with ``p(n) ∝ 1/n`` for ``n <= max_n`` (``probs[n-1]``
    overrides, normalised); the n-gram is shortened one word at a time while it would exceed
    the remaining budget (skipped if even its first word does not fit), and skipped if it
    overlaps an n-gram already chosen. Spans are added until the row's token budget
    ``counts[b]`` is met and **never exceed it** (ALBERT's rule), so a row may end slightly
    under budget when no remaining word fits. An n-gram is also cut short by the end of the
    row or by a word holding a special/padding token (ALBERT's word list skips [CLS]/[SEP],
    so there an n-gram could run across [SEP]; here it never leaves its segment).

    Args:
        candidates: (B, L) bool, positions that may be selected.
        word_ids: (B, L) long word ids (collator convention, -1 for none).
        counts: (B,) long token budget per row (e.g. :func:`exact_counts`).
        generator: the source of randomness.
        max_n: the longest n-gram, in words.
        probs: ``max_n`` relative weights of n = 1..max_n (default ``1/n``).

    Returns:
        ``(selected, span_ids)``: (B, L) bool of the chosen positions and (B, L) long with -1
        outside chosen n-grams, else the n-gram's id (0, 1, ... in order of choice, unique per
        row; adjacent n-grams keep distinct ids). Inputs are not modified.
    """
    _check_inputs(candidates, word_ids, counts)
    batch, length = candidates.shape
    span_ids = torch.full((batch, length), -1, dtype=torch.long)
    if length == 0:
        return span_ids >= 0, span_ids
    weights = (
        torch.tensor(list(probs), dtype=torch.float64)
        if probs is not None
        else 1.0 / torch.arange(1, max_n + 1, dtype=torch.float64)
    )
    if len(weights) != max_n or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"probs must hold {max_n} non-negative weights, got {probs}")
    words = _word_table(word_ids, candidates)
    slots = length + 1
    rows = torch.arange(batch)
    slot = torch.arange(slots).unsqueeze(0)
    grams = torch.arange(1, max_n + 1).unsqueeze(0)
    order = torch.rand(batch, slots, generator=generator)  # the random visiting order
    covered = torch.zeros(batch, slots, dtype=torch.bool)
    tried = torch.zeros(batch, slots, dtype=torch.bool)
    remaining = counts.clone().long()
    chosen = torch.zeros(batch, dtype=torch.long)
    while True:
        # starts ALBERT would not skip outright: untried, uncovered, first word fits
        viable = words.valid & ~covered & ~tried & (words.size <= remaining.unsqueeze(1))
        viable &= (remaining > 0).unsqueeze(1)
        active = viable.any(dim=1)
        if not bool(active.any()):
            break
        start = order.masked_fill(~viable, 2.0).argmin(dim=1)
        tried[rows, start] |= active
        n = _sample_lengths(weights, batch, generator) + 1
        limit = words.next_invalid[rows, start].unsqueeze(1)
        ends = torch.minimum(start.unsqueeze(1) + grams, limit)  # (B, max_n) exclusive
        tokens = words.before.gather(1, ends) - words.before[rows, start].unsqueeze(1)
        fits = (tokens <= remaining.unsqueeze(1)) & (grams <= n.unsqueeze(1))
        k = fits.sum(dim=1).clamp(min=1) - 1  # longest prefix that fits (>= 1 word)
        end = ends.gather(1, k.unsqueeze(1)).squeeze(1)
        in_gram = (slot >= start.unsqueeze(1)) & (slot < end.unsqueeze(1))
        accept = active & ~(in_gram & covered).any(dim=1)
        in_gram &= accept.unsqueeze(1)
        covered |= in_gram
        remaining -= torch.where(accept, tokens.gather(1, k.unsqueeze(1)).squeeze(1), 0)
        tok = in_gram.gather(1, words.index)
        span_ids = torch.where(tok, chosen.unsqueeze(1), span_ids)
        chosen += accept.long()
    return span_ids >= 0, span_ids


def geometric_length_probs(p: float, min_len: int, max_len: int) -> Tensor:
    """SpanBERT's span-length law: ``p (1-p)^(l - min_len)`` on [min_len, max_len], renormalised.

    Returns a float64 tensor of ``max_len - min_len + 1`` probabilities (lengths in order).
    """
    if not 0 < p <= 1 or min_len < 1 or max_len < min_len:
        raise ValueError(f"need 0 < p <= 1 and 1 <= min_len <= max_len, got {p}, "
                         f"{min_len}, {max_len}")
    lengths = torch.arange(min_len, max_len + 1, dtype=torch.float64)
    law = p * (1 - p) ** (lengths - min_len)
    return law / law.sum()


def select_geometric_spans(
    candidates: Tensor,
    word_ids: Tensor,
    counts: Tensor,
    generator: torch.Generator,
    p: float = 0.2,
    min_len: int = 1,
    max_len: int = 10,
    truncate: bool = True,
) -> tuple[Tensor, Tensor]:
    """SpanBERT span masking: geometric span lengths in words, up to a token budget.

    Follows facebookresearch/SpanBERT ``PairWithSpanMaskingScheme.mask``, row by row but
    vectorized over the batch. Until ``counts[b]`` tokens are selected, each round draws a
    span length ``l`` in **words** from :func:`geometric_length_probs` (``p(l) ∝ p (1-p)^(l -
    min_len)`` on [min_len, max_len]) and an anchor token uniformly among the candidate tokens
    not yet selected (the original draws any token and retries when it is already masked:
    the same law); the span starts at the **start of the anchor's word** and covers ``l``
    whole words (every subword token of them), cut short by the end of the row or a word
    holding a special/padding token. A span may run over tokens already selected (they are
    not counted twice) and spans that overlap or touch merge (``merge_intervals``).

    Budget: the original adds tokens one at a time, left to right, and stops the moment the
    budget is reached, so the **last span is cut at exactly** ``counts[b]`` **tokens**, even
    inside a word (``truncate=True``, the default). With ``truncate=False`` the last span keeps
    all its words and may overshoot the budget by up to one span. A row with fewer available
    tokens than its budget selects all it can.

    Args:
        candidates: (B, L) bool, positions that may be selected.
        word_ids: (B, L) long word ids (collator convention, -1 for none).
        counts: (B,) long token budget per row (e.g. :func:`ceil_counts`).
        generator: the source of randomness.
        p, min_len, max_len: the clipped geometric law of span lengths in words.
        truncate: cut the last span at the budget (original) or keep its whole words.

    Returns:
        ``(selected, span_ids)``: (B, L) bool and (B, L) long, -1 outside spans, else the id
        of the (merged) span, numbered 0, 1, ... from the left of each row (see
        :func:`run_ids`). Inputs are not modified.
    """
    _check_inputs(candidates, word_ids, counts)
    batch, length = candidates.shape
    selected = torch.zeros(batch, length, dtype=torch.bool)
    if length == 0:
        return selected, run_ids(selected)
    law = geometric_length_probs(p, min_len, max_len)
    words = _word_table(word_ids, candidates)
    rows = torch.arange(batch)
    anchors_ok = candidates & words.valid.gather(1, words.index)
    remaining = counts.clone().long()
    while True:
        available = anchors_ok & ~selected & (remaining > 0).unsqueeze(1)
        active = available.any(dim=1)
        if not bool(active.any()):
            break
        anchor, _ = random_choice(available, generator)
        n = _sample_lengths(law, batch, generator) + min_len
        first = words.index[rows, anchor]
        end = torch.minimum(first + n, words.next_invalid[rows, first])
        new = (words.index >= first.unsqueeze(1)) & (words.index < end.unsqueeze(1))
        new &= ~selected & active.unsqueeze(1)
        if truncate:
            new &= new.long().cumsum(dim=1) <= remaining.unsqueeze(1)
        selected |= new
        remaining -= new.long().sum(dim=1)
    return selected, run_ids(selected)


# ------------------------------------------------------------------- window helpers
# Small helpers over fixed-length windows of positions, shared by collators that place
# non-overlapping n-token windows (StructBERT's shuffled trigrams, ERNIE's lexicon matches).
def window_count(x: Tensor, left: int, right: int) -> Tensor:
    """For every position s, the sum of ``x[:, s + left : s + right + 1]`` (clipped to the row).

    ``x`` is a (B, L) bool or integer tensor; returns (B, L) long. ``left``/``right`` are
    offsets relative to ``s`` and may be negative (e.g. ``(-(n - 1), -1)`` looks back over the
    ``n - 1`` previous positions).
    """
    batch, length = x.shape
    prefix = torch.cat([torch.zeros(batch, 1, dtype=torch.long), x.long().cumsum(dim=1)], 1)
    # prefix[:, clamp(s + k, 0, length)] for all s, as a slice of an edge-padded copy
    pad = max(abs(left), abs(right) + 1)
    edged = torch.cat(
        [prefix[:, :1].expand(batch, pad), prefix, prefix[:, -1:].expand(batch, pad)], dim=1
    )
    hi = edged[:, pad + right + 1 : pad + right + 1 + length]
    lo = edged[:, pad + left : pad + left + length]
    return hi - lo


def greedy_non_overlapping(starts: Tensor, length: int) -> Tensor:
    """Keep non-overlapping windows ``[s, s + length)`` from candidate starts, leftmost first.

    Equals the greedy left-to-right scan (accept a window unless it overlaps one already
    accepted), computed in vectorized rounds: a candidate with no remaining candidate
    starting in ``(s - length, s)`` is accepted, the candidates it overlaps are dropped,
    repeat. Rounds are few (the longest chain of mutually overlapping candidates).

    Args:
        starts: (B, W) bool candidate window starts.
        length: the window length in positions.

    Returns:
        (B, W) bool, the accepted starts (a new tensor).
    """
    if length <= 1 or not bool(starts.any()):
        return starts.clone()
    accepted = torch.zeros_like(starts)
    remaining = starts.clone()
    while bool(remaining.any()):
        earlier = window_count(remaining, -(length - 1), -1) > 0
        take = remaining & ~earlier
        accepted |= take
        blocked = window_count(take, -(length - 1), length - 1) > 0
        remaining &= ~blocked
    return accepted
