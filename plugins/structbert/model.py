"""The StructBERT objective: MLM + word structural (WSO) + sentence structural (SSO) objectives.

Model: ``BertForPreTraining`` whose ``cls.seq_relationship`` is replaced by a **3-way**
``Linear`` (next / previous / other document). The WSO predictions **share the MLM output
layer** (``cls.predictions``: transform + tied embedding matrix + bias), as the paper says
(the shuffled positions are predicted "with the same output layer" as masked tokens, a
softmax over the vocabulary); the three losses are added with equal weights (the paper's
joint objective). ``wso_weight`` / ``sso_weight`` are there to ablate.

Export: ``save_pretrained`` of that model. ``AutoModel`` (``BertModel``) and
``AutoModelForMaskedLM`` load it as they are; ``AutoModelForPreTraining`` expects a 2-way
``seq_relationship`` and needs ``ignore_mismatched_sizes=True`` (the saved 3-way head is then
dropped). The config carries ``sso_num_labels = 3`` as a reminder.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from transformers import BertForPreTraining

from plmkit.collator import IGNORE_INDEX
from plmkit.heads import classification_loss, masked_lm_loss
from plmkit.plugins.bert.model import BertObjective
from plmkit.plugins.structbert.collator import StructBertCollator


class StructBertObjective(BertObjective):
    """StructBERT: MLM (15%) + shuffled-trigram recovery (5%) + 3-way SSO (Wang+ 2019)."""

    objective_name = "structbert"
    packing = "document"

    def __init__(
        self,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        intermediate_size: int = 3072,
        dropout: float = 0.1,
        max_position_embeddings: int = 512,
        mlm_probability: float = 0.15,
        exact_count: bool = True,
        max_predictions: int | None = None,
        short_seq_prob: float = 0.1,
        wso_probability: float = 0.05,
        wso_ngram: int = 3,
        wso_weight: float = 1.0,
        sso: bool = True,
        sso_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            hidden_size: width of the encoder.
            num_layers: number of transformer layers.
            num_heads: attention heads per layer.
            intermediate_size: feed-forward width.
            dropout: dropout of hidden states and attention.
            max_position_embeddings: learned positions (at least data.max_length).
            mlm_probability: fraction of tokens to predict (BERT masking, 80/10/10).
            exact_count: exact per-sequence budget like BERT's original (else Bernoulli).
            max_predictions: cap on the exact budget (default ceil(max_length * p)).
            short_seq_prob: probability of a shorter random sequence length.
            wso_probability: fraction of the unmasked trigrams that are shuffled (paper 5%).
            wso_ngram: length K of a shuffled n-gram (paper: 3).
            wso_weight: weight of the word structural loss (paper: 1).
            sso: train the 3-way sentence structural objective (else single segments).
            sso_weight: weight of the sentence structural loss (paper: 1).
        """
        super().__init__(
            hidden_size=hidden_size,
            num_layers=num_layers,
            num_heads=num_heads,
            intermediate_size=intermediate_size,
            dropout=dropout,
            max_position_embeddings=max_position_embeddings,
            mlm_probability=mlm_probability,
            exact_count=exact_count,
            max_predictions=max_predictions,
            whole_word=False,
            nsp=sso,
            short_seq_prob=short_seq_prob,
            **kwargs,
        )
        # ``nsp`` / ``whole_word`` are BertObjective arguments this objective sets itself:
        # keep them out of the saved hyperparameters (the checkpoint rebuilds from those)
        for name in ("nsp", "whole_word"):
            self.hparams.pop(name, None)
        self.wso_probability, self.wso_ngram, self.wso_weight = (
            wso_probability, wso_ngram, wso_weight,
        )
        self.sso, self.sso_weight = sso, sso_weight

    def build_model(self) -> nn.Module:
        model: BertForPreTraining = super().build_model()  # type: ignore[assignment]
        if self.sso:
            head = nn.Linear(model.config.hidden_size, 3)
            model._init_weights(head)
            model.cls.seq_relationship = head
            model.config.sso_num_labels = 3
        return model

    def build_collator(self, seed: int = 0) -> StructBertCollator:
        return StructBertCollator.from_tokenizer(
            self.tokenizer,
            max_length=self.max_length,
            mlm_probability=self.mlm_probability,
            exact_count=self.exact_count,
            max_predictions=self.max_predictions,
            sentence_task="sso" if self.sso else None,
            short_seq_prob=self.short_seq_prob,
            wso_probability=self.wso_probability,
            wso_ngram=self.wso_ngram,
            seed=seed,
        )

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        model: BertForPreTraining = self.model  # type: ignore[assignment]
        hidden, pooled = model.bert(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
            return_dict=False,
        )[:2]
        head = model.cls.predictions
        mlm_loss, mlm_acc, _ = masked_lm_loss(hidden, batch["labels"], head)
        metrics = {"mlm_loss": mlm_loss.detach(), "mlm_acc": mlm_acc}
        loss = mlm_loss
        wso_labels = batch.get("wso_labels")
        if wso_labels is not None and bool((wso_labels != IGNORE_INDEX).any()):
            wso_loss, wso_acc, _ = masked_lm_loss(hidden, wso_labels, head)  # shared head
            metrics.update(wso_loss=wso_loss.detach(), wso_acc=wso_acc)
            loss = loss + self.wso_weight * wso_loss
        if "sso_label" in batch:
            logits = model.cls.seq_relationship(pooled)
            sso_loss, sso_acc = classification_loss(logits, batch["sso_label"])
            metrics.update(sso_loss=sso_loss.detach(), sso_acc=sso_acc)
            loss = loss + self.sso_weight * sso_loss
        return loss, metrics
