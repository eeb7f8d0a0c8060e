"""The ALBERT objective: n-gram MLM + sentence-order prediction on ``AlbertForPreTraining``."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from transformers import AlbertConfig, AlbertForPreTraining
from transformers.models.albert.modeling_albert import AlbertLayer

from plmkit.config import EncoderConfig
from plmkit.encoder import EncoderObjective
from plmkit.heads import classification_loss, masked_lm_loss
from plmkit.plugins.albert.collator import AlbertCollator


class AlbertObjective(EncoderObjective):
    """ALBERT: n-gram MLM (n <= 3) + sentence order, factorized embeddings, shared layers.

    The sentence-order head is a dense layer on the pooled ``[CLS]`` without dropout, as
    ``get_sentence_order_output`` in google-research/albert.
    """

    objective_name = "albert"
    packing = "document"

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
        config = AlbertConfig(
            vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id,
            eos_token_id=tok.sep_token_id, type_vocab_size=2, inner_group_num=1,
            embedding_size=self.encoder.embedding_size, num_hidden_groups=self.num_hidden_groups,
            hidden_act=self.hidden_act, **self.encoder.hf_kwargs(self.max_length),
        )
        config._attn_implementation = self.encoder.attention
        model = AlbertForPreTraining(config)
        # ALBERT's get_sentence_order_output is a plain dense layer; transformers' SOP head
        # applies classifier_dropout_prob, which the config keeps for fine-tuning classifiers
        model.sop_classifier.dropout = nn.Identity()
        return model

    def build_collator(self, seed: int = 0) -> AlbertCollator:
        return AlbertCollator(self.tokenizer, max_length=self.max_length, masking=self.masking,
                              max_ngram=self.max_ngram, sop=self.sop,
                              short_seq_prob=self.short_seq_prob, seed=seed)

    def block_classes(self) -> tuple[type[nn.Module], ...]:
        return (AlbertLayer,)

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        model: AlbertForPreTraining = self.model  # type: ignore[assignment]
        hidden, pooled = model.albert(batch["input_ids"], batch["attention_mask"],
                                      batch["token_type_ids"], return_dict=False)[:2]
        mlm_loss, mlm_acc, _ = masked_lm_loss(hidden, batch["labels"], model.predictions)
        metrics = {"mlm_loss": mlm_loss.detach(), "mlm_acc": mlm_acc}
        loss = mlm_loss
        if "sentence_order_label" in batch:
            logits = model.sop_classifier(pooled)
            sop_loss, sop_acc = classification_loss(logits, batch["sentence_order_label"])
            metrics.update(sop_loss=sop_loss.detach(), sop_acc=sop_acc)
            loss = loss + sop_loss
        return loss, metrics
