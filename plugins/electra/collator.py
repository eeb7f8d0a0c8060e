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

from plmkit import masking
from plmkit.collator import Collator


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
        vocab_size: size of the vocabulary (used only for the optional random replacement).
        cls_token_id, sep_token_id, pad_token_id, mask_token_id: special token ids.
        special_token_ids: ids never masked (all of the tokenizer's special tokens).
        max_length: the longest model input ([CLS] and [SEP] included); examples longer than
            ``max_length - 2`` raw tokens are truncated.
        mlm_probability: fraction of tokens to predict (0.15).
        max_predictions: cap on the per-row budget; default ``int((p + 0.005) * max_length)``
            (19 at 128), as the original's ``max_predictions_per_seq``.
        mask_rate: share of the chosen positions replaced by [MASK] (0.85).
        random_rate: share replaced by a random token (0.0 in ELECTRA); the rest is unchanged.
        pad_to_max_length: pad every batch to ``max_length`` instead of its longest row.
        seed: seed of the collator's generator (see :class:`plmkit.collator.Collator`).
        generator: an explicit ``torch.Generator`` (overrides ``seed``).
    """

    def __init__(
        self,
        vocab_size: int,
        cls_token_id: int,
        sep_token_id: int,
        pad_token_id: int,
        mask_token_id: int,
        special_token_ids: list[int],
        max_length: int = 128,
        mlm_probability: float = 0.15,
        max_predictions: int | None = None,
        mask_rate: float = 0.85,
        random_rate: float = 0.0,
        pad_to_max_length: bool = False,
        seed: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(seed, generator)
        if max_length < 3:
            raise ValueError(f"max_length must leave room for [CLS] x [SEP], got {max_length}")
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
        if mask_rate < 0 or random_rate < 0 or mask_rate + random_rate > 1.0:
            raise ValueError("mask_rate and random_rate must be >= 0 and sum to at most 1")
        self.cls_id, self.sep_id, self.pad_id, self.mask_id = (
            cls_token_id, sep_token_id, pad_token_id, mask_token_id,
        )
        self.max_length = max_length
        self.mlm_probability = mlm_probability
        self.max_predictions = (
            max_predictions
            if max_predictions is not None
            else int((mlm_probability + 0.005) * max_length)
        )
        self.mask_rate, self.random_rate = mask_rate, random_rate
        self.pad_to_max_length = pad_to_max_length
        self.special_ids = torch.tensor(sorted(set(special_token_ids)), dtype=torch.long)
        self.random_ids = masking.non_special_ids(vocab_size, list(special_token_ids))

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, **kwargs: Any) -> ElectraCollator:
        """Build from a Hugging Face tokenizer with [CLS]/[SEP]/[PAD]/[MASK] tokens."""
        return cls(
            vocab_size=len(tokenizer),
            cls_token_id=tokenizer.cls_token_id,
            sep_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id,
            mask_token_id=tokenizer.mask_token_id,
            special_token_ids=list(tokenizer.all_special_ids),
            **kwargs,
        )

    def wrap(self, examples: list[dict[str, Any]]) -> tuple[Tensor, Tensor]:
        """``[CLS] ids [SEP]`` rows padded with [PAD]; returns ``(input_ids, attention_mask)``."""
        budget = self.max_length - 2
        raw = self.pad(examples, "input_ids", self.pad_id)[:, :budget]
        lengths = torch.tensor([min(len(e["input_ids"]), budget) for e in examples])
        width = self.max_length if self.pad_to_max_length else int(lengths.max()) + 2
        batch = len(examples)
        positions = torch.arange(width).unsqueeze(0)
        ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        ids[:, 1 : raw.shape[1] + 1] = raw[:, : width - 2]
        ids[:, 0] = self.cls_id
        sep_at = (lengths + 1).unsqueeze(1)
        ids = torch.where(positions == sep_at, torch.full_like(ids, self.sep_id), ids)
        attention_mask = (positions <= sep_at).long()
        ids = torch.where(attention_mask.bool(), ids, torch.full_like(ids, self.pad_id))
        return ids, attention_mask

    def select(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The positions to predict: an exact per-row budget among the non-special tokens."""
        candidates = attention_mask.bool() & ~torch.isin(input_ids, self.special_ids)
        counts = electra_counts(attention_mask.sum(dim=1), self.mlm_probability,
                                self.max_predictions)
        counts = torch.minimum(counts, candidates.sum(dim=1))
        return masking.select_exact(candidates, counts, self.generator)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        ids, attention_mask = self.wrap(examples)
        selected = self.select(ids, attention_mask)
        input_ids, labels = masking.corrupt(
            ids, selected, self.generator, self.mask_id, self.random_ids,
            self.mask_rate, self.random_rate,
        )
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": torch.zeros_like(input_ids),
            "labels": labels,
        }
