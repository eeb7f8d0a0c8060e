"""Rebuild an objective from a checkpoint and export it in Hugging Face format.

Plugins add options to ``plmkit export`` for their own objectives (a second model to write, a
format) through the ``plmkit_export_options`` hook; :class:`ExportOption` declares one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from plmkit.data.tokenizer import tokenizer_from_state
from plmkit.errors import PlmkitError, PluginError
from plmkit.objective import Objective, check_checkpoint_format
from plmkit.registry import get_registry

#: names ``plmkit export`` uses itself, so no plugin option may take them
RESERVED_NAMES = frozenset({"checkpoint", "out_dir", "command", "help"})


@dataclass(frozen=True)
class ExportOption:
    """An option of ``plmkit export`` that a plugin declares for its objectives.

    Args:
        name: the keyword argument of the objective's ``export(out_dir, **options)``; on the
            command line ``--NAME``, underscores written as dashes.
        help: one line for ``plmkit export --help``.
        objectives: the ``objective_name`` of each objective it applies to (their subclasses
            included).
        type: ``bool`` (a flag, off unless given), ``str``, ``int`` or ``float`` (a value).
    """

    name: str
    help: str
    objectives: tuple[str, ...]
    type: type = bool

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def applies_to(self, cls: type[Objective]) -> bool:
        """Whether ``cls`` or one of its parent classes is one of :attr:`objectives`."""
        return any(k.__dict__.get("objective_name") in self.objectives for k in cls.__mro__)


def export_options() -> dict[str, ExportOption]:
    """Every plugin's ``plmkit_export_options``, by name."""
    found: dict[str, tuple[str, ExportOption]] = {}
    for plugin, options in get_registry().results_by_plugin("plmkit_export_options"):
        info = str(plugin)
        for option in options or []:
            if option.name in RESERVED_NAMES:
                raise PluginError(f"plugin {info} declares export option '{option.name}', a "
                                  "name 'plmkit export' uses itself; rename the option")
            if option.name in found:
                raise PluginError(
                    f"export option '{option.name}' is declared twice: by plugin "
                    f"{found[option.name][0]} and by plugin {info}; uninstall or rename one"
                )
            found[option.name] = (info, option)
    return {name: option for name, (_, option) in found.items()}


def check_export_options(cls: type[Objective], options: dict[str, Any]) -> None:
    """A PlmkitError unless every option in ``options`` is declared for objective ``cls``."""
    declared = export_options()
    for name in options:
        option = declared.get(name)
        if option is None:
            known = ", ".join(o.flag for o in declared.values()) or "none"
            raise PlmkitError(f"unknown export option '{name}' (the plugins declare: {known})")
        if not option.applies_to(cls):
            raise PlmkitError(
                f"{option.flag} applies to {', '.join(option.objectives)} checkpoints only; "
                f"this is a '{cls.objective_name}' checkpoint"
            )


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a plmkit checkpoint on the CPU; anything else is a one-line PlmkitError."""
    path = Path(path)
    if not path.is_file():
        raise PlmkitError(f"checkpoint {path} does not exist; pass the path of a .ckpt file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a file that is not a checkpoint
        raise PlmkitError(
            f"{path} is not a readable checkpoint ({type(exc).__name__}); "
            "pass a .ckpt file written by 'plmkit fit'"
        ) from exc
    if not isinstance(ckpt, dict) or "plmkit" not in ckpt or "state_dict" not in ckpt:
        raise PlmkitError(f"{path} is not a plmkit checkpoint; pass a .ckpt file from 'plmkit fit'")
    check_checkpoint_format(ckpt["plmkit"], path)
    return ckpt


def objective_from_checkpoint(path: str | Path) -> Objective:
    """The trained objective of a checkpoint, with its tokenizer, on the CPU in eval mode."""
    ckpt = read_checkpoint(path)
    meta = ckpt["plmkit"]
    spec = get_registry().objective(meta["objective"])
    hparams = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if not k.startswith("_")}
    objective = spec.cls(**hparams)
    objective.attach_tokenizer(tokenizer_from_state(meta), int(meta["max_length"]))
    objective.configure_model()
    objective.load_state_dict(ckpt["state_dict"])
    return objective.eval()


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, **options: Any) -> Path:
    """Write the checkpoint's model(s), config and tokenizer to ``out_dir``.

    ``options`` are the plugin-declared :class:`ExportOption` values for the checkpoint's
    objective (``plmkit export --help`` lists them); any other is a PlmkitError.
    """
    objective = objective_from_checkpoint(checkpoint)
    check_export_options(type(objective), options)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PlmkitError(f"export target {out} is a file; pass a folder")
    out.mkdir(parents=True, exist_ok=True)
    objective.export(out, **options)
    return out
