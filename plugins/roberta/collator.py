"""RoBERTa's collator: dynamic masking (15%, 80/10/10) of full packed blocks, no NSP.

Follows fairseq ``examples/roberta`` (``MaskTokensDataset``):

* **dynamic masking**: the mask is drawn when the batch is built, so every pass over a
  sequence gets a fresh one (plmkit's loader reseeds the collator per ``(seed, epoch, batch)``,
  which keeps that reproducible and resumable);
* **budget**: fairseq masks ``int(0.15 * n + rand)`` tokens per sequence, an exact count with
  random rounding (unbiased: exactly 15% on average, no ``max_predictions`` cap). That is the
  default here (``exact_count=True``); ``exact_count=False`` draws Bernoulli(0.15) per token
  as Hugging Face's ``DataCollatorForLanguageModeling`` does. ``n`` counts the maskable tokens
  (fairseq's counts ``<s>``/``</s>`` too, a 2-token difference);
* **80/10/10** per token: ``[MASK]``, a random non-special token, unchanged;
* **FULL-SENTENCES**: blocks are packed across documents with the separator token between them
  (``packing = "stream"`` in the objective); the input is ``[CLS] block [SEP]`` (fairseq's
  ``<s> x </s>``), one segment, no token types, no sentence task.

Special tokens are never selected, including the document separators inside a packed block
(fairseq can mask those ``</s>``; predicting a separator teaches nothing).

Built on :class:`~plmkit.plugins.bert.BertCollator` (single segment, no sentence task):
only the selection rule and the candidate set differ. Importable without Lightning.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from plmkit import masking
from plmkit.plugins.bert.collator import BertCollator
from plmkit.segments import Segments


class RobertaCollator(BertCollator):
    """Dynamically masked single-segment MLM batches: input_ids, attention_mask, labels.

    Args:
        vocab_size: size of the vocabulary (random replacements are drawn from it).
        cls_token_id, sep_token_id, pad_token_id, mask_token_id: special token ids.
        special_token_ids: ids never selected nor drawn as a random replacement.
        max_length: the longest model input (``[CLS]`` and ``[SEP]`` included).
        mlm_probability: fraction of maskable tokens to predict.
        exact_count: fairseq's exact count ``int(p * n + rand)`` per sequence (default), else
            Bernoulli(p) per token.
        mask_rate, random_rate: of the chosen tokens, the share replaced by ``[MASK]`` and by
            a random token; the rest stay unchanged (0.8 / 0.1 / 0.1).
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
        exact_count: bool = True,
        mask_rate: float = 0.8,
        random_rate: float = 0.1,
        seed: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(
            vocab_size, cls_token_id, sep_token_id, pad_token_id, mask_token_id,
            special_token_ids, max_length=max_length, mlm_probability=mlm_probability,
            exact_count=exact_count, whole_word=False, mask_rate=mask_rate,
            random_rate=random_rate, sentence_task=None, short_seq_prob=0.0, seed=seed,
            generator=generator,
        )
        self.special_ids = torch.tensor(sorted(set(special_token_ids)), dtype=torch.long)

    def segments(self, examples: list[dict[str, Any]]) -> Segments:
        """``[CLS] block [SEP]``; separators packed inside the block count as special."""
        seg = super().segments(examples)
        inner = torch.isin(seg.input_ids, self.special_ids) & seg.attention_mask.bool()
        return dataclasses.replace(seg, special_mask=seg.special_mask | inner)

    def select(self, candidates: Tensor, word_ids: Tensor) -> Tensor:
        """fairseq's ``int(p * n + U[0, 1))`` positions per row, or Bernoulli(p) per token."""
        if not self.exact_count:
            return masking.select_bernoulli(candidates, self.mlm_probability, self.generator)
        n = candidates.sum(dim=1).to(torch.float64)
        noise = torch.rand(n.shape, generator=self.generator, dtype=torch.float64)
        counts = torch.floor(self.mlm_probability * n + noise).long()
        counts = torch.minimum(counts, candidates.sum(dim=1))
        return masking.select_exact(candidates, counts, self.generator)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        batch = super().__call__(examples)
        batch.pop("token_type_ids")  # RoBERTa has a single segment and no token types
        return batch
