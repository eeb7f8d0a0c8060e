"""The ELMo objective: forward and backward LMs sharing the token encoder and the softmax."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from plmkit.collator import IGNORE_INDEX
from plmkit.objective import Objective
from plmkit.plugins.elmo.bilm import (
    DEFAULT_FILTERS,
    ElmoBiLM,
    ElmoConfig,
    ElmoLstmLayer,
    char_table,
)
from plmkit.plugins.elmo.collator import ElmoCollator


class ElmoObjective(Objective):
    """ELMo: a biLM with a character-CNN token encoder (Peters et al. 2018, allenai/bilm-tf).

    Loss: the mean of the forward LM's and the backward LM's cross-entropy, each a full
    softmax over the tokenizer vocabulary (bilm-tf samples 8192 negatives from an 800k-word
    vocabulary; at plmkit's vocabulary sizes the exact softmax is affordable). Rows are
    ``[CLS] tokens [SEP]`` cut from a stream of documents.
    """

    objective_name = "elmo"
    packing = "stream"

    def __init__(
        self,
        char_embedding_dim: int = 16,
        max_characters_per_token: int = 50,
        filters: list[list[int]] | None = None,
        num_highway: int = 2,
        projection_dim: int = 512,
        lstm_dim: int = 4096,
        num_layers: int = 2,
        cell_clip: float | None = 3.0,
        proj_clip: float | None = 3.0,
        clip: bool = True,
        residual: bool = True,
        dropout: float = 0.1,
        activation: str = "relu",
        **kwargs: Any,
    ) -> None:
        """
        Args:
            char_embedding_dim: character embedding size (16).
            max_characters_per_token: characters per token, begin/end markers included (50).
            filters: ``[width, count]`` of the character convolutions (default: ELMo's
                ``[[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]]``).
            num_highway: highway layers after the character CNN (2; Small ELMo: 1).
            projection_dim: token representation and LSTM projection size (512).
            lstm_dim: LSTM cell size (4096).
            num_layers: LSTM layers per direction (2).
            cell_clip: clip of the LSTM cell state (3).
            proj_clip: clip of the projected LSTM output (3).
            clip: run the clipped LSTM cell (a step loop over time); ``false`` uses
                ``nn.LSTM(proj_size=...)`` without clipping, much faster on GPUs.
            residual: residual connection between LSTM layers.
            dropout: dropout on the LSTM inputs and before the softmax (0.1).
            activation: character CNN activation (``relu``).
        """
        super().__init__(**kwargs)
        self.bilm_config = ElmoConfig(
            char_embedding_dim=char_embedding_dim,
            max_characters_per_token=max_characters_per_token,
            filters=[list(f) for f in (filters or DEFAULT_FILTERS)],
            num_highway=num_highway,
            projection_dim=projection_dim,
            lstm_dim=lstm_dim,
            num_layers=num_layers,
            cell_clip=cell_clip,
            proj_clip=proj_clip,
            clip=clip,
            residual=residual,
            dropout=dropout,
            activation=activation,
        )

    def build_model(self) -> nn.Module:
        assert self.tokenizer is not None
        chars, num_chars = char_table(self.tokenizer, self.bilm_config.max_characters_per_token)
        self.bilm_config.vocab_size = len(self.tokenizer)
        self.bilm_config.num_chars = num_chars
        return ElmoBiLM(self.bilm_config, chars)

    def build_collator(self, seed: int = 0) -> ElmoCollator:
        return ElmoCollator(self.tokenizer, max_length=self.max_length, seed=seed)

    def block_classes(self) -> tuple[type[nn.Module], ...]:
        return (ElmoLstmLayer,)

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        model: ElmoBiLM = self.model  # type: ignore[assignment]
        out = model(batch["input_ids"], batch["attention_mask"])
        metrics: dict[str, Tensor] = {}
        losses = []
        for name, states, labels in (
            ("forward", out["forward"][-1], batch["forward_labels"]),
            ("backward", out["backward"][-1], batch["backward_labels"]),
        ):
            used = labels != IGNORE_INDEX
            logits = model.softmax(model.dropout(states[used]))
            loss = F.cross_entropy(logits.float(), labels[used])
            losses.append(loss)
            metrics[f"{name}_loss"] = loss.detach()
        loss = 0.5 * (losses[0] + losses[1])
        metrics["perplexity"] = loss.detach().exp()
        return loss, metrics

    def export(self, out_dir: str | Path, **options: Any) -> None:
        """Write ``config.json``, ``model.safetensors`` and the tokenizer files.

        Load them with ``plmkit.plugins.elmo.ElmoEmbedder.from_pretrained(out_dir)``.
        """
        model: ElmoBiLM = self.model  # type: ignore[assignment]
        model.save_pretrained(out_dir)
        assert self.tokenizer is not None
        self.tokenizer.save_pretrained(str(out_dir))
