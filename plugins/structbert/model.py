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
from plmkit.heads import mlm_loss, sentence_loss
from plmkit.plugins.bert.model import BertObjective
from plmkit.plugins.structbert.collator import StructBertCollator


class StructBertObjective(BertObjective):
    """StructBERT: MLM (15%) + shuffled-trigram recovery (5%) + 3-way SSO (Wang+ 2019)."""

    objective_name = "structbert"
    packing = "document"
    collator_class = StructBertCollator

    def __init__(
        self,
        wso_probability: float = 0.05,
        wso_ngram: int = 3,
        wso_weight: float = 1.0,
        sso: bool = True,
        sso_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            wso_probability: fraction of the unmasked trigrams that are shuffled (paper 5%).
            wso_ngram: length K of a shuffled n-gram (paper: 3).
            wso_weight: weight of the word structural loss (paper: 1).
            sso: train the 3-way sentence structural objective (else single segments).
            sso_weight: weight of the sentence structural loss (paper: 1).
        """
        super().__init__(nsp=sso, **kwargs)
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

    def collator_options(self) -> dict[str, Any]:
        return {**super().collator_options(), "sentence_task": "sso" if self.sso else None,
                "wso_probability": self.wso_probability, "wso_ngram": self.wso_ngram}

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        model: BertForPreTraining = self.model  # type: ignore[assignment]
        hidden, pooled = model.bert(batch["input_ids"], batch["attention_mask"],
                                    batch["token_type_ids"], return_dict=False)[:2]
        head = model.cls.predictions  # WSO shares the MLM output layer
        loss, metrics = mlm_loss(hidden, batch["labels"], head)
        wso_labels = batch.get("wso_labels")
        if wso_labels is not None and bool((wso_labels != IGNORE_INDEX).any()):
            wso, wso_metrics = mlm_loss(hidden, wso_labels, head, "wso")
            loss, metrics = loss + self.wso_weight * wso, {**metrics, **wso_metrics}
        if "sso_label" in batch:
            logits = model.cls.seq_relationship(pooled)
            sso, sso_metrics = sentence_loss(logits, batch["sso_label"], "sso")
            loss, metrics = loss + self.sso_weight * sso, {**metrics, **sso_metrics}
        return loss, metrics
