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

Built on :class:`~plmkit.plugins.bert.BertCollator` with ``sentence_task="sop"``: only the
selection and the label name differ. Importable without Lightning.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from plmkit import masking as masking_ops
from plmkit.config import MaskingConfig
from plmkit.plugins.bert.collator import BertCollator


class AlbertCollator(BertCollator):
    """n-gram masked LM + sentence-order batches for ``AlbertForPreTraining``.

    Returns ``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels`` and (with SOP)
    ``sentence_order_label``; with ``return_spans`` also ``span_ids`` (-1 outside chosen
    n-grams, else an id per n-gram) and ``word_ids`` (-1 on special tokens and padding).

    Args:
        tokenizer, max_length, masking, short_seq_prob, seed: as
            :class:`~plmkit.plugins.bert.BertCollator`.
        max_ngram: the longest n-gram, in words (3).
        ngram_probs: relative weights of n = 1..max_ngram (default 1/n).
        sop: build sentence-order pairs (else single segments, MLM only).
        return_spans: also return ``span_ids`` and ``word_ids`` (for inspection and tests).
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: int = 512,
        masking: MaskingConfig = MaskingConfig(),
        max_ngram: int = 3,
        ngram_probs: Sequence[float] | None = None,
        sop: bool = True,
        short_seq_prob: float = 0.1,
        return_spans: bool = False,
        seed: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(tokenizer, max_length=max_length, masking=masking,
                         sentence_task="sop" if sop else None, short_seq_prob=short_seq_prob,
                         seed=seed, generator=generator)
        self.max_ngram = max_ngram
        self.ngram_probs = list(ngram_probs) if ngram_probs is not None else None
        self.return_spans = return_spans

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
