"""ELECTRA's collator: dynamic masking for the generator, exactly as the original.

Follows google-research/electra ``pretrain/pretrain_helpers.py`` (``mask``):

* inputs are ``[CLS] tokens [SEP]`` (stream-packed blocks of ``max_length - 2`` raw tokens);
* candidates exclude every special token ([CLS], [SEP], [MASK], [PAD], ...) and padding;
* each row gets an exact budget
  ``max(1, min(int((p + 0.005) * max_length), round(n_real * p)))`` where ``n_real`` is the
  number of non-padding tokens *including* [CLS]/[SEP] (the original's ``input_mask`` sum) and
  ``round`` is half-to-even like ``tf.round``;
* of the chosen positions 85% become [MASK] and 15% stay unchanged; there is **no** random
  replacement (the generator's samples play that role).

The original draws the positions *with* replacement (``tf.random.categorical``), so a few
duplicates can make a row's count slightly smaller than the budget; here they are drawn
without replacement so every row gets exactly its budget (capped by its candidate count).

Importable without Lightning: ``from plmkit.plugins.electra import ElectraCollator``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from plmkit import masking as masking_ops
from plmkit.collator import Collator
from plmkit.config import MaskingConfig, SpecialTokens
from plmkit.errors import PlmkitError


def electra_counts(num_real: Tensor, rate: float, max_predictions: int) -> Tensor:
    """ELECTRA's per-row budget ``max(1, min(max_predictions, round(num_real * rate)))``.

    ``torch.round`` rounds half to even, like ``tf.round`` in the original.
    """
    counts = torch.round(num_real.to(torch.float64) * rate).long()
    return counts.clamp(max=max_predictions).clamp(min=1)


class ElectraCollator(Collator):
    """Masked inputs for ELECTRA's generator (the discriminator's labels come from its samples).

    Returns ``input_ids`` (masked), ``attention_mask``, ``token_type_ids`` (zeros) and
    ``labels`` (the original id at every chosen position, -100 elsewhere). The original ids
    are ``where(labels != -100, labels, input_ids)``.

    Args:
        tokenizer: a Hugging Face tokenizer with [CLS]/[SEP]/[PAD]/[MASK], or its
            :class:`~plmkit.config.SpecialTokens`.
        max_length: the longest model input ([CLS] and [SEP] included); examples longer than
            ``max_length - 2`` raw tokens are truncated.
        masking: ELECTRA's defaults (85% [MASK], 15% unchanged); always an exact count, whose
            ``max_predictions`` default is ``int((p + 0.005) * max_length)`` (19 at 128), as
            the original's ``max_predictions_per_seq``. No whole-word masking.
        pad_to_max_length: pad every batch to ``max_length`` instead of its longest row.
        seed: seed of the collator's generator (see :class:`plmkit.collator.Collator`).
        generator: an explicit ``torch.Generator`` (overrides ``seed``).
    """

    num_special_tokens = 2  # [CLS] x [SEP]

    def __init__(
        self,
        tokenizer: Any,
        max_length: int = 128,
        masking: MaskingConfig = MaskingConfig(mask_rate=0.85, random_rate=0.0),
        pad_to_max_length: bool = False,
        seed: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(seed, generator)
        if max_length < 3:
            raise ValueError(f"max_length must leave room for [CLS] x [SEP], got {max_length}")
        if masking.whole_word or not masking.exact_count:
            raise PlmkitError("ELECTRA masks single tokens with an exact count: set "
                              "masking.whole_word false and masking.exact_count true")
        self.tokens = SpecialTokens.from_tokenizer(tokenizer)
        self.max_length, self.masking = max_length, masking
        self.max_predictions = masking.max_predictions or int(
            (masking.probability + 0.005) * max_length
        )
        self.pad_to_max_length = pad_to_max_length
        self.special_ids = torch.tensor(self.tokens.all, dtype=torch.long)
        self.random_ids = masking_ops.non_special_ids(self.tokens.vocab_size, self.tokens.all)

    def wrap(self, examples: list[dict[str, Any]]) -> tuple[Tensor, Tensor]:
        """``[CLS] ids [SEP]`` rows padded with [PAD]; returns ``(input_ids, attention_mask)``."""
        budget = self.max_length - self.num_special_tokens
        raw = self.pad(examples, "input_ids", self.tokens.pad)[:, :budget]
        lengths = torch.tensor([min(len(e["input_ids"]), budget) for e in examples])
        width = self.max_length if self.pad_to_max_length else int(lengths.max()) + 2
        batch = len(examples)
        positions = torch.arange(width).unsqueeze(0)
        ids = torch.full((batch, width), self.tokens.pad, dtype=torch.long)
        ids[:, 1 : raw.shape[1] + 1] = raw[:, : width - 2]
        ids[:, 0] = self.tokens.cls
        sep_at = (lengths + 1).unsqueeze(1)
        ids = torch.where(positions == sep_at, torch.full_like(ids, self.tokens.sep), ids)
        attention_mask = (positions <= sep_at).long()
        ids = torch.where(attention_mask.bool(), ids, torch.full_like(ids, self.tokens.pad))
        return ids, attention_mask

    def select(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The positions to predict: an exact per-row budget among the non-special tokens."""
        candidates = attention_mask.bool() & ~torch.isin(input_ids, self.special_ids)
        counts = electra_counts(attention_mask.sum(dim=1), self.masking.probability,
                                self.max_predictions)
        counts = torch.minimum(counts, candidates.sum(dim=1))
        return masking_ops.select_exact(candidates, counts, self.generator)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        ids, attention_mask = self.wrap(examples)
        selected = self.select(ids, attention_mask)
        input_ids, labels = masking_ops.corrupt(
            ids, selected, self.generator, self.tokens.mask, self.random_ids,
            self.masking.mask_rate, self.masking.random_rate,
        )
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": torch.zeros_like(input_ids),
            "labels": labels,
        }
