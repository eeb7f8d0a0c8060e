"""The abstract core LightningModule that every pretraining method subclasses.

The core owns what is the same for every method: the training and validation steps, logging
(loss, named metrics; learning rate, tokens/s and MFU come from Lightning's callbacks, see
:mod:`plmkit.throughput`), the optimizer (AdamW, fused kernel where
the parameters allow it, no weight decay on biases and norms) and the LR schedule (warmup,
then linear / cosine / inverse-sqrt / constant).

A method supplies, by overriding the abstract methods below:
  * ``build_model``        its model, built from its config and the tokenizer;
  * ``build_collator``     its collator (masking / corruption / pairing), a plain callable;
  * ``compute_loss``       the loss and the named metrics to log, from one batch;
  * ``block_classes``      its repeated blocks (FSDP wrapping, activation checkpointing);
  * ``export``             how to write it in Hugging Face format; ``save_pretrained`` default.

Optional hooks with defaults: ``block_length``, ``special_tokens``, ``max_positions`` (the
longest input the model supports; checked against ``data.max_length`` before training),
``pretrained_modules`` (what ``init_from`` loads from a Hugging Face folder, see
:mod:`plmkit.pretrained`; default: the exported model).

Distribution (see :mod:`plmkit.distributed` and docs/distributed.md) is the strategy's business:
``configure_model`` shards the model with FSDP2 when Lightning's ``ModelParallelStrategy``
hands it a device mesh, and fills in ``FSDPStrategy``'s wrap policy from ``block_classes``.
With several ranks the logged training metrics are averaged over the ranks, and a non-finite
loss on any rank is seen by all of them (``on_nonfinite``: stop or skip the step).
"""

from __future__ import annotations

import inspect
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import lightning as L
import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerFast, get_scheduler

from plmkit.data.loader import NUM_TOKENS_KEY
from plmkit.data.tokenizer import tokenizer_to_state
from plmkit.errors import PlmkitError

log = logging.getLogger("plmkit")

Packing = Literal["document", "stream", "sentences"]
OnNonFinite = Literal["stop", "skip"]

#: ``on_nonfinite="skip"`` stops anyway after this many non-finite losses in a row.
MAX_CONSECUTIVE_SKIPS = 100

#: Layout of the hyperparameters in a checkpoint. 2: typed ``encoder``/``masking`` blocks
#: (plmkit 0.2); checkpoints without the field are format 1 (plmkit 0.1, loose arguments).
CHECKPOINT_FORMAT = 2


def check_checkpoint_format(meta: dict[str, Any], path: str | Path = "the checkpoint") -> None:
    """A one-line error for a checkpoint whose hyperparameters this plmkit cannot rebuild."""
    found = int(meta.get("format", 1))
    if found != CHECKPOINT_FORMAT:
        from plmkit import __version__

        written_by = meta.get("version", "0.1")
        raise PlmkitError(
            f"{path} was written by plmkit {written_by} (checkpoint format {found}); plmkit "
            f"{__version__} reads format {CHECKPOINT_FORMAT} only: export it to Hugging Face "
            f"format with plmkit {written_by}, or train it again"
        )


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
    #: for ``init_from``: the transformers config fields that fix the model's shape, each with
    #: the option (``--model.OPTION``) that sets it, or None when no option does; they must
    #: agree with the folder's config.json, other differing fields (activation, epsilon) are
    #: logged and the recipe's value is used. None: every field must agree.
    shape_fields: ClassVar[dict[str, str | None] | None] = None

    def __init__(
        self,
        optim: OptimConfig | dict[str, Any] | None = None,
        compile: bool = False,
        on_nonfinite: OnNonFinite = "stop",
        activation_checkpointing: bool = False,
        init_from: str | None = None,
    ) -> None:
        """
        Args:
            optim: optimizer and learning-rate schedule settings.
            compile: ``torch.compile`` each repeated block (``block_classes``) in place;
                measured on CPU in docs/benchmarks.md.
            on_nonfinite: what a NaN/inf training loss does: ``stop`` the run with a one-line
                error naming the step (the last checkpoint is kept), or ``skip`` the step (its
                gradients are dropped before the optimizer step, so no parameter or optimizer
                state changes; the step still counts towards max_steps and the LR schedule;
                ``train/nonfinite_skipped`` counts them; after 100 in a row the run stops).
            activation_checkpointing: recompute each block (``block_classes``) in the
                backward pass instead of storing its activations.
            init_from: continue pretraining from a local Hugging Face folder (``plmkit
                export`` output or any ``save_pretrained`` folder of this method's
                architecture): its tokenizer and weights are used, the recipe's sizes must be
                the folder's, heads it lacks start fresh (docs/continue_pretraining.md).
        """
        super().__init__()
        self.save_hyperparameters(frame=_outermost_init_frame(self))
        # not a hyperparameter: the checkpoint holds the weights, and rebuilds from the
        # recipe's sizes (checked equal to the folder's) without the folder
        self.hparams.pop("init_from", None)
        self.init_from = init_from
        if isinstance(optim, dict):
            optim = OptimConfig(**{k: tuple(v) if k == "betas" else v for k, v in optim.items()})
        self.optim = optim or OptimConfig()
        self.hparams["optim"] = asdict(self.optim)
        # typed config blocks are stored as plain dicts, so that checkpoints load with
        # ``torch.load(weights_only=True)`` and ``type(self)(**hparams)`` rebuilds the objective
        for key, value in list(self.hparams.items()):
            if is_dataclass(value) and not isinstance(value, type):
                self.hparams[key] = asdict(value)
        self.compile = compile
        if on_nonfinite not in ("stop", "skip"):
            raise PlmkitError(f"model.on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}")
        self.on_nonfinite = on_nonfinite
        self.activation_checkpointing = activation_checkpointing
        self.nonfinite_skipped = 0
        self._nonfinite_streak = 0
        self._drop_gradients = False
        self._sharded_root: nn.Module | None = None  # FSDP2's root unit, see configure_model
        self.model: nn.Module | None = None
        self.tokenizer: PreTrainedTokenizerFast | None = None
        self.max_length: int = 0

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

        The default leaves room for the special tokens the collator adds
        (:attr:`plmkit.collator.Collator.num_special_tokens`); a method overrides it only
        when its corruption changes the length (T5's spans).
        """
        return max_length - self.build_collator().num_special_tokens

    def special_tokens(self) -> list[str]:
        """Extra special tokens this objective needs in the vocabulary (e.g. sentinels)."""
        return []

    def max_positions(self) -> int | None:
        """The longest model input (``data.max_length``) this objective's model supports.

        ``None`` (the default) means no limit (relative positions). A method with learned
        positions returns their number, so that a longer ``data.max_length`` is a one-line
        error before training instead of a silently grown position table.
        """
        return None

    def export_model(self) -> nn.Module:
        """The Hugging Face model that ``plmkit export`` saves (default: ``self.model``)."""
        assert self.model is not None
        return self.model

    def pretrained_modules(self) -> dict[str, nn.Module]:
        """What ``init_from`` loads: ``{subfolder: module}``, ``""`` being the folder itself.

        Each module is a transformers model, read with its ``from_pretrained``; the default is
        the module :meth:`export` writes (``export_model``). A method whose export writes a
        second model to a subfolder adds it here (ELECTRA's ``generator``); a missing
        subfolder leaves that module freshly initialised.
        """
        return {"": self.export_model()}

    def export(self, out_dir: str | Path, **options: Any) -> None:
        """Write the model, its config and the tokenizer in Hugging Face format.

        ``options`` are the method's own, declared to ``plmkit export`` through the
        ``plmkit_export_options`` hook (:class:`plmkit.export.ExportOption`).
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
        from plmkit import distributed

        strategy = self._trainer.strategy if self._trainer is not None else None
        # FSDPStrategy: wrap policy (and activation checkpointing) from block_classes()
        distributed.adapt_strategy(strategy, self)
        self.model = self.build_model()
        if self.init_from is not None:  # before sharding, wrapping or compiling renames anything
            from plmkit.pretrained import load_pretrained

            load_pretrained(self)
        mesh = self._device_mesh  # set by ModelParallelStrategy before configure_model
        if mesh is not None:
            # the root unit runs compute_loss as its forward (see distributed.LossModule);
            # kept out of the module tree so that parameter names do not change
            root = distributed.parallelize(
                self.model, mesh, self.block_classes(),
                activation_checkpointing=self.activation_checkpointing, compile=self.compile,
                root=distributed.LossModule(self),
            )
            object.__setattr__(self, "_sharded_root", root)
            return
        if self.activation_checkpointing and not distributed.strategy_checkpoints(strategy):
            distributed.apply_activation_checkpointing(self.model, self.block_classes())
        if self.compile:
            self._compile_blocks()

    def _compile_blocks(self) -> None:
        """``torch.compile`` each repeated block in place (``module.compile()``).

        Not ``torch.compile(self.model)``: ``compute_loss`` usually calls submodules
        (``model.bert(...)``, a head at the masked positions), which a wrapper around the
        whole model never sees, and the wrapper renames every parameter (``_orig_mod.``) so
        checkpoints of compiled and eager runs would not load into each other. Compiled in
        place, identical blocks share one compiled graph (shapes are fixed by the batch), the
        masked-position gathers stay eager, and the parameter names do not change. Without
        block classes the model's own ``forward`` is compiled in place.
        """
        from plmkit import distributed

        assert self.model is not None
        found = distributed.blocks(self.model, self.block_classes())
        for block in found or [self.model]:
            block.compile()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        assert self.tokenizer is not None
        from plmkit import __version__

        checkpoint["plmkit"] = {
            "format": CHECKPOINT_FORMAT,
            "version": __version__,
            "objective": self.objective_name,
            "max_length": self.max_length,
            **tokenizer_to_state(self.tokenizer),
            # Lightning keeps no RNG state; dropout after a resume must match an unbroken run.
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "nonfinite_skipped": self.nonfinite_skipped,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("plmkit", {})
        check_checkpoint_format(meta)
        self.nonfinite_skipped = int(meta.get("nonfinite_skipped", 0))
        if "rng_cpu" in meta:
            torch.set_rng_state(meta["rng_cpu"])
        if meta.get("rng_cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(meta["rng_cuda"])

    # --------------------------------------------------------------------------- the loop
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, metrics = self.loss_and_metrics(_model_inputs(batch))
        # one all-reduce for the loss and every metric (none with a single process): the
        # logged values are the mean over ranks, and all ranks see a non-finite loss together
        logged_loss, metrics = self._mean_over_ranks(loss, metrics)
        if not self._check_finite(logged_loss):
            # on_nonfinite="skip": the backward pass still runs (Lightning forbids skipping it
            # with several ranks), on_before_optimizer_step then drops the gradients
            self._drop_gradients = True
            return loss
        self.log("train/loss", logged_loss, prog_bar=True)
        for name, value in metrics.items():
            self.log(f"train/{name}", value)
        if self.on_nonfinite == "skip":
            self.log("train/nonfinite_skipped", float(self.nonfinite_skipped))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, metrics = self.loss_and_metrics(_model_inputs(batch))
        rows = len(batch["input_ids"])  # the epoch mean weights batches by their rows
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=rows)
        for name, value in metrics.items():
            self.log(f"val/{name}", value, sync_dist=True, batch_size=rows)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """Drop every gradient of a step whose loss was non-finite (``on_nonfinite="skip"``):
        the optimizer then leaves every parameter and its state as they were. A subclass that
        overrides this hook must call ``super().on_before_optimizer_step(optimizer)``."""
        if self._drop_gradients:
            self._drop_gradients = False
            for param in self.parameters():
                param.grad = None

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any,
                       optimizer_closure: Callable[[], Any] | None = None) -> None:
        """Lightning's step, then free the gradients at once.

        Lightning zeroes the gradients inside the next step's closure, *after* its forward
        pass, so every forward would run with the last step's gradients still allocated (one
        extra copy of the parameters at the memory peak). Called only when the optimizer
        steps, so accumulated gradients are never touched.
        """
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        optimizer.zero_grad(set_to_none=True)

    def loss_and_metrics(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        """``compute_loss(batch)``, through the FSDP2 root unit when the model is sharded."""
        if self._sharded_root is not None:
            return self._sharded_root(batch)
        return self.compute_loss(batch)

    def _mean_over_ranks(
        self, loss: Tensor, metrics: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Any]]:
        trainer = self._trainer
        if trainer is None or trainer.world_size < 2:
            return loss.detach(), metrics
        names = list(metrics)
        values = torch.stack([loss.detach().float().reshape(()), *(
            torch.as_tensor(metrics[n], device=loss.device).detach().float().reshape(())
            for n in names
        )])
        values = trainer.strategy.reduce(values, reduce_op="mean")
        return values[0], dict(zip(names, values[1:]))

    def _check_finite(self, loss: Tensor) -> bool:
        """True for a finite loss; else stop (PlmkitError) or count a skipped step."""
        # A host sync, but one scalar per step is cheap next to losing a run to NaNs.
        if torch.isfinite(loss).item():
            self._nonfinite_streak = 0
            return True
        if self.on_nonfinite == "skip" and self._nonfinite_streak < MAX_CONSECUTIVE_SKIPS:
            self._nonfinite_streak += 1
            self.nonfinite_skipped += 1
            log.warning("the loss is %s at step %d: step skipped (%d so far)", loss.item(),
                        self.global_step, self.nonfinite_skipped)
            return False
        if self.on_nonfinite == "skip":
            raise PlmkitError(
                f"the loss was non-finite {MAX_CONSECUTIVE_SKIPS} times in a row (last at step "
                f"{self.global_step}); the last good checkpoint is kept: lower the learning rate"
            )
        raise PlmkitError(
            f"the loss became {loss.item()} at step {self.global_step}; the last good "
            "checkpoint is kept: lower the learning rate, use bf16-mixed instead of 16-mixed, "
            "or pass --model.on_nonfinite skip"
        )

    # --------------------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> Any:
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            # Biases, norm weights and other 1-D parameters get no weight decay.
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
        groups = [
            {"params": decay, "weight_decay": self.optim.weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
        ]
        # the fused kernel (one pass over every parameter instead of a dozen per-tensor ops;
        # transformers' Trainer default since torch 2.8) on plain CPU / CUDA parameters; the
        # per-tensor loop under FSDP (sharded DTensor or flat parameters)
        fused = self._sharded_root is None and all(
            type(p) is nn.Parameter and p.device.type in ("cpu", "cuda")
            for group in groups for p in group["params"]
        )
        optimizer = torch.optim.AdamW(
            groups, lr=self.optim.lr, betas=tuple(self.optim.betas), eps=self.optim.eps,
            fused=fused or None,
        )
        total = int(self.trainer.estimated_stepping_batches)
        warmup = self.optim.warmup_steps
        if total > 0 and warmup >= total:
            warmup = max(1, total // 10)
            log.warning("warmup_steps=%d is not below the run's %d steps; warming up for %d "
                        "steps instead (set --model.optim.warmup_steps)",
                        self.optim.warmup_steps, total, warmup)
        kwargs: dict[str, Any] = {"num_warmup_steps": warmup}
        if self.optim.schedule in ("linear", "cosine"):
            kwargs["num_training_steps"] = total if math.isfinite(total) else 10**9
        scheduler = get_scheduler(_SCHEDULES[self.optim.schedule], optimizer, **kwargs)
        # LearningRateMonitor logs train/lr/decay and train/lr/no_decay
        schedule = {"scheduler": scheduler, "interval": "step", "name": "train/lr"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}


def _outermost_init_frame(module: nn.Module) -> Any:
    """The frame of the most derived ``__init__`` running for ``module``.

    Lightning's ``save_hyperparameters`` merges the arguments of every ``__init__`` in the
    chain, so an argument that a subclass fixes (``super().__init__(nsp=False, **kwargs)``)
    would leak into the checkpoint and ``type(self)(**hparams)`` would fail. Starting from the
    outermost frame keeps exactly the arguments of the class that was constructed.
    """
    frame = inspect.currentframe().f_back  # type: ignore[union-attr]  # Objective.__init__
    while (frame.f_back is not None and frame.f_back.f_code.co_name == "__init__"
           and frame.f_back.f_locals.get("self") is module):
        frame = frame.f_back
    return frame


def _model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch without the loader's token count, which stays in ``batch`` for the
    throughput callback (:func:`plmkit.throughput.batch_tokens`)."""
    return {key: value for key, value in batch.items() if key != NUM_TOKENS_KEY}
