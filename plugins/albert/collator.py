"""ALBERT's collator: whole-word n-gram masking (n <= 3) and sentence-order prediction.

Follows google-research/albert ``create_pretraining_data.py``:

* **n-gram masking**: whole-word n-grams, n <= 3 with p(n) proportional to 1/n (6/11, 3/11,
  2/11), chosen by :func:`plmkit.masking.select_ngrams` up to the budget, never over it;
* **budget**: ``min(max_predictions, max(1, round(0.15 * n)))`` tokens per sequence, as BERT
  (``n``: the whole input, ``[CLS]`` and ``[SEP]`` included, the reference's ``len(tokens)``).
  ``masking.max_predictions`` defaults to ``max_length * 0.15`` rounded up to a multiple of 10
  (20 at 128, 80 at 512: a real 15%); the released runs used 20 at length 512 (~4%). The
  count is always exact and the units whole words (``masking.exact_count`` and
  ``masking.whole_word`` are not read);
* **SOP**: each block (one document) is split at a random sentence boundary into two
  consecutive segments; label 0 keeps them in order, 1 swaps them (``sentence_order_label``).

Only the selection and the label name differ from :class:`~plmkit.mlm.MlmCollator`.
Importable without Lightning.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from plmkit import masking as masking_ops
from plmkit.mlm import MlmCollator


class AlbertCollator(MlmCollator):
    """n-gram masked LM + sentence-order batches for ``AlbertForPreTraining``.

    With ``return_spans`` the batch also holds ``span_ids`` (-1 outside chosen n-grams, else
    an id per n-gram) and ``word_ids`` (-1 on special tokens and padding), for inspection.

    Args:
        max_ngram: the longest n-gram, in words (3).
        ngram_probs: relative weights of n = 1..max_ngram (default 1/n).
        sop: build sentence-order pairs (else single segments, MLM only).
        return_spans: also return ``span_ids`` and ``word_ids``.
        **kwargs: the other arguments of :class:`~plmkit.mlm.MlmCollator`.
    """

    def __init__(self, tokenizer: Any, max_length: int = 512, max_ngram: int = 3,
                 ngram_probs: Sequence[float] | None = None, sop: bool = True,
                 return_spans: bool = False, **kwargs: Any) -> None:
        super().__init__(tokenizer, max_length, sentence_task="sop" if sop else None, **kwargs)
        self.max_ngram, self.return_spans = max_ngram, return_spans
        self.ngram_probs = list(ngram_probs) if ngram_probs is not None else None

    def select(self, candidates: Tensor, word_ids: Tensor,
               num_tokens: Tensor | None = None) -> Tensor:
        """The n-grams to predict, see :func:`plmkit.masking.select_ngrams`."""
        counts = self.budgets(candidates, num_tokens)
        selected, span_ids = masking_ops.select_ngrams(
            candidates, word_ids, counts, self.generator, self.max_ngram, self.ngram_probs
        )
        self._spans = span_ids, word_ids  # for return_spans
        return selected

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        batch = super().__call__(examples)
        if "next_sentence_label" in batch:
            batch["sentence_order_label"] = batch.pop("next_sentence_label")
        if self.return_spans:
            batch["span_ids"], batch["word_ids"] = self._spans
        return batch
