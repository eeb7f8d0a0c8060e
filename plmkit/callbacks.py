"""Small Lightning callbacks plmkit offers for debugging and verification."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch


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
