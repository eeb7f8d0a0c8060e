"""Distributed training of plmkit objectives, through Lightning strategies only.

A recipe never names a strategy; one flag picks it (see docs/distributed.md)::

    --trainer.strategy ddp                  DDP (CPU with gloo, GPUs with NCCL)
    --trainer.strategy fsdp2                FSDP2 (``fully_shard``) on CPU or GPUs: this module's
                                            :class:`FSDP2Strategy`, a ``ModelParallelStrategy``
    --trainer.strategy lightning.pytorch.strategies.ModelParallelStrategy    the same, spelled out
    --trainer.strategy fsdp                 Lightning's FSDPStrategy (FSDP1, GPUs only); plmkit
                                            fills in its wrap policy from ``block_classes()``

What this module supplies, called by :meth:`plmkit.objective.Objective.configure_model`:

* :func:`parallelize` (torchtitan style): with a device mesh from ``ModelParallelStrategy``,
  ``fully_shard`` every repeated block (``objective.block_classes()``), then the root, over
  all ranks. Parameters shared between modules (ELECTRA's generator and discriminator
  embeddings, T5's ``shared`` / ``embed_tokens``, tied output layers) stay in the root's group
  and stay shared; :func:`parallelize` checks that they do. The root unit is a
  :class:`LossModule` whose ``forward(batch)`` is ``objective.compute_loss(batch)``: methods
  call parts of their model directly (``model.bert(...)``, a head on masked positions), and
  FSDP2 gathers a unit's parameters only when that unit's ``forward`` runs.
* :func:`adapt_strategy`: fills in ``FSDPStrategy``'s ``auto_wrap_policy`` (and its activation
  checkpointing policy when the objective asks for it) from ``block_classes()``, and makes
  ``ModelParallelStrategy`` write one consolidated checkpoint file (what ``plmkit export``,
  resume checks and the atomic CheckpointIO work on) instead of a folder of shards.
* :func:`apply_activation_checkpointing`: ``torch.distributed._composable.checkpoint`` on
  every block; unlike wrapper modules it keeps parameter names, so checkpoints and exports are
  the same with and without it.

* :class:`GlobalBatchFingerprint`: a callback that logs a number identifying the *global*
  batch of each step (rows, masks and labels of all ranks together), the same for any number
  of ranks when the data and the masks do not depend on the world size.

Importing this module registers the ``fsdp2`` strategy name with Lightning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy, StrategyRegistry
from torch import Tensor, nn

log = logging.getLogger("plmkit")

FSDP2 = "fsdp2"


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 over every rank: ``ModelParallelStrategy`` with a 1-D data-parallel mesh.

    ``ModelParallelStrategy`` on its own puts the processes of one node on a "tensor_parallel"
    mesh dimension; plmkit objectives implement no tensor parallelism, so this strategy puts
    them all on "data_parallel" (:func:`parallelize` flattens any mesh anyway). Checkpoints are
    one consolidated file, assembled on rank 0.

    Args:
        process_group_backend: ``gloo`` on CPU and ``nccl`` on GPUs unless given.
        timeout: timeout of collective operations.
    """

    def __init__(
        self,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size="auto",
            save_distributed_checkpoint=False,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes
        if self._tensor_parallel_size == "auto":
            self._tensor_parallel_size = 1
        super().setup_environment()


if FSDP2 not in StrategyRegistry:
    StrategyRegistry.register(
        FSDP2, FSDP2Strategy,
        description="FSDP2 (fully_shard) over all ranks; plmkit's ModelParallelStrategy",
    )


# ------------------------------------------------------------------------------ helpers
def _classes(block_classes: Iterable[type[nn.Module]]) -> tuple[type[nn.Module], ...]:
    return tuple(block_classes)


def blocks(model: nn.Module, block_classes: Iterable[type[nn.Module]]) -> list[nn.Module]:
    """Every instance of a block class in ``model`` (pre-order, each module once)."""
    classes = _classes(block_classes)
    return [m for m in model.modules() if classes and isinstance(m, classes)]


def _outermost(model: nn.Module, block_classes: Iterable[type[nn.Module]]) -> list[nn.Module]:
    classes = _classes(block_classes)
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if classes and isinstance(child, classes):
                found.append(child)
            else:
                visit(child)

    visit(model)
    return list({id(m): m for m in found}.values())


def shared_parameters(model: nn.Module) -> list[list[str]]:
    """Groups of parameter names that are one tensor (tied or shared modules)."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def check_shared(model: nn.Module, groups: list[list[str]]) -> None:
    """Raise if a group of :func:`shared_parameters` no longer names a single tensor."""
    for names in groups:
        params = {id(model.get_parameter(name)) for name in names}
        if len(params) != 1:
            raise RuntimeError(
                f"sharding broke the parameters shared by {', '.join(names)}: they are no "
                "longer one tensor; keep modules that share parameters in one FSDP group"
            )


def data_parallel_mesh(mesh: Any) -> Any:
    """The 1-D mesh over which plmkit shards: ``mesh`` itself, its only non-trivial
    dimension, or all its dimensions flattened (plmkit does no tensor parallelism)."""
    if mesh.ndim == 1:
        return mesh
    names = mesh.mesh_dim_names
    sizes = tuple(mesh.shape)
    wide = [name for name, size in zip(names, sizes) if size > 1]
    if len(wide) <= 1:
        return mesh[wide[0] if wide else names[0]]
    return mesh[tuple(names)]._flatten("plmkit_fsdp")


# ------------------------------------------------------------------- applied to a model
class LossModule(nn.Module):
    """The root FSDP2 unit of an objective: ``forward(batch) = objective.compute_loss(batch)``.

    It holds ``objective.model`` as its submodule (so the root group owns every parameter
    outside the blocks) but is not itself a submodule of the objective, so parameter names,
    state dicts and checkpoints are unchanged.
    """

    def __init__(self, objective: Any) -> None:
        super().__init__()
        self.model = objective.model
        object.__setattr__(self, "_objective", objective)  # not registered: no cycle

    def forward(self, batch: dict[str, Any]) -> Any:
        return self._objective.compute_loss(batch)


def apply_activation_checkpointing(
    model: nn.Module, block_classes: Iterable[type[nn.Module]]
) -> int:
    """Recompute every outermost block in the backward pass; returns how many.

    Uses the composable ``checkpoint`` (hooks, no wrapper module), so parameter names, and with
    them checkpoints and exports, do not change.
    """
    from torch.distributed._composable import checkpoint

    found = _outermost(model, block_classes)
    for block in found:
        checkpoint(block)
    return len(found)


def parallelize(
    model: nn.Module,
    device_mesh: Any,
    block_classes: Iterable[type[nn.Module]],
    activation_checkpointing: bool = False,
    compile: bool = False,
    reshard_after_forward: bool = True,
    root: nn.Module | None = None,
) -> nn.Module:
    """Shard ``model`` in place with FSDP2 over ``device_mesh`` (torchtitan's recipe).

    Order: activation checkpointing, ``torch.compile`` of each block, ``fully_shard`` of each
    block (innermost first), then of ``root`` (default ``model``; it must contain ``model``),
    whose group holds every parameter outside the blocks (embeddings, heads, and so every
    shared or tied parameter). Mixed precision is Lightning's (``--trainer.precision
    bf16-mixed`` autocasts); parameters stay float32. Returns the root.
    """
    from torch.distributed.fsdp import fully_shard

    mesh = data_parallel_mesh(device_mesh)
    shared = shared_parameters(model)
    if activation_checkpointing:
        apply_activation_checkpointing(model, block_classes)
    found = blocks(model, block_classes)
    if not found:
        log.warning("no module of the objective's block classes found: FSDP2 shards the whole "
                    "model as one unit")
    for block in reversed(found):  # children before their parents
        if compile:
            block.compile()
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    root = model if root is None else root
    fully_shard(root, mesh=mesh, reshard_after_forward=reshard_after_forward)
    check_shared(model, shared)
    return root


# -------------------------------------------------------------------------- strategies
def resolve_strategy(value: Any) -> Any:
    """A strategy flag given as a class (``lightning.pytorch.strategies.ModelParallelStrategy``
    or ``ModelParallelStrategy``) without arguments -> an instance of it.

    jsonargparse keeps such a value as a plain string (``Trainer(strategy=...)`` also accepts
    registered names), which Lightning would then reject as an unknown name. Registered names
    (``ddp``, ``fsdp``, ``fsdp2`` ...) and anything else are returned unchanged.
    """
    if not isinstance(value, str) or value.lower() in StrategyRegistry:
        return value
    import importlib

    from lightning.pytorch.strategies import Strategy

    module, _, name = value.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module or "lightning.pytorch.strategies"), name)
    except (ImportError, AttributeError, ValueError):
        return value  # Lightning reports the unknown name
    if isinstance(cls, type) and issubclass(cls, Strategy):
        return cls()
    return value


def strategy_checkpoints(strategy: Any) -> bool:
    """True when the strategy applies activation checkpointing itself (FSDPStrategy)."""
    return isinstance(strategy, FSDPStrategy)


def adapt_strategy(strategy: Any, objective: Any) -> None:
    """Fit a Lightning strategy to ``objective`` before its model is built.

    * ``FSDPStrategy`` without ``auto_wrap_policy``: wrap every ``block_classes()`` module; with
      ``objective.activation_checkpointing``: the same classes as its checkpointing policy.
    * ``ModelParallelStrategy``: consolidated single-file checkpoints (see the module doc).
    """
    if isinstance(strategy, FSDPStrategy):
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        classes = set(objective.block_classes())
        if classes and strategy.kwargs.get("auto_wrap_policy") is None:
            strategy.kwargs["auto_wrap_policy"] = ModuleWrapPolicy(classes)
        if (classes and getattr(objective, "activation_checkpointing", False)
                and not strategy._activation_checkpointing_kwargs):
            strategy._activation_checkpointing_kwargs = {"auto_wrap_policy":
                                                         ModuleWrapPolicy(classes)}
    elif isinstance(strategy, ModelParallelStrategy) and strategy._save_distributed_checkpoint:
        log.info("ModelParallelStrategy: plmkit writes consolidated single-file checkpoints")
        strategy._save_distributed_checkpoint = False


# ---------------------------------------------------------------------------- checking
class GlobalBatchFingerprint(Callback):
    """Logs ``train/global_batch_fingerprint``, a number that identifies the global batch.

    Every integer field of the batch contributes ``sum(value x (column + 1))`` per row, summed
    over rows and then over ranks (one all-reduce), so N ranks that split a global batch by
    rows log the same number as one process that trains on the whole of it. Use it to check
    that a sharded run sees the batches and masks of a single-process run:
    ``--trainer.callbacks+=plmkit.distributed.GlobalBatchFingerprint``.
    """

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        total = torch.zeros((), dtype=torch.float64, device=pl_module.device)
        for key, value in sorted(batch.items()):
            if not isinstance(value, Tensor) or value.ndim == 0:
                continue
            if value.dtype not in (torch.long, torch.int, torch.bool):
                continue
            rows = value.reshape(len(value), -1).long()
            weights = torch.arange(1, rows.shape[1] + 1, device=rows.device)
            # exact: far below 2**53 for any real batch
            total += float((rows * weights).sum()) * (len(key) + 1)
        total = trainer.strategy.reduce(total, reduce_op="sum")
        pl_module.log("train/global_batch_fingerprint", float(total) % 1_000_003)


def default_precision(accelerator: Any = "auto") -> str:
    """The precision of a run without ``--trainer.precision``: ``bf16-mixed`` when
    ``accelerator`` is a CUDA GPU with bf16 arithmetic (Ampere or newer), else ``32-true``."""
    gpu = str(accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    # not emulated bf16 (V100, T4): slower than fp32 there
    native = gpu and torch.cuda.is_bf16_supported(including_emulation=False)
    return "bf16-mixed" if native else "32-true"
