"""The ALBERT objective: n-gram MLM + sentence-order prediction on ``AlbertForPreTraining``."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from transformers import AlbertConfig, AlbertForPreTraining
from transformers.models.albert.modeling_albert import AlbertLayer

from plmkit.heads import classification_loss, masked_lm_loss
from plmkit.objective import Objective
from plmkit.plugins.albert.collator import AlbertCollator


class AlbertObjective(Objective):
    """ALBERT: n-gram MLM (n <= 3) + sentence order, factorized embeddings, shared layers."""

    objective_name = "albert"
    packing = "document"

    def __init__(
        self,
        embedding_size: int = 128,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        intermediate_size: int = 3072,
        num_hidden_groups: int = 1,
        hidden_act: str = "gelu_new",
        dropout: float = 0.0,
        max_position_embeddings: int = 512,
        mlm_probability: float = 0.15,
        max_predictions: int | None = None,
        max_ngram: int = 3,
        sop: bool = True,
        short_seq_prob: float = 0.1,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            embedding_size: factorized embedding width E (the vocabulary is embedded in E,
                then projected to hidden_size).
            hidden_size: width of the encoder.
            num_layers: number of layer applications (the layers share their parameters).
            num_heads: attention heads per layer.
            intermediate_size: feed-forward width.
            num_hidden_groups: groups of shared parameters (1: all layers share one).
            hidden_act: activation of the feed-forward layers and the MLM head.
            dropout: dropout of hidden states and attention (0 as in ALBERT v2; v1 used 0.1).
            max_position_embeddings: learned positions (at least data.max_length).
            mlm_probability: fraction of tokens to predict.
            max_predictions: cap on the per-sequence budget (default ceil(max_length * p);
                the released ALBERT runs used 20 at length 512).
            max_ngram: the longest masked n-gram, in words.
            sop: train sentence-order prediction.
            short_seq_prob: probability of a shorter random sequence length.
        """
        super().__init__(**kwargs)
        self.embedding_size, self.hidden_size = embedding_size, hidden_size
        self.num_layers, self.num_heads = num_layers, num_heads
        self.intermediate_size, self.num_hidden_groups = intermediate_size, num_hidden_groups
        self.hidden_act, self.dropout = hidden_act, dropout
        self.max_position_embeddings = max_position_embeddings
        self.mlm_probability, self.max_predictions = mlm_probability, max_predictions
        self.max_ngram, self.sop, self.short_seq_prob = max_ngram, sop, short_seq_prob

    def block_length(self, max_length: int) -> int:
        return max_length - (3 if self.sop else 2)

    def build_model(self) -> nn.Module:
        assert self.tokenizer is not None
        config = AlbertConfig(
            vocab_size=len(self.tokenizer),
            embedding_size=self.embedding_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_hidden_groups=self.num_hidden_groups,
            inner_group_num=1,
            num_attention_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            hidden_act=self.hidden_act,
            hidden_dropout_prob=self.dropout,
            attention_probs_dropout_prob=self.dropout,
            max_position_embeddings=max(self.max_position_embeddings, self.max_length),
            type_vocab_size=2,
            pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=self.tokenizer.cls_token_id,
            eos_token_id=self.tokenizer.sep_token_id,
        )
        config._attn_implementation = "sdpa"
        return AlbertForPreTraining(config)

    def build_collator(self, seed: int = 0) -> AlbertCollator:
        return AlbertCollator.from_tokenizer(
            self.tokenizer,
            max_length=self.max_length,
            mlm_probability=self.mlm_probability,
            max_predictions=self.max_predictions,
            max_ngram=self.max_ngram,
            sop=self.sop,
            short_seq_prob=self.short_seq_prob,
            seed=seed,
        )

    def block_classes(self) -> tuple[type[nn.Module], ...]:
        return (AlbertLayer,)

    def flops_per_token(self, seq_len: int) -> float:
        """6N + attention, counting each shared layer group once per time it is applied."""
        assert self.model is not None
        shared = self.model.albert.encoder.albert_layer_groups  # type: ignore[union-attr]
        group_params = sum(p.numel() for p in shared.parameters())
        repeats = self.num_layers / self.num_hidden_groups
        return super().flops_per_token(seq_len) + 6.0 * group_params * (repeats - 1)

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        model: AlbertForPreTraining = self.model  # type: ignore[assignment]
        hidden, pooled = model.albert(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
            return_dict=False,
        )[:2]
        mlm_loss, mlm_acc, _ = masked_lm_loss(hidden, batch["labels"], model.predictions)
        metrics = {"mlm_loss": mlm_loss.detach(), "mlm_acc": mlm_acc}
        loss = mlm_loss
        if "sentence_order_label" in batch:
            logits = model.sop_classifier(pooled)
            sop_loss, sop_acc = classification_loss(logits, batch["sentence_order_label"])
            metrics.update(sop_loss=sop_loss.detach(), sop_acc=sop_acc)
            loss = loss + sop_loss
        return loss, metrics
