"""The base of every method that pretrains a transformer encoder with a masking objective.

It holds the two typed blocks those methods share, ``encoder`` (:class:`EncoderConfig`) and
``masking`` (:class:`MaskingConfig`), answers ``max_positions`` from the encoder's learned
positions, builds the method's transformers config (:meth:`EncoderObjective.hf_config`) and its
collator (``collator_class`` with the options of :meth:`EncoderObjective.collator_options`),
and names its repeated block (``block_class``). A method subclasses it and adds only its own
options, model and loss.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict
from typing import Any, ClassVar, TypeVar

from torch import nn
from transformers import PretrainedConfig

from plmkit.config import EncoderConfig, MaskingConfig, as_config
from plmkit.mlm import MlmCollator
from plmkit.objective import Objective

C = TypeVar("C", bound=PretrainedConfig)


#: the shape fields of a BERT-architecture config and the ``encoder`` options that set them
ENCODER_SHAPE_FIELDS: dict[str, str | None] = {
    "vocab_size": None,
    "hidden_size": "encoder.hidden_size",
    "num_hidden_layers": "encoder.num_layers",
    "num_attention_heads": "encoder.num_heads",
    "intermediate_size": "encoder.intermediate_size",
    "max_position_embeddings": "encoder.max_position_embeddings",
    "type_vocab_size": None,
}


class EncoderObjective(Objective):
    """A pretraining objective on a transformer encoder (not itself registered)."""

    shape_fields = ENCODER_SHAPE_FIELDS

    #: the method's collator, which :meth:`build_collator` makes
    collator_class: ClassVar[type[MlmCollator]]
    #: the encoder's repeated block (``BertLayer``), the one of :meth:`block_classes`
    block_class: ClassVar[type[nn.Module]]

    def __init__(
        self,
        encoder: EncoderConfig = EncoderConfig(),
        masking: MaskingConfig = MaskingConfig(),
        **kwargs: Any,
    ) -> None:
        """
        Args:
            encoder: the encoder's shape (a named size, fields overridden); a dict is accepted.
            masking: which tokens are predicted and how they are corrupted; a dict is accepted.
        """
        super().__init__(**kwargs)
        self.encoder = as_config(EncoderConfig, encoder, self._declared_default("encoder"))
        self.encoder = self.encoder.resolved()
        self.masking = as_config(MaskingConfig, masking, self._declared_default("masking"))
        # the checkpoint keeps the resolved sizes: a later change of a named size cannot
        # change the shape of a saved model
        self.hparams["encoder"] = asdict(self.encoder)

    def max_positions(self) -> int | None:
        return self.encoder.max_position_embeddings

    def block_classes(self) -> tuple[type[nn.Module], ...]:
        return (self.block_class,)

    def hf_config(self, config_class: type[C], encoder: EncoderConfig | None = None,
                  **fields: Any) -> C:
        """``config_class`` (a transformers BERT-family config) of ``encoder`` (default: this
        objective's): the tokenizer's vocabulary and padding id, the encoder's sizes (positions:
        at least ``max_length``) and attention implementation, then the method's ``fields``."""
        assert self.tokenizer is not None
        encoder = encoder or self.encoder
        config = config_class(vocab_size=len(self.tokenizer),
                              pad_token_id=self.tokenizer.pad_token_id,
                              **{**encoder.hf_kwargs(self.max_length), **fields})
        config._attn_implementation = encoder.attention
        return config

    def collator_options(self) -> dict[str, Any]:
        """The method's own arguments of ``collator_class`` (none by default)."""
        return {}

    def build_collator(self, seed: int = 0) -> MlmCollator:
        """``collator_class`` for the tokenizer, ``max_length`` and ``masking``, with
        :meth:`collator_options`."""
        return self.collator_class(self.tokenizer, max_length=self.max_length,
                                   masking=self.masking, seed=seed, **self.collator_options())

    def _declared_default(self, name: str) -> Any:
        """The default of argument ``name`` in the most derived ``__init__`` that declares it
        (a method's own defaults, e.g. ELECTRA's masking), onto which a dict is merged."""
        for klass in type(self).__mro__:
            init = klass.__dict__.get("__init__")
            param = inspect.signature(init).parameters.get(name) if init else None
            if param is not None and param.default is not param.empty:
                return param.default
        return None
