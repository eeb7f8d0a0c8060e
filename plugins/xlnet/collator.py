"""XLNet's collator: span-based prediction targets and a permuted factorization order.

Follows zihangdai/xlnet ``data_utils.py`` (``_sample_mask`` and ``_local_perm``), vectorized
over the batch, with no Python loop over tokens and no even-length restriction (Hugging Face's
``DataCollatorForPermutationLanguageModeling`` needs one, transformers issue #7341).

Input convention (XLNet's own): the tokens, then ``[SEP] [CLS]`` at the **end**
(``tokens [SEP] [CLS] [PAD]...``), with ``token_type_ids`` 0 on the tokens and ``[SEP]``, 2 on
``[CLS]`` and 3 on padding, as ``XLNetTokenizer`` builds them. Padding goes on the right: the
model's attention is relative, so only the attention mask matters, not the side.

**Targets** (``_sample_mask``). Per row, spans are laid out left to right: a length
``n in 1..max_span`` with ``p(n) ~ 1/n``, a context of ``ctx = n * alpha // beta`` units, the
span placed at a uniform offset ``l in [0, ctx)`` and the next span starting ``ctx - l`` units
after its end, so one span consumes ``n + ctx`` units. Units are whole words when the examples
carry ``word_ids`` (``whole_word=True``, the "complete token" n-grams the original aims at;
its loop tests ``seg[beg]`` where it means ``seg[end]``, so it actually takes ``n`` tokens
from a word start), else tokens (``whole_word=False``). Sampling stops at the row's budget
``num_predict`` (the last span is cut to fit, as in the original) or at the end of the row;
then single random tokens are added until the row has exactly ``num_predict`` targets (the
original's fill-up loop). The budget is ``round(n / partial_k)`` for the ``n`` raw tokens of
the row, with ``partial_k = 6`` (85 at 512), or a fixed ``num_predict``. Special tokens
(``[SEP]`` separators inside a packed stream, the final ``[SEP] [CLS]``) and padding are
never targets. The whole loop is a cumulative sum over a table of sampled spans.

**Factorization order** (``_local_perm``). A random order that permutes positions inside
consecutive blocks of ``perm_size`` (default: the whole sequence, as the original's
``perm_size = reuse_len`` with no memory; the original reuses one within-block permutation for
every block, here each block draws its own, and a last partial block is allowed). Non-target
tokens come first (rank -1): they are visible to every position and see no target. Targets
follow in the sampled order: ``perm_mask[b, i, j] = 1`` (i cannot attend to j) when ``j`` is a
target whose rank is not below ``i``'s, so a target never sees itself. Padding is invisible to
everyone. Only the last ``1/partial_k`` of the order is predicted: XLNet's partial
prediction with K = 6.

One choice differs from ``_local_perm`` by default: there the functional ``[SEP]``/``[CLS]``
tokens also take a place in the permuted order (they see the targets ranked before them and
themselves, and only targets ranked after them see them). Here, by default, they are ordinary
context like every other non-target token, so *no* non-target position ever sees a target
(the rule the plmkit issue states); ``functional_in_order=True`` restores the original. Both
are leak-free: nothing sees a target that does not rank above it.

Batch: ``input_ids``, ``attention_mask``, ``token_type_ids``, ``perm_mask`` (B, L, L) float,
``target_mapping`` (B, P, L) float one-hot (rows past a sequence's budget are all zero),
``labels`` (B, P) with -100 on unused rows. Importable without Lightning.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from plmkit import masking
from plmkit.collator import IGNORE_INDEX, Collator
from plmkit.config import SpecialTokens

CLS_SEGMENT_ID = 2
PAD_SEGMENT_ID = 3


class XLNetCollator(Collator):
    """Permutation-LM batches for ``XLNetLMHeadModel`` (two-stream attention).

    Args:
        tokenizer: a Hugging Face tokenizer with [SEP]/[CLS]/[PAD] (``[SEP] [CLS]`` close every
            sequence), or its :class:`~plmkit.config.SpecialTokens`; its special tokens are
            never targets (and are "functional" in the factorization order when in the input).
        max_length: the longest model input, the final ``[SEP] [CLS]`` included; longer
            examples are cut to ``max_length - 2`` tokens. Any length works, odd or even.
        partial_k: partial prediction K: about ``1/K`` of the real tokens are predicted.
        num_predict: a fixed number of targets per sequence instead of ``round(n / K)``.
        max_span: the longest span, in units (``n in 1..max_span``, ``p(n) ~ 1/n``).
        alpha, beta: a span of ``n`` units sits in a context of ``n * alpha // beta`` units.
        perm_size: the factorization order permutes positions inside consecutive blocks of
            this many positions; ``None``: one block, the whole sequence.
        whole_word: spans count whole words (from the examples' ``word_ids``) instead of
            tokens.
        fill_to_budget: add single random targets until each row has its full budget, as the
            original does; ``False`` keeps the span targets only.
        functional_in_order: give ``[SEP]``/``[CLS]`` (and any special token in the input) a
            place in the permuted order as ``_local_perm`` does, instead of treating them as
            context visible to all that sees no target (default).
        seed: seed of the collator's generator (see :class:`plmkit.collator.Collator`).
    """

    num_special_tokens = 2  # tokens [SEP] [CLS]

    def __init__(
        self,
        tokenizer: Any,
        max_length: int = 512,
        partial_k: float = 6.0,
        num_predict: int | None = None,
        max_span: int = 5,
        alpha: int = 6,
        beta: int = 1,
        perm_size: int | None = None,
        whole_word: bool = True,
        fill_to_budget: bool = True,
        functional_in_order: bool = False,
        seed: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(seed, generator)
        if max_length < 3:
            raise ValueError(f"max_length must leave room for [SEP] [CLS], got {max_length}")
        if alpha < beta or beta < 1:
            raise ValueError(f"need alpha >= beta >= 1 (a non-empty context), got {alpha}/{beta}")
        if max_span < 1 or partial_k <= 1:
            raise ValueError("need max_span >= 1 and partial_k > 1")
        if perm_size is not None and perm_size < 1:
            raise ValueError(f"perm_size must be positive, got {perm_size}")
        tokens = SpecialTokens.from_tokenizer(tokenizer)
        self.sep_id, self.cls_id, self.pad_id = tokens.sep, tokens.cls, tokens.pad
        self.special_ids = torch.tensor(tokens.all, dtype=torch.long)
        self.max_length = max_length
        self.partial_k, self.num_predict = partial_k, num_predict
        self.max_span, self.alpha, self.beta = max_span, alpha, beta
        self.perm_size, self.whole_word = perm_size, whole_word
        self.fill_to_budget, self.functional_in_order = fill_to_budget, functional_in_order
        lengths = torch.arange(1, max_span + 1, dtype=torch.float64)
        self.span_probs = (1.0 / lengths) / (1.0 / lengths).sum()

    # ------------------------------------------------------------------------------ targets
    def budgets(self, num_tokens: Tensor, num_candidates: Tensor) -> Tensor:
        """Targets per row: ``num_predict`` or ``max(1, round(n / K))`` for ``n`` raw tokens
        (separators inside a packed stream included, the final ``[SEP] [CLS]`` not: 85 at
        512), at most the number of candidates."""
        if self.num_predict is not None:
            goal = torch.full_like(num_tokens, self.num_predict)
        else:
            goal = torch.round(num_tokens.double() / self.partial_k).long().clamp(min=1)
        return torch.minimum(goal, num_candidates)

    def sample_spans(
        self, unit_ids: Tensor, num_units: Tensor, goal: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Lay out the spans of every row at once (``_sample_mask`` without its loop).

        Args:
            unit_ids: (B, T) unit index of each token (words or tokens), -1 outside.
            num_units: (B,) units per row.
            goal: (B,) the budget of each row, counted in units here.

        Returns:
            ``(begin, end, taken, truncated)``, each (B, S): span ``k`` of row ``b`` covers
            units ``[begin, end)`` when ``taken``; ``truncated`` marks the span cut to fit the
            budget.
        """
        batch = unit_ids.shape[0]
        per_span = 1 + self.alpha // self.beta  # the fewest units one span consumes
        max_units = int(num_units.max().item()) if batch else 0
        slots = max_units // per_span + 2
        draws = torch.multinomial(
            self.span_probs.float(), batch * slots, replacement=True, generator=self.generator
        )
        n = (draws + 1).view(batch, slots)
        before = n.cumsum(dim=1) - n  # predicted units before span k (if all were taken)
        budget_left = goal.unsqueeze(1) - before
        truncated = n > budget_left
        n = torch.minimum(n, budget_left).clamp(min=1)
        ctx = n * self.alpha // self.beta
        left = (torch.rand(n.shape, generator=self.generator) * ctx).long()
        consumed = n + ctx
        begin = consumed.cumsum(dim=1) - consumed + left
        end = begin + n
        inside = (end <= num_units.unsqueeze(1)).long().cummin(dim=1).values.bool()
        taken = inside & (budget_left > 0)
        return begin, end, taken, truncated & taken

    def select_targets(self, ids: Tensor, candidates: Tensor, word_ids: Tensor) -> Tensor:
        """The (B, T) boolean target mask over the raw tokens."""
        batch, width = ids.shape
        real = ids != self.pad_id
        positions = torch.arange(width).expand(batch, width)
        if self.whole_word:
            previous = torch.cat([word_ids[:, :1] - 1, word_ids[:, :-1]], dim=1)
            starts = (word_ids != previous) | (positions == 0)
        else:
            starts = torch.ones_like(real)
        starts &= real
        unit_ids = torch.where(real, starts.long().cumsum(dim=1) - 1, -1)
        num_units = starts.sum(dim=1)
        goal = self.budgets(real.sum(dim=1), candidates.sum(dim=1))

        begin, end, taken, _ = self.sample_spans(unit_ids, num_units, goal)
        # Mark the covered units with a difference array: +1 at begin, -1 at end.
        marks = torch.zeros(batch, width + 2, dtype=torch.long)
        marks.scatter_add_(1, begin.clamp(max=width + 1), taken.long())
        marks.scatter_add_(1, end.clamp(max=width + 1), -taken.long())
        covered = marks.cumsum(dim=1) > 0
        selected = covered.gather(1, unit_ids.clamp(min=0)) & candidates
        # Whole words can overshoot the token budget: keep the first `goal` tokens.
        selected &= selected.long().cumsum(dim=1) <= goal.unsqueeze(1)
        if self.fill_to_budget:
            missing = (goal - selected.sum(dim=1)).clamp(min=0)
            selected |= masking.select_exact(candidates & ~selected, missing, self.generator)
        return selected

    # -------------------------------------------------------------------------- permutation
    def permutation_mask(self, is_target: Tensor, functional: Tensor, real: Tensor,
                         dtype: torch.dtype = torch.bool) -> Tensor:
        """``perm_mask`` (B, L, L) from a random block-local factorization order: 1 (True)
        where position i may not attend to position j; ``dtype`` bool or a float type."""
        batch, width = real.shape
        positions = torch.arange(width)
        block = positions // (self.perm_size or width)
        keys = block.unsqueeze(0) + torch.rand((batch, width), generator=self.generator)
        keys = keys.masked_fill(~real, float(width + 1))
        order = keys.argsort(dim=1)
        rank = torch.empty_like(order).scatter_(1, order, positions.expand(batch, width))
        masked_or_func = is_target | functional if self.functional_in_order else is_target
        context = real & ~masked_or_func
        rev = torch.where(context, torch.full_like(rank, -1), rank)
        # a target must rank strictly above what it sees; a functional token may see itself
        self_rev = torch.where(is_target, rev, rev + 1)
        # One comparison builds the whole (B, L, L) mask: perm[i, j] = row[i] <= col[j], with
        # col = +big on padding (invisible to all), -big on context (visible to all), the rank
        # on targets / functional tokens; row = -big - 1 on padding rows (they see nothing).
        big = 4 * width + 4
        col = torch.where(masked_or_func, rev, torch.full_like(rev, -big))
        col = col.masked_fill(~real, big)
        row = self_rev.masked_fill(~real, -big - 1)
        # compared as float32 (small integers, exact) straight into the output dtype: about
        # ten times faster on CPU than an int64 comparison followed by a conversion
        perm = torch.empty((batch, width, width), dtype=dtype)
        torch.le(row.float().unsqueeze(2), col.float().unsqueeze(1), out=perm)
        return perm

    # ----------------------------------------------------------------------------- batch
    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        budget = self.max_length - self.num_special_tokens
        ids = self.pad(examples, "input_ids", self.pad_id)[:, :budget]
        word_ids = self.pad(examples, "word_ids", -1)[:, :budget]
        lengths = torch.tensor([min(len(e["input_ids"]), budget) for e in examples])
        batch, width = ids.shape
        real = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
        ids = ids.masked_fill(~real, self.pad_id)
        candidates = real & ~torch.isin(ids, self.special_ids)
        selected = self.select_targets(ids, candidates, word_ids)

        # tokens [SEP] [CLS] [PAD]...
        total = width + 2
        rows = torch.arange(batch)
        input_ids = torch.full((batch, total), self.pad_id, dtype=torch.long)
        input_ids[:, :width] = ids
        input_ids[rows, lengths] = self.sep_id
        input_ids[rows, lengths + 1] = self.cls_id
        attention = torch.arange(total).unsqueeze(0) < (lengths + 2).unsqueeze(1)
        token_type_ids = torch.zeros((batch, total), dtype=torch.long)
        token_type_ids[rows, lengths + 1] = CLS_SEGMENT_ID
        token_type_ids.masked_fill_(~attention, PAD_SEGMENT_ID)
        is_target = torch.zeros((batch, total), dtype=torch.bool)
        is_target[:, :width] = selected
        functional = attention & torch.isin(input_ids, self.special_ids)
        perm_mask = self.permutation_mask(is_target, functional, attention, torch.float32)

        # targets in position order: row r of target_mapping is the r-th target
        counts = is_target.sum(dim=1)
        num_slots = max(int(counts.max().item()) if batch else 0, 1)
        slot = is_target.long().cumsum(dim=1) - 1
        b_idx, t_idx = is_target.nonzero(as_tuple=True)
        s_idx = slot[b_idx, t_idx]
        target_mapping = torch.zeros((batch, num_slots, total), dtype=torch.float32)
        target_mapping[b_idx, s_idx, t_idx] = 1.0
        labels = torch.full((batch, num_slots), IGNORE_INDEX, dtype=torch.long)
        labels[b_idx, s_idx] = input_ids[b_idx, t_idx]
        return {
            "input_ids": input_ids,
            "attention_mask": attention.long(),
            "token_type_ids": token_type_ids,
            "perm_mask": perm_mask,
            "target_mapping": target_mapping,
            "labels": labels,
        }
