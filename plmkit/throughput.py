"""Training FLOPs of a batch, counted rather than estimated, and the throughput callback.

:func:`flops_per_batch` runs the objective's own ``compute_loss`` and backward pass on one
collated batch of full-length fake examples under Lightning's ``measure_flops`` (torch's
``FlopCounterMode``), on a copy of the objective whose model is built on the meta device (no
memory, no arithmetic). So every method is counted the same way, whatever its towers, heads
or shared layers, and no method keeps a formula of its own.

The batch itself stays real, on the CPU: ops on batch tensors alone (the masked positions,
the ``attention_mask`` checks of transformers) run for real, so data-dependent shapes such as
the number of predicted tokens are exact, and any op that meets a meta tensor runs on meta.
If the count fails anyway, the 6N estimate (N = parameters outside the embeddings) is used
and the reason is logged once.

:class:`ThroughputMonitor` is Lightning's, fed with these FLOPs, the batch's rows and its
non-padding tokens; it also puts ``tokens/s`` and, when the device peak is known (GPUs),
``mfu`` on the progress bar."""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

import torch
from lightning.fabric.utilities.throughput import measure_flops
from lightning.pytorch.callbacks import ThroughputMonitor as _LightningThroughputMonitor
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map_only

from plmkit.data.loader import NUM_TOKENS_KEY

log = logging.getLogger("plmkit")

#: rows of the batch :func:`flops_per_token` measures (an average over a few masks)
_ROWS_PER_TOKEN_COUNT = 4
_warned: set[str] = set()
#: what FSDP, activation checkpointing and torch.compile insert into parameter names
_WRAPPERS = re.compile(r"(_fsdp_wrapped_module|_checkpoint_wrapped_module|_orig_mod)\.")


def flops_per_batch(objective: Any, rows: int, seq_len: int | None = None) -> float:
    """Training FLOPs (forward and backward) of one batch of ``rows`` full-length examples.

    Args:
        objective: a :class:`~plmkit.objective.Objective` with its tokenizer attached.
        rows: examples in the batch (the per-device batch size).
        seq_len: model input length (default: the objective's ``max_length``).
    """
    seq_len = seq_len or objective.max_length
    try:
        return float(_measure(objective, rows, seq_len))
    except Exception as exc:  # noqa: BLE001  (any failure of the count falls back to 6N)
        name = type(objective).__name__
        if name not in _warned:
            _warned.add(name)
            log.warning("FLOPs of %s could not be counted on the meta device (%s: %s); "
                        "MFU uses the 6N estimate", name, type(exc).__name__,
                        str(exc).splitlines()[0] if str(exc) else "")
        return estimate_flops_per_token(objective) * rows * seq_len


def flops_per_token(objective: Any, seq_len: int | None = None) -> float:
    """Training FLOPs per model input position of a full-length batch."""
    seq_len = seq_len or objective.max_length
    rows = _ROWS_PER_TOKEN_COUNT
    return flops_per_batch(objective, rows, seq_len) / (rows * seq_len)


def estimate_flops_per_token(objective: Any) -> float:
    """The 6N estimate: 6 x the parameters outside the embeddings."""
    n = sum(p.numel() for name, p in objective.named_parameters() if "embed" not in name)
    return 6.0 * n


def fake_examples(tokenizer: Any, rows: int, length: int, seed: int = 0) -> list[dict[str, Tensor]]:
    """``rows`` collator examples of ``length`` random ordinary tokens, two tokens a word,
    sentences of 24 tokens, one document each."""
    generator = torch.Generator().manual_seed(seed)
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
    ordinary = torch.arange(len(tokenizer))
    ordinary = ordinary[~torch.isin(ordinary, special)]
    positions = torch.arange(length)
    return [{
        "input_ids": ordinary[torch.randint(len(ordinary), (length,), generator=generator)],
        "word_ids": positions // 2,
        "sentence_ids": positions // 24,
        "doc_ids": torch.zeros(length, dtype=torch.long),
    } for _ in range(rows)]


def _measure(objective: Any, rows: int, seq_len: int) -> int:
    if objective.tokenizer is None:
        raise RuntimeError("the objective has no tokenizer attached")
    clone = _meta_clone(objective)
    examples = fake_examples(objective.tokenizer, rows, objective.block_length(seq_len))
    batch = clone.build_collator(seed=0)(examples)  # on the CPU, like the clone's data
    batch.pop(NUM_TOKENS_KEY, None)
    with _MetaWhereNeeded():
        return measure_flops(clone.model, lambda: clone.compute_loss(batch)[0],
                             loss_fn=lambda loss: loss)


def _meta_clone(objective: Any) -> Any:
    """A shallow copy of ``objective`` (no trainer) whose ``model`` is a fresh meta build.

    The copy has its own attributes, so state that ``compute_loss`` keeps (XLNet's memory)
    never reaches the real objective. Its real data lives on the CPU whatever device the
    objective trains on: the batch, ``self.device``, and the integer buffers (index tables
    such as ELMo's characters), which are copied from the real model since they hold data.
    """
    clone = copy.copy(objective)  # Lightning's __getstate__ leaves the trainer out
    for key in ("_modules", "_parameters", "_buffers"):
        clone.__dict__[key] = objective.__dict__[key].copy()
    clone.__dict__["_device"] = torch.device("cpu")  # LightningModule.device
    with torch.device("meta"):
        model = clone.build_model().to("meta")  # also what legacy constructors made real
    real = {_WRAPPERS.sub("", name): buffer for name, buffer in (
        objective.model.named_buffers() if objective.model is not None else ())}
    for name, buffer in model.named_buffers():
        source = real.get(name)
        if (type(source) is Tensor and not source.is_meta and not buffer.is_floating_point()
                and source.shape == buffer.shape):
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner)._buffers[leaf] = source.cpu()
    clone.model = model.train()
    clone.training = True
    return clone


class _MetaWhereNeeded(TorchDispatchMode):
    """Runs an op that involves the meta model on the meta device, the rest for real.

    An op on real tensors alone (the batch) runs for real. An op that mixes meta and real
    tensors is tried as it is, which keeps the real indices of ``hidden[mask]`` and so the
    exact number of selected rows; if that fails or gives a real tensor, it runs again with
    every tensor on meta (only shapes matter to the FLOP count).
    """

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and "device" in kwargs:
            # a tensor stays where it is: the batch real (``mask.to(hidden.device)`` followed
            # by ``mask.all()``), model outputs on meta (no data to copy out)
            source, target = args[0].device, torch.device(kwargs["device"])
            if (source.type == "meta") != (target.type == "meta"):
                kwargs = {**kwargs, "device": source}
        metas = [t.is_meta for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        if not any(metas) or all(metas):
            return func(*args, **kwargs)
        try:
            out = func(*args, **kwargs)
            if all(t.is_meta for t in tree_leaves(out) if isinstance(t, Tensor)):
                return out
        except (RuntimeError, NotImplementedError):
            pass
        args, kwargs = tree_map_only(Tensor, lambda t: t.to("meta"), (args, kwargs))
        return func(*args, **kwargs)


def batch_rows(batch: dict[str, Any]) -> int:
    """Examples in a collated batch (the first dimension of its first tensor)."""
    return next(v for v in batch.values() if isinstance(v, Tensor) and v.ndim).shape[0]


def batch_tokens(batch: dict[str, Any]) -> int:
    """Non-padding tokens of a batch, special tokens included: the loader's count, else the
    ``attention_mask`` sum, else every input position."""
    if NUM_TOKENS_KEY in batch:
        return int(batch[NUM_TOKENS_KEY])
    mask = batch.get("attention_mask")
    if isinstance(mask, Tensor):
        return int(mask.sum())
    return int(batch["input_ids"].numel())


class ThroughputMonitor(_LightningThroughputMonitor):
    """Lightning's ``ThroughputMonitor`` with plmkit's FLOPs, rows and tokens.

    Logged every ``log_every_n_steps`` under ``train/``: ``device/items_per_sec`` (non-padding
    tokens per second, special tokens included, on one device), ``device/samples_per_sec``,
    ``device/flops_per_sec``, ``device/mfu`` (GPUs) and, with several devices, the totals
    ``items_per_sec``, ``samples_per_sec`` and ``flops_per_sec``; rates are averages over the
    last ``window_size`` batches. The progress bar shows ``tokens/s`` (all devices) and
    ``mfu`` (per device). Validation gets the same under ``validate/`` without FLOPs.

    Args:
        window_size: batches in the rolling average.
    """

    def __init__(self, window_size: int = 10) -> None:
        super().__init__(batch_size_fn=batch_rows, length_fn=batch_tokens,
                         window_size=window_size)
        self._train_flops: float | None = None

    @rank_zero_only
    def on_train_start(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        rows = getattr(trainer.train_dataloader, "batch_size", None) or getattr(
            trainer.datamodule, "batch_size", None)
        if rows and self._train_flops is None:
            self._train_flops = flops_per_batch(pl_module, int(rows))
        pl_module.flops_per_batch = self._train_flops
        super().on_train_start(trainer, pl_module, *args)

    @rank_zero_only
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           *args: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, *args)
        throughput = self._throughputs.get(RunningStage.TRAINING)
        metrics = throughput.compute() if throughput is not None else {}
        tokens = metrics.get("items_per_sec", metrics.get("device/items_per_sec"))
        if tokens is not None:
            pl_module.log("tokens/s", float(tokens), prog_bar=True, logger=False,
                          rank_zero_only=True)
        if "device/mfu" in metrics:
            pl_module.log("mfu", float(metrics["device/mfu"]), prog_bar=True, logger=False,
                          rank_zero_only=True)

    @rank_zero_only
    def on_validation_start(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        pl_module.flops_per_batch = None  # training FLOPs do not describe a validation batch
        super().on_validation_start(trainer, pl_module, *args)

    @rank_zero_only
    def on_validation_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        pl_module.flops_per_batch = self._train_flops
        super().on_validation_end(trainer, pl_module, *args)
