"""The GPT objective: next-token prediction over packed blocks with ``GPT2LMHeadModel``."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from tokenizers import processors
from torch import Tensor, nn
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.models.gpt2.modeling_gpt2 import GPT2Block

from plmkit.config import SpecialTokens
from plmkit.heads import masked_lm_loss
from plmkit.objective import Objective
from plmkit.plugins.gpt.collator import GptCollator


class GptObjective(Objective):
    """GPT: causal language modelling (Radford et al. 2018, 2019) on ``GPT2LMHeadModel``.

    Blocks are full ``max_length`` windows of the token stream, documents separated by the
    tokenizer's EOS (= its separator, ``[SEP]`` in plmkit's tokenizers). The architecture is
    GPT-2's (pre-LayerNorm, final LayerNorm, tied input/output embeddings, learned positions,
    GELU); GPT-1's post-LN variant has no SDPA class in transformers.
    """

    objective_name = "gpt"
    packing = "stream"
    shape_fields = {"vocab_size": None, "n_embd": "hidden_size", "n_layer": "num_layers",
                    "n_head": "num_heads", "n_inner": "intermediate_size",
                    "n_positions": "max_position_embeddings"}

    def __init__(
        self,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        intermediate_size: int = 3072,
        dropout: float = 0.1,
        max_position_embeddings: int = 512,
        activation: str = "gelu_pytorch_tanh",
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        document_mask: bool = False,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            hidden_size: width of the decoder (``n_embd``).
            num_layers: number of transformer blocks (``n_layer``).
            num_heads: attention heads per block (``n_head``).
            intermediate_size: feed-forward width (``n_inner``; 4 x hidden in GPT-1/2).
            dropout: residual, embedding and attention dropout (0.1 in GPT-1/2).
            max_position_embeddings: learned positions (``n_positions``, at least
                data.max_length).
            activation: feed-forward activation: GPT's tanh-approximated GELU (``gelu_new``),
                here as one fused kernel (``gelu_pytorch_tanh``, same function, faster).
            layer_norm_eps: LayerNorm epsilon.
            initializer_range: std of the normal weight initialisation (0.02 in GPT-1/2).
            document_mask: keep attention inside each document of a packed block (positions
                restart per document); GPT-1/2 attend across the whole block.
        """
        super().__init__(**kwargs)
        self.hidden_size, self.num_layers, self.num_heads = hidden_size, num_layers, num_heads
        self.intermediate_size, self.dropout = intermediate_size, dropout
        self.max_position_embeddings, self.activation = max_position_embeddings, activation
        self.layer_norm_eps, self.initializer_range = layer_norm_eps, initializer_range
        self.document_mask = document_mask

    def max_positions(self) -> int:
        return self.max_position_embeddings

    def _eos_id(self) -> int:
        return SpecialTokens.from_tokenizer(self.tokenizer).eos  # type: ignore[return-value]

    def build_model(self) -> nn.Module:
        assert self.tokenizer is not None
        eos = self._eos_id()
        config = GPT2Config(
            vocab_size=len(self.tokenizer),
            n_positions=max(self.max_position_embeddings, self.max_length),
            n_embd=self.hidden_size,
            n_layer=self.num_layers,
            n_head=self.num_heads,
            n_inner=self.intermediate_size,
            activation_function=self.activation,
            resid_pdrop=self.dropout,
            embd_pdrop=self.dropout,
            attn_pdrop=self.dropout,
            layer_norm_epsilon=self.layer_norm_eps,
            initializer_range=self.initializer_range,
            # GPT-2's <|endoftext|> is both bos and eos: here the separator plays that part
            bos_token_id=eos,
            eos_token_id=eos,
            pad_token_id=self.tokenizer.pad_token_id,
            # transformers separates packed documents by their restarting position_ids only
            # when no KV cache is active: off for training, so ``model(**batch)`` is right;
            # export turns it back on for generation
            use_cache=False,
        )
        config._attn_implementation = "sdpa"
        return GPT2LMHeadModel(config)

    def build_collator(self, seed: int = 0) -> GptCollator:
        return GptCollator(self.tokenizer, max_length=self.max_length,
                           document_mask=self.document_mask, seed=seed)

    def block_classes(self) -> tuple[type[nn.Module], ...]:
        return (GPT2Block,)

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        model: GPT2LMHeadModel = self.model  # type: ignore[assignment]
        hidden = model.transformer(
            input_ids=batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            position_ids=batch.get("position_ids"),
            use_cache=False,
        ).last_hidden_state
        # shift: the hidden state at t predicts token t + 1; the vocabulary projection runs
        # only where a label exists (padding and cut boundaries are skipped)
        loss, accuracy, _ = masked_lm_loss(
            hidden[:, :-1], batch["labels"][:, 1:], model.lm_head
        )
        return loss, {"accuracy": accuracy, "perplexity": loss.detach().exp()}

    def export(self, out_dir: str | Path, **options: Any) -> None:
        """Save the ``GPT2LMHeadModel`` and a tokenizer ready for ``generate()``.

        The exported tokenizer adds no special tokens when encoding (plmkit's trained
        tokenizers add ``[CLS] ... [SEP]``, which would end every prompt with EOS); its eos
        and bos are the separator, its pad token ``[PAD]``.
        """
        assert self.model is not None and self.tokenizer is not None
        model: GPT2LMHeadModel = self.export_model()  # type: ignore[assignment]
        eos = self._eos_id()
        model.generation_config.bos_token_id = eos
        model.generation_config.eos_token_id = eos
        model.generation_config.pad_token_id = self.tokenizer.pad_token_id
        use_cache = model.config.use_cache
        model.config.use_cache = True
        try:
            model.save_pretrained(str(out_dir))
        finally:
            model.config.use_cache = use_cache
        tokenizer = copy.deepcopy(self.tokenizer)
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="$A", pair="$A $B:1"
        )
        eos_token = tokenizer.convert_ids_to_tokens(eos)
        tokenizer.eos_token = eos_token
        tokenizer.bos_token = eos_token
        tokenizer.save_pretrained(str(out_dir))
