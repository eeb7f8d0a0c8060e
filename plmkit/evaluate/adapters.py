"""Adapters: how an exported model becomes an :class:`Encoder` of hidden states.

An adapter is looked up by the ``model_type`` of the model's ``config.json``. Plugins provide
adapters for their own model types through the ``plmkit_evaluation_adapters`` hook
(:mod:`plmkit.hookspecs`); a model type that no plugin claims is loaded with transformers'
``AutoModel`` and mean-pooled, which suits every transformers encoder.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch import Tensor, nn

from plmkit.errors import PlmkitError, PluginError

Pooling = Literal["cls", "mean", "last"]
POOLINGS: tuple[str, ...] = ("cls", "mean", "last")

#: ``layers(backbone, input_ids, attention_mask) -> (B, layers, T, H)`` hidden states
LayersFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


class Encoder(nn.Module):
    """Wraps a backbone: ``forward(input_ids, attention_mask) -> (B, layers, T, H)``."""

    def __init__(self, backbone: nn.Module, hidden_size: int, layers: LayersFn) -> None:
        super().__init__()
        self.backbone = backbone
        self.hidden_size = hidden_size
        self._layers = layers

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self._layers(self.backbone, input_ids, attention_mask)


def last_hidden(backbone: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """The ``last_hidden_state`` of a transformers model as one layer: ``(B, 1, T, H)``."""
    out = backbone(input_ids=input_ids, attention_mask=attention_mask)
    return out.last_hidden_state.unsqueeze(1)


@dataclass(frozen=True)
class Adapter:
    """How to load one model type as an :class:`Encoder` (pretrained or randomly initialized).

    Args:
        load: ``load(folder, random_init) -> Encoder``. With ``random_init`` it builds the same
            architecture with fresh weights (the caller has seeded torch).
        pooling: the default pooling (``cls``, ``mean`` or ``last``).
        description: one line for the docs and errors.
    """

    load: Callable[[Path, bool], Encoder]
    pooling: Pooling
    description: str


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide 'weights not used / newly initialized' notes (heads are dropped on purpose) and
    the save/load progress bars of transformers."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def hf_adapter(model_class: str = "AutoModel", pooling: Pooling = "mean",
               description: str | None = None) -> Adapter:
    """An adapter for a transformers class (``model_class``, a name in ``transformers``) whose
    ``last_hidden_state`` is pooled."""

    def load(folder: Path, random_init: bool) -> Encoder:
        import transformers

        cls = getattr(transformers, model_class)
        with quiet_transformers():
            if random_init:
                config = transformers.AutoConfig.from_pretrained(str(folder))
                model = cls.from_config(config) if model_class == "AutoModel" else cls(config)
            else:
                model = cls.from_pretrained(str(folder))
        config = model.config
        hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
        return Encoder(model, int(hidden), last_hidden)

    return Adapter(load, pooling, description or f"{model_class}, {pooling} pooling")


DEFAULT_ADAPTER = hf_adapter("AutoModel", "mean")


def registered_adapters() -> dict[str, Adapter]:
    """Every plugin's ``plmkit_evaluation_adapters``, by model type."""
    from plmkit.registry import get_registry

    found: dict[str, tuple[str, Adapter]] = {}
    for info, adapters in get_registry().results_by_plugin("plmkit_evaluation_adapters"):
        for model_type, adapter in (adapters or {}).items():
            if not isinstance(adapter, Adapter):
                raise PluginError(f"plugin {info} returned {type(adapter).__name__} for model "
                                  f"type '{model_type}'; return plmkit.evaluate.Adapter objects")
            if model_type in found:
                raise PluginError(
                    f"evaluation adapter for model type '{model_type}' is registered twice: by "
                    f"plugin {found[model_type][0]} and by plugin {info}; uninstall one of them"
                )
            found[model_type] = (str(info), adapter)
    return {model_type: adapter for model_type, (_, adapter) in found.items()}


def adapter_for(model_type: str) -> Adapter:
    """The adapter of ``model_type``: a plugin's, else :data:`DEFAULT_ADAPTER`."""
    return registered_adapters().get(model_type, DEFAULT_ADAPTER)


# ------------------------------------------------------------------------------ model files
def model_type_of(folder: Path) -> str:
    """The ``model_type`` in ``folder/config.json``; a folder without one is a PlmkitError."""
    config = folder / "config.json"
    if config.is_file():
        try:
            return str(json.loads(config.read_text(encoding="utf-8")).get("model_type", ""))
        except json.JSONDecodeError as exc:
            raise PlmkitError(f"{config} is not valid JSON: {exc}") from exc
    raise PlmkitError(
        f"{folder} is not a model folder (no config.json); pass a folder written by "
        "'plmkit export' or a .ckpt file written by 'plmkit fit'"
    )


def check_model(model: str | Path) -> Path:
    """``model`` as a path that exists (a model folder or a file); else a PlmkitError."""
    path = Path(model).expanduser()
    if not path.exists():
        raise PlmkitError(
            f"model {path} does not exist; pass a folder written by 'plmkit export' or a .ckpt "
            "file written by 'plmkit fit'"
        )
    if path.is_dir():
        model_type_of(path)
    return path


@contextmanager
def model_folder(model: str | Path) -> Iterator[Path]:
    """An exported model folder for ``model``: the folder itself, or a checkpoint exported to
    a temporary folder (removed afterwards)."""
    path = check_model(model)
    if path.is_dir():
        yield path
        return
    from plmkit.export import objective_from_checkpoint

    objective = objective_from_checkpoint(path)
    with tempfile.TemporaryDirectory(prefix="plmkit-eval-") as tmp:
        with quiet_transformers():
            objective.export(tmp)
        del objective
        yield Path(tmp)


def load_encoder(folder: Path, random_init: bool = False) -> tuple[Encoder, Any, str]:
    """``(encoder, tokenizer, model_type)`` of an exported model folder."""
    from plmkit.data.tokenizer import load_tokenizer

    model_type = model_type_of(folder)
    adapter = adapter_for(model_type)
    tokenizer = load_tokenizer(folder)
    tokenizer.padding_side = "right"
    try:
        encoder = adapter.load(folder, random_init)
    except PlmkitError:
        raise
    except Exception as exc:
        raise PlmkitError(
            f"could not load {folder} as a '{model_type}' encoder: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    return encoder, tokenizer, model_type
