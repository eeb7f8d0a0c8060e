"""SpanBERT's collator: geometric span masking and the Span Boundary Objective targets.

Follows facebookresearch/SpanBERT ``pretraining/fairseq/data/masking.py``
(``PairWithSpanMaskingScheme`` with ``span_masking``) and ``no_nsp_span_bert_dataset.py``:

* one contiguous segment per example, ``[CLS] x [SEP]`` (no NSP, no sentence pairs);
* a budget of ``ceil(0.15 * n)`` of the ``n`` real tokens; span lengths in **words** drawn from
  a geometric law (p = 0.2) clipped to [1, 10] and renormalised; a span starts at the start of
  a random word and covers whole words; spans are added until the budget is met, the last one
  cut at the budget exactly as the original does (see
  :func:`plmkit.masking.select_geometric_spans`); overlapping or touching spans merge;
* 80% / 10% / 10% ([MASK] / random token / unchanged) decided **once per merged span**;
* SBO targets: for each token ``i`` of a merged span ``(s, e)`` the boundary positions
  ``s - 1`` and ``e + 1`` and the relative position ``i - s``. As in the original
  (``endpoints='external'``, ``pad_to_len``), a span whose boundary would be ``[CLS]`` or
  ``[SEP]`` gets no SBO targets, and only its first ``max_span_targets`` (15) tokens get SBO
  targets (the original cuts each span's target list there); the MLM targets are unaffected.

Importable without Lightning.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from plmkit import masking
from plmkit.collator import IGNORE_INDEX, Collator
from plmkit.segments import build_segments


class SpanBertCollator(Collator):
    """Span-masked LM batches with Span Boundary Objective targets.

    The batch holds ``input_ids``, ``attention_mask``, ``token_type_ids`` (all 0), ``labels``
    (original id at every masked position, -100 elsewhere) and, for the SBO, (batch, length)
    long tensors that are -100 wherever a token has no SBO target:

    * ``sbo_labels``: the original id of the token;
    * ``sbo_left`` / ``sbo_right``: the positions ``s - 1`` / ``e + 1`` just outside its span;
    * ``sbo_position``: its relative position ``i - s`` in the span (0 .. max_span_targets-1).

    Args:
        vocab_size: size of the vocabulary (random replacements are drawn from it).
        cls_token_id, sep_token_id, pad_token_id, mask_token_id: special token ids.
        special_token_ids: ids never drawn as a random replacement.
        max_length: the longest model input (special tokens included).
        mlm_probability: the budget is ``ceil(mlm_probability * n)`` tokens.
        geometric_p: parameter of the geometric law of span lengths (in words).
        min_span, max_span: the span-length range in words the law is clipped to.
        max_span_targets: SBO targets per span (relative positions 0 .. max_span_targets-1).
        truncate_last_span: cut the last span at the budget (original); else keep its words.
        max_predictions: optional cap on the budget (the original has none).
        mask_rate, random_rate: per span, the probability of [MASK] and of random tokens;
            the rest stay unchanged (0.8 / 0.1 / 0.1).
        seed: seed of the collator's generator (see :class:`plmkit.collator.Collator`).
    """

    def __init__(
        self,
        vocab_size: int,
        cls_token_id: int,
        sep_token_id: int,
        pad_token_id: int,
        mask_token_id: int,
        special_token_ids: list[int],
        max_length: int = 512,
        mlm_probability: float = 0.15,
        geometric_p: float = 0.2,
        min_span: int = 1,
        max_span: int = 10,
        max_span_targets: int = 15,
        truncate_last_span: bool = True,
        max_predictions: int | None = None,
        mask_rate: float = 0.8,
        random_rate: float = 0.1,
        seed: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(seed, generator)
        if max_length < 3:
            raise ValueError(f"max_length must be at least 3, got {max_length}")
        self.cls_id, self.sep_id, self.pad_id, self.mask_id = (
            cls_token_id, sep_token_id, pad_token_id, mask_token_id,
        )
        self.max_length = max_length
        self.mlm_probability = mlm_probability
        self.geometric_p, self.min_span, self.max_span = geometric_p, min_span, max_span
        # validates the law once, at construction
        masking.geometric_length_probs(geometric_p, min_span, max_span)
        self.max_span_targets = max_span_targets
        self.truncate_last_span = truncate_last_span
        self.max_predictions = max_predictions
        self.mask_rate, self.random_rate = mask_rate, random_rate
        self.random_ids = masking.non_special_ids(vocab_size, special_token_ids)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, **kwargs: Any) -> SpanBertCollator:
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

    @property
    def expected_span_words(self) -> float:
        """Mean span length in words of the clipped geometric law (3.8 for the defaults)."""
        law = masking.geometric_length_probs(self.geometric_p, self.min_span, self.max_span)
        lengths = torch.arange(self.min_span, self.max_span + 1, dtype=torch.float64)
        return float((law * lengths).sum())

    def budget(self, num_tokens: Tensor) -> Tensor:
        """Tokens to mask per row: ``ceil(mlm_probability * n)`` (float64, like Python)."""
        return masking.ceil_counts(num_tokens, self.mlm_probability, self.max_predictions)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        room = self.max_length - 2
        ids = self.pad(examples, "input_ids", self.pad_id)[:, :room]
        lengths = torch.tensor([min(len(e["input_ids"]), room) for e in examples])
        word_ids = self.pad(examples, "word_ids", -1)[:, :room]
        seg = build_segments(
            ids, lengths, word_ids, torch.zeros_like(ids), self.generator,
            self.cls_id, self.sep_id, self.pad_id, task=None, short_seq_prob=0.0,
        )
        candidates = seg.attention_mask.bool() & ~seg.special_mask
        counts = self.budget(candidates.sum(dim=1))
        selected, span_ids = masking.select_geometric_spans(
            candidates, seg.word_ids, counts, self.generator, self.geometric_p,
            self.min_span, self.max_span, truncate=self.truncate_last_span,
        )
        input_ids, labels = masking.corrupt(
            seg.input_ids, selected, self.generator, self.mask_id, self.random_ids,
            self.mask_rate, self.random_rate, unit_ids=span_ids,
        )
        batch = {
            "input_ids": input_ids,
            "attention_mask": seg.attention_mask,
            "token_type_ids": seg.token_type_ids,
            "labels": labels,
        }
        batch.update(self.sbo_targets(seg.input_ids, span_ids, candidates))
        return batch

    def sbo_targets(self, original_ids: Tensor, span_ids: Tensor, content: Tensor
                    ) -> dict[str, Tensor]:
        """The SBO fields of the batch (see the class docstring) from the merged spans."""
        batch, length = span_ids.shape
        start, end = masking.span_bounds(span_ids)
        pos = torch.arange(length).expand(batch, length)
        left, right = start - 1, end + 1
        # both boundaries must be real content tokens: not [CLS] / [SEP] / padding
        def is_content(p: Tensor) -> Tensor:
            inside = (p >= 0) & (p < length)
            return inside & content.gather(1, p.clamp(0, max(length - 1, 0)))

        relative = pos - start
        has_target = (span_ids >= 0) & is_content(left) & is_content(right)
        has_target &= relative < self.max_span_targets
        ignore = torch.full_like(span_ids, IGNORE_INDEX)
        return {
            "sbo_labels": torch.where(has_target, original_ids, ignore),
            "sbo_left": torch.where(has_target, left, ignore),
            "sbo_right": torch.where(has_target, right, ignore),
            "sbo_position": torch.where(has_target, relative, ignore),
        }

