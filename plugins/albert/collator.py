"""ALBERT's collator: whole-word n-gram masking (n <= 3) and sentence-order prediction.

Follows google-research/albert ``create_pretraining_data.py``:

* **n-gram masking**: whole words, n-grams of n <= 3 words with p(n) proportional to 1/n
  (6/11, 3/11, 2/11), chosen by :func:`plmkit.masking.select_ngrams` until the budget is met
  without ever exceeding it;
* **budget**: ``min(max_predictions, max(1, round(0.15 * n)))`` tokens per sequence, as BERT
  (:func:`plmkit.masking.exact_counts`; ``n`` counts the real tokens, not [CLS]/[SEP]).
  ``max_predictions`` defaults to ``ceil(max_length * 0.15)`` so the rate really is 15%; the
  released ALBERT runs used ``max_predictions_per_seq=20`` at length 512 (~4% of the tokens),
  set ``max_predictions=20`` to reproduce that;
* **80/10/10** decided per token, as in the original: [MASK], a random token, unchanged;
* **SOP**: each block (one document) is split at a random sentence boundary into two
  consecutive segments; label 0 keeps them in order, label 1 swaps them (HF
  ``sentence_order_label``); ``short_seq_prob = 0.1`` as in the original.

Built on :class:`~plmkit.plugins.bert.BertCollator` with ``sentence_task="sop"``: only the
selection (n-grams instead of tokens) and the label name differ. Importable without Lightning.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from plmkit import masking
from plmkit.plugins.bert.collator import BertCollator


class AlbertCollator(BertCollator):
    """n-gram masked LM + sentence-order batches for ``AlbertForPreTraining``.

    Returns ``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels`` and (with SOP)
    ``sentence_order_label``; with ``return_spans`` also ``span_ids`` (-1 outside chosen
    n-grams, else an id per n-gram) and ``word_ids`` (-1 on special tokens and padding).

    Args:
        vocab_size: size of the vocabulary (random replacements are drawn from it).
        cls_token_id, sep_token_id, pad_token_id, mask_token_id: special token ids.
        special_token_ids: ids never drawn as a random replacement.
        max_length: the longest model input (special tokens included).
        mlm_probability: fraction of real tokens to predict.
        max_predictions: cap on the budget; default ``ceil(max_length * mlm_probability)``.
        max_ngram: the longest n-gram, in words (3).
        ngram_probs: relative weights of n = 1..max_ngram (default 1/n).
        mask_rate, random_rate: of the chosen tokens, the share replaced by [MASK] and by a
            random token; the rest stay unchanged (0.8 / 0.1 / 0.1).
        sop: build sentence-order pairs (else single segments, MLM only).
        short_seq_prob: probability of a shorter random target length.
        return_spans: also return ``span_ids`` and ``word_ids`` (for inspection and tests).
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
        max_predictions: int | None = None,
        max_ngram: int = 3,
        ngram_probs: Sequence[float] | None = None,
        mask_rate: float = 0.8,
        random_rate: float = 0.1,
        sop: bool = True,
        short_seq_prob: float = 0.1,
        return_spans: bool = False,
        seed: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(
            vocab_size, cls_token_id, sep_token_id, pad_token_id, mask_token_id,
            special_token_ids, max_length=max_length, mlm_probability=mlm_probability,
            exact_count=True, max_predictions=max_predictions, whole_word=True,
            mask_rate=mask_rate, random_rate=random_rate,
            sentence_task="sop" if sop else None, short_seq_prob=short_seq_prob, seed=seed,
            generator=generator,
        )
        self.max_ngram = max_ngram
        self.ngram_probs = list(ngram_probs) if ngram_probs is not None else None
        self.return_spans = return_spans

    def select_spans(self, candidates: Tensor, word_ids: Tensor) -> tuple[Tensor, Tensor]:
        """The n-grams to predict: ``(selected, span_ids)``, see :func:`masking.select_ngrams`."""
        counts = masking.exact_counts(
            candidates.sum(dim=1), self.mlm_probability, self.max_predictions
        )
        return masking.select_ngrams(
            candidates, word_ids, counts, self.generator, self.max_ngram, self.ngram_probs
        )

    def select(self, candidates: Tensor, word_ids: Tensor) -> Tensor:
        return self.select_spans(candidates, word_ids)[0]

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        seg = self.segments(examples)
        candidates = seg.attention_mask.bool() & ~seg.special_mask
        selected, span_ids = self.select_spans(candidates, seg.word_ids)
        input_ids, labels = masking.corrupt(
            seg.input_ids, selected, self.generator, self.mask_id, self.random_ids,
            self.mask_rate, self.random_rate,
        )
        batch = {
            "input_ids": input_ids,
            "attention_mask": seg.attention_mask,
            "token_type_ids": seg.token_type_ids,
            "labels": labels,
        }
        if seg.sentence_label is not None:
            batch["sentence_order_label"] = seg.sentence_label
        if self.return_spans:
            batch["span_ids"] = span_ids
            batch["word_ids"] = seg.word_ids
        return batch
