"""RoBERTa's collator: dynamic masking (15%, 80/10/10) of full packed blocks, no NSP.

Follows fairseq ``examples/roberta`` (``MaskTokensDataset``):

* **dynamic masking**: the mask is drawn when the batch is built, a fresh one on every pass
  (plmkit's loader reseeds the collator per ``(seed, epoch, batch)``: reproducible, resumable);
* **budget**: fairseq's exact count ``int(0.15 * n + rand)`` per sequence (random rounding:
  15% on average, no cap unless ``masking.max_predictions``), or with ``masking.exact_count``
  off Bernoulli(0.15) per token as Hugging Face's ``DataCollatorForLanguageModeling``;
  ``n`` counts the maskable tokens (fairseq's counts ``<s>``/``</s>`` too);
* **FULL-SENTENCES**: whole sentences packed across documents (``packing = "sentences"``), input
  ``[CLS] block [SEP]`` (fairseq's ``<s> x </s>``), no token types, no sentence task.

The document separators inside a block are never selected (fairseq can mask those ``</s>``;
predicting a separator teaches nothing). Only the count rule differs from
:class:`~plmkit.mlm.MlmCollator`. Importable without Lightning.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from plmkit.mlm import MlmCollator


class RobertaCollator(MlmCollator):
    """Dynamically masked single-segment MLM batches: input_ids, attention_mask, labels.

    Args: ``tokenizer``, ``max_length``, ``masking``, ``seed`` as
    :class:`~plmkit.mlm.MlmCollator`.
    """

    def __init__(self, tokenizer: Any, max_length: int = 512, **kwargs: Any) -> None:
        super().__init__(tokenizer, max_length, sentence_task=None, short_seq_prob=0.0,
                         skip_inner_specials=True, **kwargs)

    def budgets(self, candidates: Tensor, num_tokens: Tensor | None = None) -> Tensor:
        """fairseq's ``int(p * n + U[0, 1))`` for the ``n`` candidates of each row."""
        n = candidates.sum(dim=1)
        noise = torch.rand(n.shape, generator=self.generator, dtype=torch.float64)
        counts = torch.floor(self.masking.probability * n.double() + noise).long()
        return counts.clamp(max=self.masking.max_predictions or self.max_length).minimum(n)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        batch = super().__call__(examples)
        batch.pop("token_type_ids")  # RoBERTa has a single segment and no token types
        return batch
