"""The XLNet objective: permutation LM with two-stream attention on ``XLNetLMHeadModel``."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from tokenizers import processors
from torch import Tensor, nn
from transformers import XLNetConfig, XLNetLMHeadModel
from transformers.models.xlnet.modeling_xlnet import XLNetLayer

from plmkit.collator import IGNORE_INDEX
from plmkit.objective import Objective
from plmkit.plugins.xlnet.collator import CLS_SEGMENT_ID, XLNetCollator


class XLNetObjective(Objective):
    """XLNet: permutation language modelling, span targets, partial prediction (Yang et al. 2019).

    The loss is the cross-entropy of the query stream at the predicted positions only:
    ``XLNetLMHeadModel`` with ``target_mapping`` runs the query stream on ``num_predict``
    slots, and the vocabulary projection is applied to the used slots alone. XLNet's
    relative attention has no SDPA path in transformers, so it runs as einsums.
    """

    objective_name = "xlnet"
    packing = "stream"
    shape_fields = {"vocab_size": None, "d_model": "hidden_size", "n_layer": "num_layers",
                    "n_head": "num_heads", "d_inner": "intermediate_size"}

    def __init__(
        self,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        intermediate_size: int = 3072,
        dropout: float = 0.1,
        activation: str = "gelu",
        partial_k: float = 6.0,
        num_predict: int | None = None,
        max_span: int = 5,
        alpha: int = 6,
        beta: int = 1,
        perm_size: int | None = None,
        whole_word: bool = True,
        mem_len: int = 0,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            hidden_size: width of the model (``d_model``).
            num_layers: number of transformer layers.
            num_heads: attention heads per layer.
            intermediate_size: feed-forward width (``d_inner``).
            dropout: dropout of hidden states and attention.
            activation: feed-forward activation (``gelu`` as in the released models).
            partial_k: partial prediction K: about 1/K of the tokens are predicted.
            num_predict: fixed targets per sequence instead of round(n / K) (85 at 512).
            max_span: longest target span (n in 1..max_span, p(n) ~ 1/n).
            alpha: context units per span unit (a span of n sits in n * alpha / beta).
            beta: see alpha.
            perm_size: permute the factorization order inside blocks of this many positions
                (default: the whole sequence).
            whole_word: target spans count whole words instead of tokens.
            mem_len: Transformer-XL memory length; 0 (default) turns memory off. With memory
                the hidden states of the previous training batch are kept (detached) and
                attended to. plmkit shuffles its blocks, so that memory holds unrelated text
                unless the data is served in order: leave it off for ordinary runs.
        """
        super().__init__(**kwargs)
        self.hidden_size, self.num_layers, self.num_heads = hidden_size, num_layers, num_heads
        self.intermediate_size, self.dropout, self.activation = (
            intermediate_size, dropout, activation,
        )
        self.partial_k, self.num_predict, self.max_span = partial_k, num_predict, max_span
        self.alpha, self.beta, self.perm_size = alpha, beta, perm_size
        self.whole_word, self.mem_len = whole_word, mem_len
        self._mems: tuple[Tensor, ...] | None = None

    def build_model(self) -> nn.Module:
        assert self.tokenizer is not None
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads")
        config = XLNetConfig(
            vocab_size=len(self.tokenizer),
            d_model=self.hidden_size,
            n_layer=self.num_layers,
            n_head=self.num_heads,
            d_inner=self.intermediate_size,
            ff_activation=self.activation,
            dropout=self.dropout,
            attn_type="bi",
            mem_len=self.mem_len or None,
            reuse_len=None,
            use_mems_train=self.mem_len > 0,
            use_mems_eval=False,
            bi_data=False,
            pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=self.tokenizer.cls_token_id,
            eos_token_id=self.tokenizer.sep_token_id,
        )
        return XLNetLMHeadModel(config)

    def build_collator(self, seed: int = 0) -> XLNetCollator:
        return XLNetCollator(
            self.tokenizer,
            max_length=self.max_length,
            partial_k=self.partial_k,
            num_predict=self.num_predict,
            max_span=self.max_span,
            alpha=self.alpha,
            beta=self.beta,
            perm_size=self.perm_size,
            whole_word=self.whole_word,
            seed=seed,
        )

    def block_classes(self) -> tuple[type[nn.Module], ...]:
        return (XLNetLayer,)

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        model: XLNetLMHeadModel = self.model  # type: ignore[assignment]
        use_mems = self.mem_len > 0 and self.training
        mems = self._mems if use_mems else None
        if mems is not None and mems[0].shape[1] != batch["input_ids"].shape[0]:
            mems = None  # the last, smaller batch of an epoch
        out = model.transformer(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
            perm_mask=batch["perm_mask"],
            target_mapping=batch["target_mapping"],
            mems=mems,
            use_mems=use_mems,
            return_dict=True,
        )
        if use_mems:
            self._mems = tuple(m.detach() for m in out.mems)
        labels = batch["labels"]
        used = labels != IGNORE_INDEX
        logits = model.lm_loss(out.last_hidden_state[used])  # (num_targets, vocab)
        targets = labels[used]
        loss = F.cross_entropy(logits.float(), targets)
        accuracy = (logits.argmax(dim=-1) == targets).float().mean()
        return loss, {"plm_loss": loss.detach(), "plm_acc": accuracy}

    def export(self, out_dir: str | Path, **options: Any) -> None:
        """Save the ``XLNetLMHeadModel`` and a tokenizer that encodes like training.

        The exported tokenizer writes XLNet's layout, ``A [SEP] [CLS]`` (pairs
        ``A [SEP] B [SEP] [CLS]``, token types 0, then 1, and 2 on ``[CLS]``), instead of
        plmkit's ``[CLS] A [SEP]``, and pads on the left as ``XLNetTokenizer`` does, so
        ``XLNetForSequenceClassification``, which pools the last position, pools ``[CLS]``.
        It returns ``token_type_ids`` (XLNet's relative segment encoding reads them);
        padding gets type 0 instead of the collator's 3, hidden by the attention mask.
        """
        assert self.tokenizer is not None
        self.export_model().save_pretrained(str(out_dir))
        tokenizer = copy.deepcopy(self.tokenizer)
        cls, sep = tokenizer.cls_token, tokenizer.sep_token
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"$A:0 {sep}:0 {cls}:{CLS_SEGMENT_ID}",
            pair=f"$A:0 {sep}:0 $B:1 {sep}:1 {cls}:{CLS_SEGMENT_ID}",
            special_tokens=[(sep, tokenizer.sep_token_id), (cls, tokenizer.cls_token_id)],
        )
        # saved only when set on the instance and in its init kwargs both
        layout = {"padding_side": "left",
                  "model_input_names": ["input_ids", "token_type_ids", "attention_mask"]}
        for key, value in layout.items():
            setattr(tokenizer, key, value)
            tokenizer.init_kwargs[key] = value
        tokenizer.save_pretrained(str(out_dir))

    def on_validation_start(self) -> None:
        self._mems = None
