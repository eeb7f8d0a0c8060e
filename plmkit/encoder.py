"""The base of every method that pretrains a transformer encoder with a masking objective.

It holds the two typed blocks those methods share, ``encoder`` (:class:`EncoderConfig`) and
``masking`` (:class:`MaskingConfig`), and answers ``max_positions`` from the encoder's learned
positions. A method subclasses it and adds only its own options.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict
from typing import Any

from plmkit.config import EncoderConfig, MaskingConfig, as_config
from plmkit.objective import Objective


class EncoderObjective(Objective):
    """A pretraining objective on a transformer encoder (not itself registered)."""

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

    def _declared_default(self, name: str) -> Any:
        """The default of argument ``name`` in the most derived ``__init__`` that declares it
        (a method's own defaults, e.g. ELECTRA's masking), onto which a dict is merged."""
        for klass in type(self).__mro__:
            init = klass.__dict__.get("__init__")
            param = inspect.signature(init).parameters.get(name) if init else None
            if param is not None and param.default is not param.empty:
                return param.default
        return None
