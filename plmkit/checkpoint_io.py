"""Atomic checkpoint files: a run killed at any moment never leaves a torn checkpoint.

:class:`AtomicCheckpointIO` (installed by ``plmkit fit`` unless ``--trainer.plugins`` names
another CheckpointIO) writes a checkpoint to a hidden temporary file in the target folder,
flushes and fsyncs it, then ``os.replace``-s it over the target and fsyncs the folder. A
SIGKILL during the write leaves the previous checkpoint in place plus a stale
``.tmp-<pid>-<n>.partial`` file, which the next save in that folder removes.

Lightning's own ``TorchCheckpointIO`` is not enough here: its transaction writes the temporary
file to the system temp folder, and when that is another filesystem the final move is a copy
straight into the target path. ``last.ckpt`` is covered too: ``save_last=True`` saves it as a
separate checkpoint through this CheckpointIO, and ``save_last="link"`` goes through
:class:`PlmkitModelCheckpoint`, which swaps the link in atomically as well.
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger("plmkit")

PARTIAL_SUFFIX = ".partial"


def _is_local(path: str | os.PathLike) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


def _local(path: str | os.PathLike) -> Path:
    text = str(path)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes local files atomically (temporary file + rename).

    Remote paths (``s3://`` ...) go to ``TorchCheckpointIO`` unchanged.
    """

    def __init__(self) -> None:
        super().__init__()
        self._counter = itertools.count()
        self._swept: set[Path] = set()

    def _sweep(self, folder: Path) -> None:
        """Remove partial files a killed process left behind (once per folder)."""
        if folder in self._swept:
            return
        self._swept.add(folder)
        own = f".tmp-{os.getpid()}-"
        for stale in folder.glob(f".tmp-*{PARTIAL_SUFFIX}"):
            if not stale.name.startswith(own):
                stale.unlink(missing_ok=True)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = _local(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._sweep(target.parent)
        # no "last" and no ".ckpt" in the name: Lightning's checkpoint discovery ignores it
        tmp = target.parent / f".tmp-{os.getpid()}-{next(self._counter)}{PARTIAL_SUFFIX}"
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)


class PlmkitModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``save_last="link"`` replaces ``last.ckpt`` atomically, and
    which keeps the step training stopped at.

    Lightning removes the old link and then creates the new one; a kill in between would leave
    no ``last.ckpt``. Here the new link is made under a temporary name and renamed over it.
    """

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        # Lightning writes last.ckpt at the end only when it wrote none before, so a run
        # stopped between two saves (--trainer.max_time, a time-budget stage of 'plmkit
        # compare') would resume from the last periodic save and train those steps again.
        if self.save_last and trainer.global_step > self._last_global_step_saved:
            candidates = self._monitor_candidates(trainer)
            if self.monitor is None and self.save_top_k != 0:  # the step's own checkpoint,
                self._save_topk_checkpoint(trainer, candidates)  # which "link" points to
            self._save_last_checkpoint(trainer, candidates)
        else:
            super().on_train_end(trainer, pl_module)

    @staticmethod
    def _link_checkpoint(trainer: Any, filepath: str, linkpath: str) -> None:
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            link = Path(linkpath)
            if link.is_dir() and not link.is_symlink():
                ModelCheckpoint._link_checkpoint(trainer, filepath, linkpath)
                return
            tmp = link.parent / f".tmp-{os.getpid()}-link{PARTIAL_SUFFIX}"
            tmp.unlink(missing_ok=True)
            try:
                os.symlink(os.path.relpath(filepath, link.parent), tmp)
            except OSError:  # no symlinks (Windows without privileges): an atomic copy
                import shutil

                shutil.copyfile(filepath, tmp)
            os.replace(tmp, link)
            _fsync_dir(link.parent)
        trainer.strategy.barrier()
