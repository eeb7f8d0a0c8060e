"""The BERT objective: masked LM + next-sentence prediction on ``BertForPreTraining``."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from transformers import BertConfig, BertForPreTraining
from transformers.models.bert.modeling_bert import BertLayer

from plmkit.errors import PlmkitError
from plmkit.heads import classification_loss, masked_lm_loss
from plmkit.objective import Objective, Packing
from plmkit.plugins.bert.collator import BertCollator


def bert_config(objective: Any) -> BertConfig:
    """The ``BertConfig`` (SDPA attention) of a BERT-style encoder objective: its
    ``hidden_size``, ``num_layers``, ``num_heads``, ``intermediate_size``, ``dropout`` and
    ``max_position_embeddings`` (at least ``data.max_length``), sized to its tokenizer."""
    assert objective.tokenizer is not None
    config = BertConfig(
        vocab_size=len(objective.tokenizer),
        hidden_size=objective.hidden_size,
        num_hidden_layers=objective.num_layers,
        num_attention_heads=objective.num_heads,
        intermediate_size=objective.intermediate_size,
        hidden_dropout_prob=objective.dropout,
        attention_probs_dropout_prob=objective.dropout,
        max_position_embeddings=max(objective.max_position_embeddings, objective.max_length),
        pad_token_id=objective.tokenizer.pad_token_id,
    )
    config._attn_implementation = "sdpa"
    return config


class BertObjective(Objective):
    """BERT: masked LM (15%, 80/10/10) + next-sentence prediction (Devlin et al. 2019)."""

    objective_name = "bert"
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
        whole_word: bool = False,
        nsp: bool = True,
        short_seq_prob: float = 0.1,
        packing: Packing = "document",
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
            mlm_probability: fraction of tokens to predict.
            exact_count: exact per-sequence budget like the original (else Bernoulli).
            max_predictions: cap on the exact budget (default ceil(max_length * p)).
            whole_word: mask whole words.
            nsp: train next-sentence prediction.
            short_seq_prob: probability of a shorter random sequence length.
            packing: ``document`` (default, the original: a block never crosses a document,
                so short documents leave padding) or ``stream`` (MLM only, ``nsp: false``:
                documents concatenated with ``[SEP]`` between them and cut into full blocks,
                RoBERTa's FULL-SENTENCES; no padding, the layout of Hugging Face's
                ``run_mlm.py`` ``group_texts``). Separators inside a block are never masked.
        """
        super().__init__(**kwargs)
        self.hidden_size, self.num_layers, self.num_heads = hidden_size, num_layers, num_heads
        self.intermediate_size, self.dropout = intermediate_size, dropout
        self.max_position_embeddings = max_position_embeddings
        self.mlm_probability, self.exact_count = mlm_probability, exact_count
        self.max_predictions, self.whole_word = max_predictions, whole_word
        self.nsp, self.short_seq_prob = nsp, short_seq_prob
        if packing not in ("document", "stream"):
            raise PlmkitError(f"model.packing must be 'document' or 'stream', got {packing!r}")
        if packing == "stream" and nsp:
            raise PlmkitError("model.packing 'stream' mixes documents in a block: it needs "
                              "model.nsp false (NSP pairs come from one document)")
        self.packing = packing  # read by the DataModule (instance value over the class's)

    def block_length(self, max_length: int) -> int:
        return max_length - (3 if self.nsp else 2)

    def build_model(self) -> nn.Module:
        return BertForPreTraining(bert_config(self))

    def build_collator(self, seed: int = 0) -> BertCollator:
        return BertCollator.from_tokenizer(
            self.tokenizer,
            max_length=self.max_length,
            mlm_probability=self.mlm_probability,
            exact_count=self.exact_count,
            max_predictions=self.max_predictions,
            whole_word=self.whole_word,
            sentence_task="nsp" if self.nsp else None,
            short_seq_prob=self.short_seq_prob,
            skip_inner_specials=self.packing == "stream",
            seed=seed,
        )

    def block_classes(self) -> tuple[type[nn.Module], ...]:
        return (BertLayer,)

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        model: BertForPreTraining = self.model  # type: ignore[assignment]
        hidden, pooled = model.bert(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
            return_dict=False,
        )[:2]
        mlm_loss, mlm_acc, _ = masked_lm_loss(hidden, batch["labels"], model.cls.predictions)
        metrics = {"mlm_loss": mlm_loss.detach(), "mlm_acc": mlm_acc}
        loss = mlm_loss
        if "next_sentence_label" in batch:
            logits = model.cls.seq_relationship(pooled)
            nsp_loss, nsp_acc = classification_loss(logits, batch["next_sentence_label"])
            metrics.update(nsp_loss=nsp_loss.detach(), nsp_acc=nsp_acc)
            loss = loss + nsp_loss
        return loss, metrics
