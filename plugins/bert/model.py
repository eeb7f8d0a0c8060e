"""The BERT objective: masked LM + next-sentence prediction on ``BertForPreTraining``."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from transformers import BertConfig, BertForPreTraining
from transformers.models.bert.modeling_bert import BertLayer

from plmkit.config import EncoderConfig
from plmkit.encoder import EncoderObjective
from plmkit.errors import PlmkitError
from plmkit.heads import classification_loss, masked_lm_loss
from plmkit.objective import Packing
from plmkit.plugins.bert.collator import BertCollator


def bert_config(encoder: EncoderConfig, tokenizer: Any, max_length: int = 0) -> BertConfig:
    """The ``BertConfig`` of ``encoder`` sized to ``tokenizer`` (positions: at least
    ``max_length``), for the methods that train a BERT-architecture encoder."""
    config = BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                        **encoder.hf_kwargs(max_length))
    config._attn_implementation = encoder.attention
    return config


class BertObjective(EncoderObjective):
    """BERT: masked LM (15%, 80/10/10) + next-sentence prediction (Devlin et al. 2019)."""

    objective_name = "bert"
    packing = "document"

    def __init__(
        self,
        nsp: bool = True,
        short_seq_prob: float = 0.1,
        packing: Packing = "document",
        **kwargs: Any,
    ) -> None:
        """
        Args:
            nsp: train next-sentence prediction.
            short_seq_prob: probability of a shorter random sequence length.
            packing: ``document`` (default, the original: a block never crosses a document,
                so short documents leave padding) or ``stream`` (MLM only, ``nsp: false``:
                documents concatenated with ``[SEP]`` between them and cut into full blocks,
                RoBERTa's FULL-SENTENCES; no padding, the layout of Hugging Face's
                ``run_mlm.py`` ``group_texts``). Separators inside a block are never masked.
        """
        super().__init__(**kwargs)
        self.nsp, self.short_seq_prob = nsp, short_seq_prob
        if packing not in ("document", "stream"):
            raise PlmkitError(f"model.packing must be 'document' or 'stream', got {packing!r}")
        if packing == "stream" and nsp:
            raise PlmkitError("model.packing 'stream' mixes documents in a block: it needs "
                              "model.nsp false (NSP pairs come from one document)")
        self.packing = packing  # read by the DataModule (instance value over the class's)

    def build_model(self) -> nn.Module:
        return BertForPreTraining(bert_config(self.encoder, self.tokenizer, self.max_length))

    def build_collator(self, seed: int = 0) -> BertCollator:
        return BertCollator(
            self.tokenizer,
            max_length=self.max_length,
            masking=self.masking,
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
