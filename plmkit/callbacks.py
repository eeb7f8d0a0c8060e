"""Lightning callbacks: the monitors every run gets, and small ones for debugging.

:func:`monitors` gives every ``plmkit fit`` Lightning's ``LearningRateMonitor`` (``train/lr/*``,
one per parameter group) and plmkit's :class:`~plmkit.throughput.ThroughputMonitor` (tokens/s
and MFU, see :mod:`plmkit.throughput`).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.callbacks import ThroughputMonitor as LightningThroughputMonitor

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
