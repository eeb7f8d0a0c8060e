"""The RoBERTa objective: dynamically masked LM on full packed blocks (``RobertaForMaskedLM``)."""

from __future__ import annotations

from torch import Tensor, nn
from transformers import RobertaConfig, RobertaForMaskedLM
from transformers.models.roberta.modeling_roberta import RobertaLayer

from plmkit.encoder import EncoderObjective
from plmkit.heads import mlm_loss
from plmkit.plugins.roberta.collator import RobertaCollator


class RobertaObjective(EncoderObjective):
    """RoBERTa: dynamic masking (15%, 80/10/10), FULL-SENTENCES packing, no NSP (Liu+ 2019).

    ``encoder.max_position_embeddings`` is the longest input; RoBERTa numbers positions from
    ``pad_token_id + 1``, so the position table has two more rows (514 for inputs of 512, as
    in the released models).
    """

    objective_name = "roberta"
    packing = "sentences"  # FULL-SENTENCES: whole sentences, crossing documents
    collator_class = RobertaCollator
    block_class = RobertaLayer

    def build_model(self) -> nn.Module:
        tok = self.tokenizer
        assert tok is not None
        # positions run from pad_id + 1 to pad_id + max_length (HF create_position_ids)
        positions = self.encoder.hf_kwargs(self.max_length)["max_position_embeddings"]
        return RobertaForMaskedLM(self.hf_config(
            RobertaConfig, max_position_embeddings=positions + max(2, tok.pad_token_id + 1),
            bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, type_vocab_size=1,
        ))

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        model: RobertaForMaskedLM = self.model  # type: ignore[assignment]
        hidden = model.roberta(batch["input_ids"], batch["attention_mask"], return_dict=False)[0]
        return mlm_loss(hidden, batch["labels"], model.lm_head)
