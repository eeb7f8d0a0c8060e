"""The RoBERTa objective: dynamically masked LM on full packed blocks (``RobertaForMaskedLM``)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from transformers import RobertaConfig, RobertaForMaskedLM
from transformers.models.roberta.modeling_roberta import RobertaLayer

from plmkit.heads import masked_lm_loss
from plmkit.objective import Objective
from plmkit.plugins.roberta.collator import RobertaCollator


class RobertaObjective(Objective):
    """RoBERTa: dynamic masking (15%, 80/10/10), FULL-SENTENCES packing, no NSP (Liu+ 2019)."""

    objective_name = "roberta"
    packing = "stream"

    def __init__(
        self,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        intermediate_size: int = 3072,
        dropout: float = 0.1,
        max_position_embeddings: int | None = None,
        mlm_probability: float = 0.15,
        exact_count: bool = True,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            hidden_size: width of the encoder.
            num_layers: number of transformer layers.
            num_heads: attention heads per layer.
            intermediate_size: feed-forward width.
            dropout: dropout of hidden states and attention.
            max_position_embeddings: learned positions; RoBERTa numbers positions from
                ``pad_token_id + 1``, so at least data.max_length + pad id + 1 are used
                (default data.max_length + 2, i.e. 514 at 512, as in the released models).
            mlm_probability: fraction of tokens to predict.
            exact_count: fairseq's exact count ``int(p * n + rand)`` per sequence
                (else Bernoulli(p) per token).
        """
        super().__init__(**kwargs)
        self.hidden_size, self.num_layers, self.num_heads = hidden_size, num_layers, num_heads
        self.intermediate_size, self.dropout = intermediate_size, dropout
        self.max_position_embeddings = max_position_embeddings
        self.mlm_probability, self.exact_count = mlm_probability, exact_count

    def block_length(self, max_length: int) -> int:
        return max_length - 2  # <s> block </s>

    def max_positions(self) -> int | None:
        """Two position slots go to the padding offset (514 positions: inputs of 512)."""
        if self.max_position_embeddings is None:
            return None  # the table is sized from data.max_length
        return self.max_position_embeddings - 2

    def build_model(self) -> nn.Module:
        assert self.tokenizer is not None
        pad_id = self.tokenizer.pad_token_id
        # positions run from pad_id + 1 to pad_id + max_length (HF create_position_ids)
        needed = max(self.max_length + 2, self.max_length + pad_id + 1)
        config = RobertaConfig(
            vocab_size=len(self.tokenizer),
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            hidden_dropout_prob=self.dropout,
            attention_probs_dropout_prob=self.dropout,
            max_position_embeddings=max(self.max_position_embeddings or 0, needed),
            type_vocab_size=1,
            pad_token_id=pad_id,
            bos_token_id=self.tokenizer.cls_token_id,
            eos_token_id=self.tokenizer.sep_token_id,
        )
        config._attn_implementation = "sdpa"
        return RobertaForMaskedLM(config)

    def build_collator(self, seed: int = 0) -> RobertaCollator:
        return RobertaCollator.from_tokenizer(
            self.tokenizer,
            max_length=self.max_length,
            mlm_probability=self.mlm_probability,
            exact_count=self.exact_count,
            seed=seed,
        )

    def block_classes(self) -> tuple[type[nn.Module], ...]:
        return (RobertaLayer,)

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        model: RobertaForMaskedLM = self.model  # type: ignore[assignment]
        hidden = model.roberta(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            return_dict=False,
        )[0]
        loss, accuracy, _ = masked_lm_loss(hidden, batch["labels"], model.lm_head)
        return loss, {"mlm_loss": loss.detach(), "mlm_acc": accuracy}
