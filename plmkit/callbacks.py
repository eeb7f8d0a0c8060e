"""Lightning callbacks: the monitors every run gets, and small ones for debugging.

:func:`monitors` gives every ``plmkit fit`` Lightning's ``LearningRateMonitor`` (``train/lr/*``,
one per parameter group) and plmkit's :class:`~plmkit.throughput.ThroughputMonitor` (tokens/s
and MFU, see :mod:`plmkit.throughput`). :func:`display` gives it Lightning's progress bar and
model summary without what does not apply to a pretraining run (an epoch total of -2 when the
run is bounded by steps, a FLOPs count of 0).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    Callback,
    LearningRateMonitor,
    ModelSummary,
    ProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.callbacks import RichProgressBar as LightningRichProgressBar
from lightning.pytorch.callbacks import ThroughputMonitor as LightningThroughputMonitor
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE
from lightning.pytorch.utilities.model_summary.model_summary import (
    _format_summary_table,
    get_formatted_model_size,
    get_human_readable_count,
)

from plmkit.throughput import ThroughputMonitor


def monitors(callbacks: list[Callback], logging: bool) -> list[Callback]:
    """The monitors to add to ``callbacks``: those of a kind the user has not configured.

    Args:
        callbacks: the callbacks the trainer already has.
        logging: whether the trainer has a logger (``LearningRateMonitor`` requires one).
    """
    added: list[Callback] = []
    if logging and not any(isinstance(c, LearningRateMonitor) for c in callbacks):
        added.append(LearningRateMonitor(logging_interval="step"))
    if not any(isinstance(c, LightningThroughputMonitor) for c in callbacks):
        added.append(ThroughputMonitor())
    return added


def display(callbacks: list[Callback], progress_bar: bool, model_summary: bool
            ) -> list[Callback]:
    """plmkit's progress bar and model summary, for those ``callbacks`` lack and the trainer
    shows (``progress_bar``: ``enable_progress_bar``, ``model_summary``:
    ``enable_model_summary``); Lightning then adds neither of its own."""
    added: list[Callback] = []
    if progress_bar and not any(isinstance(c, ProgressBar) for c in callbacks):
        added.append(RichProgressBar() if _RICH_AVAILABLE else TQDMProgressBar())
    if model_summary and not any(isinstance(c, ModelSummary) for c in callbacks):
        added.append(PretrainModelSummary())
    return added


class RichProgressBar(LightningRichProgressBar):
    """Lightning's rich progress bar; a run bounded by steps shows ``Epoch 2``, not
    ``Epoch 2/-2`` (Lightning sets ``max_epochs`` to -1 when only ``max_steps`` is given)."""

    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        # as wide as the validation description, as Lightning pads it, so the bar does not jump
        return f"Epoch {current_epoch}".ljust(len(self.validation_description))


class PretrainModelSummary(ModelSummary):
    """Lightning's model summary (drawn with rich when it is installed) without its FLOPs.

    Lightning counts FLOPs only for a module with an ``example_input_array`` and prints 0
    otherwise; a run's FLOPs are counted by :mod:`plmkit.throughput` and logged as
    ``train/device/flops_per_sec``.
    """

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int,
                  trainable_parameters: int, model_size: float,
                  total_training_modes: dict[str, int], total_flops: int,
                  **summarize_kwargs: Any) -> None:
        columns = [column for column in summary_data if column[0] != "FLOPs"]
        if not _RICH_AVAILABLE:
            table = _format_summary_table(total_parameters, trainable_parameters, model_size,
                                          total_training_modes, total_flops, *columns)
            # the last line is 'Total Flops'
            logging.getLogger("lightning.pytorch.callbacks.model_summary").info(
                "\n" + table.rsplit("\n", 1)[0])
            return
        from rich import get_console
        from rich.table import Table

        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in columns:
            table.add_column(name, style="dim" if name == " " else None, no_wrap=name == "Name",
                             justify="left" if name in (" ", "Name", "Type", "Mode") else "right")
        for row in zip(*(values for _, values in columns)):
            table.add_row(*row)
        totals = Table.grid(expand=True)
        for label, value in (
            ("Trainable params", get_human_readable_count(trainable_parameters)),
            ("Non-trainable params",
             get_human_readable_count(total_parameters - trainable_parameters)),
            ("Total params", get_human_readable_count(total_parameters)),
            ("Total estimated model params size (MB)", get_formatted_model_size(model_size)),
            ("Modules in train mode", total_training_modes["train"]),
            ("Modules in eval mode", total_training_modes["eval"]),
        ):
            totals.add_row(f"[bold]{label}[/]: {value}")
        console = get_console()
        console.print(table)
        console.print(totals)


class BatchFingerprint(L.Callback):
    """Logs ``train/batch_fingerprint``: a number that identifies the batch of each step.

    Useful to check that a resumed run sees exactly the batches of an unbroken one:
    ``--trainer.callbacks+=plmkit.callbacks.BatchFingerprint``.
    """

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        total = 0
        for key, value in sorted(batch.items()):
            if isinstance(value, torch.Tensor) and value.dtype in (torch.long, torch.int):
                weights = torch.arange(1, value.numel() + 1, device=value.device)
                total += int((value.flatten().long() * weights).sum()) * (len(key) + 1)
        pl_module.log("train/batch_fingerprint", float(total % 1_000_003))
