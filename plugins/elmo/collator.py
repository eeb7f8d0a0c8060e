"""ELMo's collator: ``[CLS] tokens [SEP]`` rows with next-token and previous-token targets.

``[CLS]`` plays bilm-tf's ``<S>`` and ``[SEP]`` its ``</S>``. For a row ``x_0 .. x_{n+1}``
(the two markers included) the forward LM at position ``t`` predicts ``x_{t+1}``
(``forward_labels``) and the backward LM predicts ``x_{t-1}`` (``backward_labels``); -100
where there is no such token and on padding. Rows are padded on the right. Nothing is random,
but the class keeps the :class:`plmkit.collator.Collator` contract (seed, ``reseed``).
Importable without Lightning.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from plmkit.collator import IGNORE_INDEX, Collator
from plmkit.config import SpecialTokens


class ElmoCollator(Collator):
    """Bidirectional LM batches: ``input_ids``, ``attention_mask``, forward/backward labels.

    Args:
        tokenizer: a Hugging Face tokenizer with [CLS]/[SEP]/[PAD] (begin/end of a row, pad),
            or its :class:`~plmkit.config.SpecialTokens`.
        max_length: the longest row, both markers included; longer examples are cut.
        seed: seed of the collator's generator (unused: the batches are deterministic).
    """

    num_special_tokens = 2  # [CLS] tokens [SEP]

    def __init__(
        self,
        tokenizer: Any,
        max_length: int = 128,
        seed: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(seed, generator)
        if max_length < 3:
            raise ValueError(f"max_length must leave room for [CLS] and [SEP], got {max_length}")
        tokens = SpecialTokens.from_tokenizer(tokenizer)
        self.cls_id, self.sep_id, self.pad_id = tokens.cls, tokens.sep, tokens.pad
        self.max_length = max_length

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        budget = self.max_length - self.num_special_tokens
        raw = self.pad(examples, "input_ids", self.pad_id)[:, :budget]
        lengths = torch.tensor([min(len(e["input_ids"]), budget) for e in examples])
        batch, width = raw.shape
        rows = torch.arange(batch)
        total = lengths + 2
        input_ids = torch.full((batch, width + 2), self.pad_id, dtype=torch.long)
        input_ids[:, 0] = self.cls_id
        real = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
        input_ids[:, 1 : width + 1] = torch.where(real, raw, self.pad_id)
        input_ids[rows, lengths + 1] = self.sep_id
        positions = torch.arange(width + 2).unsqueeze(0)
        attention = positions < total.unsqueeze(1)
        ignore = torch.full((batch, 1), IGNORE_INDEX, dtype=torch.long)
        forward = torch.cat([input_ids[:, 1:], ignore], dim=1)
        forward = forward.masked_fill(positions >= (total - 1).unsqueeze(1), IGNORE_INDEX)
        backward = torch.cat([ignore, input_ids[:, :-1]], dim=1)
        backward = backward.masked_fill(~attention | (positions == 0), IGNORE_INDEX)
        return {
            "input_ids": input_ids,
            "attention_mask": attention.long(),
            "forward_labels": forward,
            "backward_labels": backward,
        }
