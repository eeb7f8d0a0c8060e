"""The SpanBERT objective: span-masked LM + Span Boundary Objective on ``BertForMaskedLM``.

SpanBERT (Joshi et al. 2020) keeps BERT's architecture; the encoder and its MLM head are a
transformers ``BertForMaskedLM`` (exported with ``save_pretrained``, so ``AutoModel`` and
``AutoModelForMaskedLM`` load it). The Span Boundary Objective head, which no transformers
class has, is :class:`SpanBoundaryHead`, a small module beside it that is used in
pretraining only (as in facebookresearch/SpanBERT ``BertPairTargetPredictionHead``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import BertConfig, BertForMaskedLM
from transformers.models.bert.modeling_bert import BertLayer

from plmkit.collator import IGNORE_INDEX
from plmkit.encoder import EncoderObjective
from plmkit.heads import classification_loss, masked_lm_loss
from plmkit.plugins.spanbert.collator import SpanBertCollator


class SpanBoundaryHead(nn.Module):
    """Predicts a span token from the two tokens just outside the span and its position.

    ``y_i = MLP(concat(h[s-1], h[e+1], p[i-s]))`` with a learned relative position embedding
    ``p`` (``position_size`` = 200 dims, ``max_targets`` = 15 slots) and a 2-layer MLP (Linear
    -> GeLU -> LayerNorm, twice); the vocabulary logits are ``y_i @ E^T + bias`` with ``E``
    the (tied) input word embeddings, passed to :meth:`logits`.

    Args:
        hidden_size: width of the encoder.
        vocab_size: size of the vocabulary (the output bias).
        max_targets: relative position slots (targets per span).
        position_size: width of the relative position embedding.
        layer_norm_eps: LayerNorm epsilon (BERT's 1e-12).
        initializer_range: std of the normal initialisation (BERT's 0.02).
    """

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        max_targets: int = 15,
        position_size: int = 200,
        layer_norm_eps: float = 1e-12,
        initializer_range: float = 0.02,
    ) -> None:
        super().__init__()
        self.max_targets = max_targets
        self.position_embeddings = nn.Embedding(max_targets, position_size)
        self.mlp = nn.Sequential(
            nn.Linear(2 * hidden_size + position_size, hidden_size),
            nn.GELU(),
            nn.LayerNorm(hidden_size, eps=layer_norm_eps),
            nn.Linear(hidden_size, hidden_size),
            nn.GELU(),
            nn.LayerNorm(hidden_size, eps=layer_norm_eps),
        )
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=initializer_range)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, left: Tensor, right: Tensor, position: Tensor) -> Tensor:
        """(N, H) boundary states and (N,) relative positions -> (N, H) span-token states."""
        return self.mlp(torch.cat([left, right, self.position_embeddings(position)], dim=-1))

    def logits(self, states: Tensor, embeddings: Tensor) -> Tensor:
        """Vocabulary logits through the tied embedding matrix (V, H) plus the bias."""
        return F.linear(states, embeddings, self.bias)


class SpanBertModel(nn.Module):
    """``BertForMaskedLM`` (``mlm``) plus the pretraining-only ``SpanBoundaryHead`` (``sbo``)."""

    def __init__(self, config: BertConfig, max_targets: int = 15, position_size: int = 200
                 ) -> None:
        super().__init__()
        self.mlm = BertForMaskedLM(config)
        self.sbo = SpanBoundaryHead(
            config.hidden_size, config.vocab_size, max_targets, position_size,
            config.layer_norm_eps, config.initializer_range,
        )

    @property
    def config(self) -> BertConfig:
        return self.mlm.config

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        labels: Tensor,
        sbo_labels: Tensor,
        sbo_left: Tensor,
        sbo_right: Tensor,
        sbo_position: Tensor,
        token_type_ids: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The MLM and SBO losses and accuracies of one collated batch.

        Both heads run only at their target positions (gathered before the vocabulary
        projection); each loss is the mean over its targets, as the original criterion.
        """
        hidden = self.mlm.bert(input_ids, attention_mask, token_type_ids, return_dict=False)[0]
        mlm_loss, mlm_acc, _ = masked_lm_loss(hidden, labels, self.mlm.cls.predictions)
        out = {"mlm_loss": mlm_loss, "mlm_acc": mlm_acc}
        rows, cols = (sbo_labels != IGNORE_INDEX).nonzero(as_tuple=True)
        if rows.numel() == 0:
            # No span with two content boundaries in this batch: a zero loss that still
            # touches every SBO parameter, so DDP finds no unused parameter.
            dummy = self.sbo(hidden[:1, 0], hidden[:1, 0], torch.zeros(1, dtype=torch.long,
                                                                   device=hidden.device))
            zero = self.sbo.logits(dummy, self.mlm.get_input_embeddings().weight).sum() * 0.0
            out.update(sbo_loss=zero, sbo_acc=zero.detach())
            return out
        states = self.sbo(
            hidden[rows, sbo_left[rows, cols]],
            hidden[rows, sbo_right[rows, cols]],
            sbo_position[rows, cols],
        )
        logits = self.sbo.logits(states, self.mlm.get_input_embeddings().weight)
        out["sbo_loss"], out["sbo_acc"] = classification_loss(logits, sbo_labels[rows, cols])
        return out


class SpanBertObjective(EncoderObjective):
    """SpanBERT: geometric span masking + Span Boundary Objective, no NSP (Joshi et al. 2020)."""

    objective_name = "spanbert"
    packing = "document"
    collator_class = SpanBertCollator
    block_class = BertLayer

    def __init__(
        self,
        geometric_p: float = 0.2,
        min_span: int = 1,
        max_span: int = 10,
        truncate_last_span: bool = True,
        max_span_targets: int = 15,
        sbo_position_size: int = 200,
        sbo_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            geometric_p: geometric law of span lengths in words (the masking budget is
                ``ceil(masking.probability * n)`` tokens; spans always cover whole words).
            min_span: shortest span in words.
            max_span: longest span in words (the law is clipped and renormalised).
            truncate_last_span: cut the last span at the budget like the original.
            max_span_targets: SBO targets per span (relative position slots).
            sbo_position_size: width of the SBO relative position embedding.
            sbo_weight: weight of the SBO loss (loss = MLM + weight * SBO).
        """
        super().__init__(**kwargs)
        self.geometric_p, self.min_span, self.max_span = geometric_p, min_span, max_span
        self.truncate_last_span = truncate_last_span
        self.max_span_targets, self.sbo_position_size = max_span_targets, sbo_position_size
        self.sbo_weight = sbo_weight

    def build_model(self) -> SpanBertModel:
        # BERT's config (type_vocab_size 2, tied output embeddings: the defaults)
        config = self.hf_config(BertConfig)
        return SpanBertModel(config, self.max_span_targets, self.sbo_position_size)

    def collator_options(self) -> dict[str, Any]:
        return {"geometric_p": self.geometric_p, "min_span": self.min_span,
                "max_span": self.max_span, "max_span_targets": self.max_span_targets,
                "truncate_last_span": self.truncate_last_span}

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        model: SpanBertModel = self.model  # type: ignore[assignment]
        out = model(**batch)
        loss = out["mlm_loss"] + self.sbo_weight * out["sbo_loss"]
        metrics = {name: value.detach() for name, value in out.items()}
        return loss, metrics

    def export_model(self) -> nn.Module:
        """The ``BertForMaskedLM`` (the SBO head is for pretraining only)."""
        model: SpanBertModel = self.model  # type: ignore[assignment]
        return model.mlm
