"""Exact resume: N steps in one go == N/2 steps, save, resume in a fresh process, N/2 more."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_same_run

COMMON = [
    "--recipe", "bert_tiny",
    "--data.max_documents", "1000",
    "--data.shard_mb", "0.1",  # a sharded cache (six shards)
    "--data.num_workers", "1",
    "--model.optim.schedule", "constant",
    "--model.optim.warmup_steps", "0",
    "--checkpoint.every_n_train_steps", "10",
    "--trainer.log_every_n_steps", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--trainer.callbacks+=plmkit.callbacks.BatchFingerprint",
]


def test_resume_in_fresh_process_matches_unbroken_run(run_plmkit, tmp_path: Path):
    whole, half = tmp_path / "whole", tmp_path / "half"
    code, _, err = run_plmkit("fit", *COMMON, "--trainer.max_steps", "20",
                              "--trainer.default_root_dir", whole)
    assert code == 0, err[-2000:]
    # --ckpt_path auto (a scheduler's re-submitted command): starts fresh in an empty folder,
    # resumes from last.ckpt once there is one
    code, _, err = run_plmkit("fit", *COMMON, "--trainer.max_steps", "10",
                              "--trainer.default_root_dir", half, "--ckpt_path", "auto")
    assert code == 0, err[-2000:]
    resumed = subprocess.run(
        [sys.executable, "-m", "plmkit", "fit", *COMMON, "--trainer.max_steps", "20",
         "--trainer.default_root_dir", str(half), "--ckpt_path", "auto"],
        capture_output=True, text=True, env=dict(os.environ), timeout=900,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    assert_same_run(whole, half, 20)
    assert len(list((half / "logs").glob("version_*"))) == 2  # the first attempt's log is kept


def test_resume_refuses_a_run_folder_without_checkpoint(run_plmkit, tmp_path: Path):
    code, _, err = run_plmkit("fit", "--recipe", "bert_tiny", "--ckpt_path", "last",
                              "--trainer.default_root_dir", tmp_path / "empty")
    assert code == 2 and "no checkpoint to resume" in err


@pytest.mark.parametrize("save_last", [True, "link"])
def test_a_run_stopped_between_two_saves_keeps_the_step_it_stopped_at(tmp_path: Path,
                                                                      save_last):
    # --trainer.max_time stops training between two periodic saves (as every time-budget
    # stage of 'plmkit compare' does); last.ckpt must hold the step it stopped at, else the
    # next stage redoes the steps since the last save
    import lightning as L
    import torch
    from lightning.pytorch.demos.boring_classes import BoringModel

    from plmkit.checkpoint_io import PlmkitModelCheckpoint

    class StopAtStep7(L.Callback):  # as Lightning's Timer stops on time
        def on_train_batch_end(self, trainer, *args) -> None:
            trainer.should_stop = trainer.should_stop or trainer.global_step == 7

    checkpoint = PlmkitModelCheckpoint(dirpath=tmp_path, every_n_train_steps=5,
                                       save_last=save_last, enable_version_counter=False)
    trainer = L.Trainer(max_steps=100, callbacks=[checkpoint, StopAtStep7()], logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu")
    trainer.fit(BoringModel())
    assert trainer.global_step == 7
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 7
