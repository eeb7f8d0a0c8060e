"""The ALBERT objective: n-gram MLM + sentence-order prediction on ``AlbertForPreTraining``."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from transformers import AlbertConfig, AlbertForPreTraining
from transformers.models.albert.modeling_albert import AlbertLayer

from plmkit.config import EncoderConfig
from plmkit.encoder import ENCODER_SHAPE_FIELDS, EncoderObjective
from plmkit.heads import mlm_and_sentence_loss
from plmkit.plugins.albert.collator import AlbertCollator


class AlbertObjective(EncoderObjective):
    """ALBERT: n-gram MLM (n <= 3) + sentence order, factorized embeddings, shared layers.

    The sentence-order head is a dense layer on the pooled ``[CLS]`` without dropout, as
    ``get_sentence_order_output`` in google-research/albert.
    """

    objective_name = "albert"
    packing = "document"
    collator_class = AlbertCollator
    shape_fields = {**ENCODER_SHAPE_FIELDS, "embedding_size": "encoder.embedding_size",
                    "num_hidden_groups": "num_hidden_groups", "inner_group_num": None}
    block_class = AlbertLayer

    def __init__(
        self,
        encoder: EncoderConfig = EncoderConfig(embedding_size=128, dropout=0.0),
        num_hidden_groups: int = 1,
        hidden_act: str = "gelu_new",
        max_ngram: int = 3,
        sop: bool = True,
        short_seq_prob: float = 0.1,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            encoder: the encoder's shape; ALBERT v2's defaults: ``embedding_size`` 128 (the
                vocabulary is embedded in E, then projected to the hidden size), dropout 0
                (v1 used 0.1).
            num_hidden_groups: groups of shared layer parameters (1: all layers share one);
                ``encoder.num_layers`` counts layer applications.
            hidden_act: activation of the feed-forward layers and the MLM head.
            max_ngram: the longest masked n-gram, in words.
            sop: train sentence-order prediction.
            short_seq_prob: probability of a shorter random sequence length.
        """
        super().__init__(encoder=encoder, **kwargs)
        self.num_hidden_groups, self.hidden_act = num_hidden_groups, hidden_act
        self.max_ngram, self.sop, self.short_seq_prob = max_ngram, sop, short_seq_prob

    def build_model(self) -> nn.Module:
        tok = self.tokenizer
        assert tok is not None
        model = AlbertForPreTraining(self.hf_config(
            AlbertConfig, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
            type_vocab_size=2, inner_group_num=1, embedding_size=self.encoder.embedding_size,
            num_hidden_groups=self.num_hidden_groups, hidden_act=self.hidden_act,
        ))
        # ALBERT's get_sentence_order_output is a plain dense layer; transformers' SOP head
        # applies classifier_dropout_prob, which the config keeps for fine-tuning classifiers
        model.sop_classifier.dropout = nn.Identity()
        return model

    def collator_options(self) -> dict[str, Any]:
        return {"max_ngram": self.max_ngram, "sop": self.sop,
                "short_seq_prob": self.short_seq_prob}

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        model: AlbertForPreTraining = self.model  # type: ignore[assignment]
        hidden, pooled = model.albert(batch["input_ids"], batch["attention_mask"],
                                      batch["token_type_ids"], return_dict=False)[:2]
        return mlm_and_sentence_loss(hidden, pooled, batch, model.predictions,
                                     model.sop_classifier, "sentence_order_label", "sop")
