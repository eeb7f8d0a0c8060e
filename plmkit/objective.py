"""The abstract core LightningModule that every pretraining method subclasses.

The core owns what is the same for every method: the training and validation steps, logging
(loss, named metrics, learning rate, tokens/s, MFU), the optimizer (AdamW, no weight decay on
biases and norms) and the LR schedule (warmup, then linear / cosine / inverse-sqrt / constant).

A method supplies, by overriding the abstract methods below:
  * ``build_model``        its model, built from its config and the tokenizer;
  * ``build_collator``     its collator (masking / corruption / pairing), a plain callable;
  * ``compute_loss``       the loss and the named metrics to log, from one batch;
  * ``block_classes``      its repeated blocks (FSDP wrapping, activation checkpointing);
  * ``flops_per_token``    training FLOPs per token (for MFU); a 6N + attention default exists;
  * ``export``             how to write it in Hugging Face format; ``save_pretrained`` default.
"""

from __future__ import annotations

import math
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import lightning as L
import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerFast, get_scheduler

from plmkit.data.tokenizer import tokenizer_to_state
from plmkit.errors import PlmkitError

Packing = Literal["document", "stream"]


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and LR-schedule settings shared by every objective.

    Args:
        lr: peak learning rate, reached at the end of warmup.
        weight_decay: decoupled weight decay; never applied to biases and norm weights.
        betas: Adam betas.
        eps: Adam epsilon.
        warmup_steps: linear warmup length in optimizer steps.
        schedule: decay after warmup: ``linear`` (to 0 at the last step), ``cosine``,
            ``inverse_sqrt`` or ``constant``.
    """

    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    warmup_steps: int = 10_000
    schedule: Literal["linear", "cosine", "inverse_sqrt", "constant"] = "linear"


_SCHEDULES = {
    "linear": "linear",
    "cosine": "cosine",
    "inverse_sqrt": "inverse_sqrt",
    "constant": "constant_with_warmup",
}


class Objective(L.LightningModule, ABC):
    """Base class of every pretraining objective (not itself registered)."""

    #: unique name under which the objective is registered and listed (``"bert"``).
    objective_name: ClassVar[str] = ""
    #: ``"document"``: blocks never cross a document boundary (pairs, NSP/SOP);
    #: ``"stream"``: documents are concatenated with a separator and cut into full blocks.
    packing: ClassVar[Packing] = "document"

    def __init__(
        self, optim: OptimConfig | dict[str, Any] | None = None, compile: bool = False
    ) -> None:
        """
        Args:
            optim: optimizer and learning-rate schedule settings.
            compile: wrap the model with ``torch.compile``.
        """
        super().__init__()
        # Collects the subclass's init arguments too; the optimizer settings are stored as a
        # plain dict so checkpoints load with ``torch.load(weights_only=True)``.
        self.save_hyperparameters()
        if isinstance(optim, dict):
            optim = OptimConfig(**{k: tuple(v) if k == "betas" else v for k, v in optim.items()})
        self.optim = optim or OptimConfig()
        self.hparams["optim"] = asdict(self.optim)
        self.compile = compile
        self.model: nn.Module | None = None
        self.tokenizer: PreTrainedTokenizerFast | None = None
        self.max_length: int = 0
        self._last_step_time: float | None = None

    # ---------------------------------------------------------------- what a method supplies
    @abstractmethod
    def build_model(self) -> nn.Module:
        """Build the model from this objective's config and ``self.tokenizer``."""

    @abstractmethod
    def build_collator(self, seed: int = 0) -> Callable[[list[dict[str, Any]]], dict[str, Tensor]]:
        """Return the collator for ``self.tokenizer`` and ``self.max_length``.

        The collator receives raw examples (token ids without special tokens, see
        :mod:`plmkit.collator`) and returns the model batch.
        """

    @abstractmethod
    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Return the loss to minimise and a dict of named scalar metrics to log."""

    @abstractmethod
    def block_classes(self) -> tuple[type[nn.Module], ...]:
        """The module classes of the model's repeated blocks (e.g. ``BertLayer``)."""

    def block_length(self, max_length: int) -> int:
        """Raw tokens per packed block for a model input of ``max_length`` tokens.

        The default keeps room for ``[CLS] A [SEP] B [SEP]``; methods override it.
        """
        return max_length - 3

    def special_tokens(self) -> list[str]:
        """Extra special tokens this objective needs in the vocabulary (e.g. sentinels)."""
        return []

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6N for the weights plus the attention scores.

        Uses the non-embedding parameter count N and, when the model config has them,
        ``num_hidden_layers`` and ``hidden_size`` for the 12 * layers * hidden * seq term.
        """
        assert self.model is not None
        n = sum(p.numel() for name, p in self.model.named_parameters() if "embed" not in name)
        config = getattr(self.model, "config", None)
        layers = getattr(config, "num_hidden_layers", 0)
        hidden = getattr(config, "hidden_size", 0)
        return 6.0 * n + 12.0 * layers * hidden * seq_len

    def export_model(self) -> nn.Module:
        """The Hugging Face model that ``plmkit export`` saves (default: ``self.model``)."""
        assert self.model is not None
        return self.model

    def export(self, out_dir: str | Path, **options: Any) -> None:
        """Write the model, its config and the tokenizer in Hugging Face format.

        ``options`` are method-specific (e.g. ELECTRA's ``generator=True``).
        """
        model = self.export_model()
        model.save_pretrained(str(out_dir))  # type: ignore[operator]
        assert self.tokenizer is not None
        self.tokenizer.save_pretrained(str(out_dir))

    # -------------------------------------------------------------------- set-up by the core
    def attach_tokenizer(self, tokenizer: PreTrainedTokenizerFast, max_length: int) -> None:
        """Called by the DataModule (or export) before ``configure_model``."""
        self.tokenizer = tokenizer
        self.max_length = max_length

    def configure_model(self) -> None:
        if self.model is not None:
            return
        if self.tokenizer is None:
            raise RuntimeError(
                "the objective has no tokenizer: use it with plmkit's PretrainDataModule "
                "or call attach_tokenizer() first"
            )
        self.model = self.build_model()
        if self.compile:
            self.model = torch.compile(self.model)  # type: ignore[assignment]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        assert self.tokenizer is not None
        checkpoint["plmkit"] = {
            "objective": self.objective_name,
            "max_length": self.max_length,
            **tokenizer_to_state(self.tokenizer),
            # Lightning keeps no RNG state; dropout after a resume must match an unbroken run.
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("plmkit", {})
        if "rng_cpu" in meta:
            torch.set_rng_state(meta["rng_cpu"])
        if meta.get("rng_cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(meta["rng_cuda"])

    # --------------------------------------------------------------------------- the loop
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        num_tokens = batch.pop("_num_tokens", None)
        loss, metrics = self.compute_loss(batch)
        self._check_finite(loss)
        self.log("train/loss", loss, prog_bar=True)
        for name, value in metrics.items():
            self.log(f"train/{name}", value)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])  # type: ignore[union-attr]
        self._log_throughput(num_tokens)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        batch.pop("_num_tokens", None)
        loss, metrics = self.compute_loss(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        for name, value in metrics.items():
            self.log(f"val/{name}", value, sync_dist=True)

    def _check_finite(self, loss: Tensor) -> None:
        # A host sync, but one scalar per step is cheap next to losing a run to NaNs.
        if not torch.isfinite(loss.detach()).item():
            raise PlmkitError(
                f"the loss became {loss.item()} at step {self.global_step}; the last good "
                "checkpoint is kept: lower the learning rate or use bf16-mixed instead of 16-mixed"
            )

    def _log_throughput(self, num_tokens: int | None) -> None:
        now = time.perf_counter()
        if num_tokens is not None and self._last_step_time is not None:
            elapsed = now - self._last_step_time
            tokens_per_sec = num_tokens * self.trainer.world_size / max(elapsed, 1e-9)
            self.log("train/tokens_per_sec", tokens_per_sec, prog_bar=True)
            peak = _peak_flops(self.device)
            if peak and self.max_length:
                mfu = tokens_per_sec * self.flops_per_token(self.max_length) / peak
                self.log("train/mfu", mfu / self.trainer.world_size)
        self._last_step_time = now

    # --------------------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> Any:
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            # Biases, norm weights and other 1-D parameters get no weight decay.
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
        groups = [
            {"params": decay, "weight_decay": self.optim.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(
            groups, lr=self.optim.lr, betas=tuple(self.optim.betas), eps=self.optim.eps
        )
        total = int(self.trainer.estimated_stepping_batches)
        warmup = self.optim.warmup_steps
        if total > 0 and warmup >= total:
            warmup = max(1, total // 10)
            warnings.warn(
                f"warmup_steps={self.optim.warmup_steps} is not below the run's {total} steps; "
                f"warming up for {warmup} steps instead (set --model.optim.warmup_steps)",
                stacklevel=2,
            )
        kwargs: dict[str, Any] = {"num_warmup_steps": warmup}
        if self.optim.schedule in ("linear", "cosine"):
            kwargs["num_training_steps"] = total if math.isfinite(total) else 10**9
        scheduler = get_scheduler(_SCHEDULES[self.optim.schedule], optimizer, **kwargs)
        schedule = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}


def _peak_flops(device: torch.device) -> float | None:
    """The device's peak FLOP/s when Lightning knows it (GPUs), else None."""
    if device.type != "cuda":
        return None
    from lightning.fabric.utilities.throughput import get_available_flops

    return get_available_flops(device, torch.bfloat16)
