"""Rebuild an objective from a checkpoint and export it in Hugging Face format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from plmkit.data.tokenizer import tokenizer_from_state
from plmkit.errors import PlmkitError
from plmkit.objective import Objective
from plmkit.registry import get_registry


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
    """Write the checkpoint's model(s), config and tokenizer to ``out_dir``."""
    objective = objective_from_checkpoint(checkpoint)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PlmkitError(f"export target {out} is a file; pass a folder")
    out.mkdir(parents=True, exist_ok=True)
    objective.export(out, **options)
    return out
