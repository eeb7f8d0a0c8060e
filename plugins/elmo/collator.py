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


class ElmoCollator(Collator):
    """Bidirectional LM batches: ``input_ids``, ``attention_mask``, forward/backward labels.

    Args:
        cls_token_id, sep_token_id, pad_token_id: special token ids (begin/end of a row, pad).
        max_length: the longest row, both markers included; longer examples are cut.
        seed: seed of the collator's generator (unused: the batches are deterministic).
    """

    def __init__(
        self,
        cls_token_id: int,
        sep_token_id: int,
        pad_token_id: int,
        max_length: int = 128,
        seed: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(seed, generator)
        if max_length < 3:
            raise ValueError(f"max_length must leave room for [CLS] and [SEP], got {max_length}")
        self.cls_id, self.sep_id, self.pad_id = cls_token_id, sep_token_id, pad_token_id
        self.max_length = max_length

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, **kwargs: Any) -> ElmoCollator:
        """Build from a Hugging Face tokenizer with [CLS]/[SEP]/[PAD] tokens."""
        return cls(
            cls_token_id=tokenizer.cls_token_id,
            sep_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **kwargs,
        )

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        budget = self.max_length - 2
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
