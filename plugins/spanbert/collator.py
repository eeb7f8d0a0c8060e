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

The inputs and the corruption are :class:`~plmkit.mlm.MlmCollator`'s; the budget, the spans
and the SBO targets are SpanBERT's. Importable without Lightning.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from plmkit import masking as masking_ops
from plmkit.collator import IGNORE_INDEX
from plmkit.mlm import MlmCollator


class SpanBertCollator(MlmCollator):
    """Span-masked LM batches with Span Boundary Objective targets.

    The batch holds ``input_ids``, ``attention_mask``, ``token_type_ids`` (all 0), ``labels``
    (original id at every masked position, -100 elsewhere) and, for the SBO, (batch, length)
    long tensors that are -100 wherever a token has no SBO target:

    * ``sbo_labels``: the original id of the token;
    * ``sbo_left`` / ``sbo_right``: the positions ``s - 1`` / ``e + 1`` just outside its span;
    * ``sbo_position``: its relative position ``i - s`` in the span (0 .. max_span_targets-1).

    ``masking``: the budget is ``ceil(probability * n)`` tokens, capped by ``max_predictions``
    only when set (the original has no cap); ``mask_rate`` / ``random_rate`` are decided per
    span; spans always cover whole words and the budget is always exact (``whole_word`` and
    ``exact_count`` are not read).

    Args:
        geometric_p: parameter of the geometric law of span lengths (in words).
        min_span, max_span: the span-length range in words the law is clipped to.
        max_span_targets: SBO targets per span (relative positions 0 .. max_span_targets-1).
        truncate_last_span: cut the last span at the budget (original); else keep its words.
        **kwargs: ``masking``, ``seed``, ... as :class:`~plmkit.mlm.MlmCollator`.
    """

    def __init__(self, tokenizer: Any, max_length: int = 512, geometric_p: float = 0.2,
                 min_span: int = 1, max_span: int = 10, max_span_targets: int = 15,
                 truncate_last_span: bool = True, **kwargs: Any) -> None:
        super().__init__(tokenizer, max_length, sentence_task=None, short_seq_prob=0.0,
                         **kwargs)
        self.max_predictions = self.masking.max_predictions  # no default cap
        # validates the law once, at construction
        masking_ops.geometric_length_probs(geometric_p, min_span, max_span)
        self.geometric_p, self.min_span, self.max_span = geometric_p, min_span, max_span
        self.max_span_targets, self.truncate_last_span = max_span_targets, truncate_last_span

    def budgets(self, candidates: Tensor, num_tokens: Tensor | None = None) -> Tensor:
        """``ceil(p * n)`` of the ``n`` candidates (in float64, like the original)."""
        return masking_ops.ceil_counts(candidates.sum(dim=1), self.masking.probability,
                                       self.max_predictions)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        seg = self.segments(examples)
        candidates = self.candidates(seg)
        selected, span_ids = masking_ops.select_geometric_spans(
            candidates, seg.word_ids, self.budgets(candidates), self.generator,
            self.geometric_p, self.min_span, self.max_span, truncate=self.truncate_last_span,
        )
        batch = self.masked_batch(seg, selected, unit_ids=span_ids)  # 80/10/10 per span
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
