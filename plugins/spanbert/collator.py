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

from plmkit import masking as masking_ops
from plmkit.collator import IGNORE_INDEX, Collator
from plmkit.config import MaskingConfig, SpecialTokens
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
        tokenizer: a Hugging Face tokenizer with [CLS]/[SEP]/[PAD]/[MASK], or its
            :class:`~plmkit.config.SpecialTokens`.
        max_length: the longest model input (special tokens included).
        masking: the budget is ``ceil(probability * n)`` tokens, capped by
            ``max_predictions`` when set (the original has no cap); ``mask_rate`` /
            ``random_rate`` are decided per span. Spans always cover whole words and the
            budget is always exact: ``whole_word`` and ``exact_count`` are not read.
        geometric_p: parameter of the geometric law of span lengths (in words).
        min_span, max_span: the span-length range in words the law is clipped to.
        max_span_targets: SBO targets per span (relative positions 0 .. max_span_targets-1).
        truncate_last_span: cut the last span at the budget (original); else keep its words.
        seed: seed of the collator's generator (see :class:`plmkit.collator.Collator`).
    """

    num_special_tokens = 2  # [CLS] x [SEP]

    def __init__(
        self,
        tokenizer: Any,
        max_length: int = 512,
        masking: MaskingConfig = MaskingConfig(),
        geometric_p: float = 0.2,
        min_span: int = 1,
        max_span: int = 10,
        max_span_targets: int = 15,
        truncate_last_span: bool = True,
        seed: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(seed, generator)
        if max_length < 3:
            raise ValueError(f"max_length must be at least 3, got {max_length}")
        self.tokens = SpecialTokens.from_tokenizer(tokenizer)
        self.max_length, self.masking = max_length, masking
        self.geometric_p, self.min_span, self.max_span = geometric_p, min_span, max_span
        # validates the law once, at construction
        masking_ops.geometric_length_probs(geometric_p, min_span, max_span)
        self.max_span_targets = max_span_targets
        self.truncate_last_span = truncate_last_span
        self.random_ids = masking_ops.non_special_ids(self.tokens.vocab_size, self.tokens.all)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        room = self.max_length - self.num_special_tokens
        ids = self.pad(examples, "input_ids", self.tokens.pad)[:, :room]
        lengths = torch.tensor([min(len(e["input_ids"]), room) for e in examples])
        word_ids = self.pad(examples, "word_ids", -1)[:, :room]
        seg = build_segments(
            ids, lengths, word_ids, torch.zeros_like(ids), self.generator,
            self.tokens.cls, self.tokens.sep, self.tokens.pad, task=None, short_seq_prob=0.0,
        )
        candidates = seg.attention_mask.bool() & ~seg.special_mask
        counts = masking_ops.ceil_counts(  # ceil(p * n) in float64, like the original
            candidates.sum(dim=1), self.masking.probability, self.masking.max_predictions
        )
        selected, span_ids = masking_ops.select_geometric_spans(
            candidates, seg.word_ids, counts, self.generator, self.geometric_p,
            self.min_span, self.max_span, truncate=self.truncate_last_span,
        )
        input_ids, labels = masking_ops.corrupt(
            seg.input_ids, selected, self.generator, self.tokens.mask, self.random_ids,
            self.masking.mask_rate, self.masking.random_rate, unit_ids=span_ids,
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
        start, end = masking_ops.span_bounds(span_ids)
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

