"""Vectorized masking primitives shared by the collators of every method.

Every function works on a whole batch at once, (batch, length) tensors, with no Python loop
over tokens, and draws its randomness from the ``generator`` it is given. Selection functions
return a boolean mask of the positions to predict; :func:`corrupt` then decides, per token or
per unit (word / span), whether a selected position becomes ``[MASK]``, a random token or
stays unchanged, and builds the labels (-100 where nothing is predicted).

Words and spans are described by *unit ids*: a (batch, length) long tensor in which positions
sharing a non-negative id belong to the same unit and -1 marks positions outside any unit.
"""

from __future__ import annotations

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

    With ``unit_ids`` (e.g. word ids for whole-word masking) whole units are taken in random
    order while the running token count stays within the budget (at least one unit per row
    that has any); a unit with a non-candidate token is never taken.
    """
    if unit_ids is None:
        keys = torch.rand(candidates.shape, generator=generator)
        keys = keys.masked_fill(~candidates, 2.0)
        ranks = keys.argsort(dim=1).argsort(dim=1)
        return (ranks < counts.unsqueeze(1)) & candidates

    sizes, valid, num_units = _unit_table(unit_ids, candidates)
    keys = torch.rand(sizes.shape, generator=generator).masked_fill(~valid, 2.0)
    order = keys.argsort(dim=1)
    sorted_sizes = sizes.gather(1, order) * valid.gather(1, order)
    running = sorted_sizes.cumsum(dim=1)
    take_sorted = (running <= counts.unsqueeze(1)) & valid.gather(1, order)
    # never select nothing: the first (random) valid unit is always taken
    take_sorted[:, 0] |= valid.gather(1, order)[:, 0] & (counts > 0)
    take = torch.zeros_like(take_sorted).scatter_(1, order, take_sorted)
    return take.gather(1, unit_ids.clamp(min=0)) & (unit_ids >= 0)


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
