"""The BERT objective: masked LM + next-sentence prediction on ``BertForPreTraining``."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from transformers import BertConfig, BertForPreTraining
from transformers.models.bert.modeling_bert import BertLayer

from plmkit.encoder import EncoderObjective
from plmkit.errors import PlmkitError
from plmkit.heads import mlm_and_sentence_loss
from plmkit.objective import Packing
from plmkit.plugins.bert.collator import BertCollator


class BertObjective(EncoderObjective):
    """BERT: masked LM (15%, 80/10/10) + next-sentence prediction (Devlin et al. 2019)."""

    objective_name = "bert"
    packing = "document"
    collator_class = BertCollator
    block_class = BertLayer

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
        return BertForPreTraining(self.hf_config(BertConfig))

    def collator_options(self) -> dict[str, Any]:
        return {"sentence_task": "nsp" if self.nsp else None,
                "short_seq_prob": self.short_seq_prob,
                "skip_inner_specials": self.packing == "stream"}

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        model: BertForPreTraining = self.model  # type: ignore[assignment]
        hidden, pooled = model.bert(batch["input_ids"], batch["attention_mask"],
                                    batch["token_type_ids"], return_dict=False)[:2]
        return mlm_and_sentence_loss(hidden, pooled, batch, model.cls.predictions,
                                     model.cls.seq_relationship, "next_sentence_label", "nsp")
