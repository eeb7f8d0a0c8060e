"""The T5 objective: span corruption on ``T5ForConditionalGeneration`` (T5 v1.1 layout)."""

from __future__ import annotations

import copy
import functools
import math
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from tokenizers import processors
from torch import Tensor, nn
from transformers import T5Config, T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import T5Block

from plmkit.collator import IGNORE_INDEX
from plmkit.config import SpecialTokens
from plmkit.objective import Objective
from plmkit.plugins.t5.collator import (
    NUM_SENTINELS,
    T5SpanCorruptionCollator,
    random_spans_helper,
    sentinel_tokens,
)


def t5_inverse_sqrt(step: int, warmup: int) -> float:
    """T5's schedule as a factor of the peak ``lr``: ``sqrt(k / max(step, k))`` for ``k``
    warmup steps, so ``lr = 1 / sqrt(k)`` gives the paper's ``1 / sqrt(max(n, k))``: constant
    for the first ``k`` steps (no linear ramp), then the inverse square root."""
    k = max(warmup, 1)
    return math.sqrt(k / max(step, k))


class T5Objective(Objective):
    """T5 span corruption (Raffel et al. 2020) on ``T5ForConditionalGeneration``.

    Defaults are T5 v1.1 small: gated-GELU feed-forward, no dropout in pretraining, untied
    input and output embeddings, relative position buckets. ``data.max_length`` is the encoder
    (inputs) length; the raw block is longer (568 tokens for 512) and the targets are
    :attr:`target_length` tokens long.

    Blocks come from plmkit's ``stream`` packing, which puts the tokenizer's separator
    (``[SEP]``, also its EOS) between documents; T5's ``reduce_concat_tokens`` joins documents
    with nothing between them. The separator is corrupted like any other token.
    """

    objective_name = "t5"
    packing = "stream"
    shape_fields = {"vocab_size": None, "d_model": "d_model", "num_layers": "num_layers",
                    "num_decoder_layers": "num_decoder_layers", "num_heads": "num_heads",
                    "d_kv": "d_kv", "d_ff": "d_ff", "feed_forward_proj": "feed_forward_proj",
                    "relative_attention_num_buckets": "relative_attention_num_buckets",
                    "tie_word_embeddings": "tie_word_embeddings"}

    def __init__(
        self,
        d_model: int = 512,
        num_layers: int = 8,
        num_decoder_layers: int | None = None,
        num_heads: int = 6,
        d_kv: int = 64,
        d_ff: int = 1024,
        feed_forward_proj: str = "gated-gelu",
        dropout: float = 0.0,
        tie_word_embeddings: bool = False,
        relative_attention_num_buckets: int = 32,
        relative_attention_max_distance: int = 128,
        noise_density: float = 0.15,
        mean_noise_span_length: float = 3.0,
        optimizer: Literal["adamw", "adafactor"] = "adamw",
        **kwargs: Any,
    ) -> None:
        """
        Args:
            d_model: width of encoder and decoder.
            num_layers: encoder layers (and decoder layers unless ``num_decoder_layers``).
            num_decoder_layers: decoder layers (default: ``num_layers``).
            num_heads: attention heads.
            d_kv: width of one attention head (64 in every T5 size).
            d_ff: feed-forward width.
            feed_forward_proj: ``gated-gelu`` (v1.1) or ``relu`` (original T5).
            dropout: dropout rate (0 for v1.1 pretraining).
            tie_word_embeddings: share input embeddings and LM head (v1.0: yes; v1.1: no).
            relative_attention_num_buckets: relative-position buckets.
            relative_attention_max_distance: longest distinguished relative distance.
            noise_density: fraction of tokens corrupted.
            mean_noise_span_length: mean length of a corrupted span.
            optimizer: ``adamw`` (the core's) or ``adafactor`` (``torch.optim.Adafactor``,
                T5's optimizer: factored second moments, no momentum, updates scaled by
                the parameter RMS); both follow ``optim.lr`` and ``optim.schedule``, whose
                ``inverse_sqrt`` is T5's: ``lr`` for the first ``optim.warmup_steps``
                steps (no ramp), then ``lr * sqrt(warmup_steps / step)``.
        """
        super().__init__(**kwargs)
        self.d_model, self.num_layers, self.num_heads = d_model, num_layers, num_heads
        self.num_decoder_layers = num_decoder_layers
        self.d_kv, self.d_ff, self.feed_forward_proj = d_kv, d_ff, feed_forward_proj
        self.dropout, self.tie_word_embeddings = dropout, tie_word_embeddings
        self.relative_attention_num_buckets = relative_attention_num_buckets
        self.relative_attention_max_distance = relative_attention_max_distance
        self.noise_density, self.mean_noise_span_length = noise_density, mean_noise_span_length
        if optimizer not in ("adamw", "adafactor"):
            raise ValueError(f"optimizer must be 'adamw' or 'adafactor', got '{optimizer}'")
        self.optimizer_name = optimizer

    # ------------------------------------------------------------------ lengths and tokens
    def block_length(self, max_length: int) -> int:
        """Raw tokens whose corruption fills ``max_length`` inputs (512 -> 568, 128 -> 141).

        Longer than ``max_length``, unlike the core's default (``max_length`` minus the
        collator's special tokens): span corruption replaces every noise span by one sentinel.
        """
        return random_spans_helper(max_length, self.noise_density, self.mean_noise_span_length)[0]

    @property
    def target_length(self) -> int:
        """Length of the targets (EOS included) for ``max_length`` inputs (512 -> 114)."""
        return random_spans_helper(
            self.max_length, self.noise_density, self.mean_noise_span_length
        )[1]

    def special_tokens(self) -> list[str]:
        """The 100 sentinels, ``<extra_id_99>`` first: appended in this order at the top of
        the vocabulary, ``<extra_id_0>`` gets ``vocab_size - 1``, ``<extra_id_1>``
        ``vocab_size - 2`` ... as in T5."""
        return list(reversed(sentinel_tokens(NUM_SENTINELS)))

    def _eos_id(self) -> int:
        return SpecialTokens.from_tokenizer(self.tokenizer).eos  # type: ignore[return-value]

    # ------------------------------------------------------------------------ the model
    def build_model(self) -> nn.Module:
        assert self.tokenizer is not None
        pad = self.tokenizer.pad_token_id
        config = T5Config(
            vocab_size=len(self.tokenizer),
            d_model=self.d_model,
            d_kv=self.d_kv,
            d_ff=self.d_ff,
            num_layers=self.num_layers,
            num_decoder_layers=self.num_decoder_layers,
            num_heads=self.num_heads,
            relative_attention_num_buckets=self.relative_attention_num_buckets,
            relative_attention_max_distance=self.relative_attention_max_distance,
            dropout_rate=self.dropout,
            feed_forward_proj=self.feed_forward_proj,
            tie_word_embeddings=self.tie_word_embeddings,
            pad_token_id=pad,
            eos_token_id=self._eos_id(),
            decoder_start_token_id=pad,  # as in T5: the decoder starts from the pad id
            use_cache=False,
        )
        if config.dense_act_fn == "gelu_new":
            # the same tanh-approximated GELU as one fused kernel (about 10% faster on CPU)
            config.dense_act_fn = "gelu_pytorch_tanh"
        config._attn_implementation = "sdpa"
        model = T5ForConditionalGeneration(config)
        if not self.tie_word_embeddings:
            # Mesh TensorFlow's untied "logits" dense layer (T5 v1.1) uses the default
            # fan-in variance scaling, std d_model^-0.5; transformers draws it with std 1.0,
            # which starts training at a loss near 70 instead of ln(vocab).
            with torch.no_grad():
                model.lm_head.weight.normal_(0.0, self.d_model**-0.5)
        return model

    def build_collator(self, seed: int = 0) -> T5SpanCorruptionCollator:
        return T5SpanCorruptionCollator(
            self.tokenizer,
            input_length=self.max_length,
            noise_density=self.noise_density,
            mean_noise_span_length=self.mean_noise_span_length,
            seed=seed,
        )

    def block_classes(self) -> tuple[type[nn.Module], ...]:
        return (T5Block,)

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        model: T5ForConditionalGeneration = self.model  # type: ignore[assignment]
        labels = batch["labels"]
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            # labels shifted right, starting from decoder_start_token_id (= pad), -100 -> pad
            decoder_input_ids=model._shift_right(labels),
            use_cache=False,
        ).logits
        # full blocks have no padded target: no boolean gather (its backward is a scatter)
        loss = F.cross_entropy(
            logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX
        )
        with torch.no_grad():
            selected = labels != IGNORE_INDEX
            accuracy = (logits.argmax(dim=-1) == labels)[selected].float().mean()
        return loss, {"accuracy": accuracy}

    # ------------------------------------------------------------------------ optimizer
    def configure_optimizers(self) -> Any:
        """The core's AdamW or Adafactor; ``inverse_sqrt`` is T5's schedule
        (:func:`t5_inverse_sqrt`), any other schedule the core's."""
        t5_schedule = self.optim.schedule == "inverse_sqrt"
        with warnings.catch_warnings():
            if t5_schedule:  # no ramp to shorten: a run shorter than warmup stays at lr
                warnings.filterwarnings("ignore", message="warmup_steps=")
            config = super().configure_optimizers()
        if self.optimizer_name != "adafactor" and not t5_schedule:
            return config
        optimizer = config["optimizer"]
        if self.optimizer_name == "adafactor":
            groups = [{key: g[key] for key in ("params", "weight_decay", "name")}
                      for g in optimizer.param_groups]
            optimizer = torch.optim.Adafactor(groups, lr=self.optim.lr)
        if t5_schedule:
            lr_lambda = functools.partial(t5_inverse_sqrt, warmup=self.optim.warmup_steps)
        else:
            lr_lambda = config["lr_scheduler"]["scheduler"].lr_lambdas[0]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
        return {"optimizer": optimizer,
                "lr_scheduler": {**config["lr_scheduler"], "scheduler": scheduler}}

    # --------------------------------------------------------------------------- export
    def export(self, out_dir: str | Path, **options: Any) -> None:
        """Save the ``T5ForConditionalGeneration`` and a tokenizer that encodes like training.

        The exported tokenizer appends EOS only (``text [SEP]``, T5's ``text </s>``) instead
        of plmkit's ``[CLS] text [SEP]``; the sentinels are in its vocabulary.
        """
        assert self.model is not None and self.tokenizer is not None
        model: T5ForConditionalGeneration = self.export_model()  # type: ignore[assignment]
        eos = self._eos_id()
        pad = self.tokenizer.pad_token_id
        model.generation_config.decoder_start_token_id = pad
        model.generation_config.eos_token_id = eos
        model.generation_config.pad_token_id = pad
        use_cache = model.config.use_cache
        model.config.use_cache = True
        try:
            model.save_pretrained(str(out_dir))
        finally:
            model.config.use_cache = use_cache
        tokenizer = copy.deepcopy(self.tokenizer)
        eos_token = tokenizer.convert_ids_to_tokens(eos)
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"$A {eos_token}",
            pair=f"$A {eos_token} $B:1 {eos_token}:1",
            special_tokens=[(eos_token, eos)],
        )
        tokenizer.eos_token = eos_token
        tokenizer.save_pretrained(str(out_dir))
