"""Failures: kills, torn saves, non-finite losses, bf16 on CPU, and bad input.

Every bad input is one line ``plmkit: error: ...`` on stderr, exit status 2, no traceback, and
nothing of an existing run is written over.
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import read_metrics

from plmkit.checkpoint_io import PARTIAL_SUFFIX, AtomicCheckpointIO, PlmkitModelCheckpoint
from plmkit.export import read_checkpoint

STEPS = 20


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory, documents) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_text("\n\n".join(documents[:400]), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, tokenizer) -> Path:
    path = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(str(path))
    return path


def _flags(corpus: Path, tokenizer: Path, *extra: object) -> list[str]:
    return [str(a) for a in (
        "fit", "--recipe", "bert_tiny",
        "--data.corpus", corpus,
        "--data.tokenizer", tokenizer,
        "--data.max_length", 64,
        "--data.batch_size", 8,
        "--data.num_workers", 0,
        "--trainer.limit_val_batches", 0,
        "--trainer.log_every_n_steps", 1,
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        *extra,
    )]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, corpus_file, tokenizer_dir) -> Path:
    """A finished 4-step bert_tiny run (checkpoint every 2 steps)."""
    from plmkit.cli import main

    run_dir = tmp_path_factory.mktemp("base") / "run"
    code = main(_flags(corpus_file, tokenizer_dir, "--trainer.max_steps", 4,
                       "--checkpoint.every_n_train_steps", 2,
                       "--trainer.default_root_dir", run_dir))
    assert code == 0
    return run_dir


def _one_line_error(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("plmkit: error:")]
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(run_dir: Path) -> dict[str, str]:
    """Content hash of every file of a run folder."""
    return {str(p.relative_to(run_dir)): _digest(p) for p in sorted(run_dir.rglob("*"))
            if p.is_file()}


# ------------------------------------------------------------------------ atomic saves
def test_a_save_that_dies_mid_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "weights": torch.arange(10_000.0)}, path)
    seen_mid_write = []

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 the first bytes of a checkpoint")  # then the process "dies"
        f.flush()
        # mid-write, the target still holds the complete previous checkpoint
        seen_mid_write.append(torch.load(path, weights_only=True)["step"])
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "weights": torch.zeros(10_000)}, path)
    monkeypatch.undo()
    assert seen_mid_write == [1]
    assert torch.load(path, weights_only=True)["step"] == 1
    assert not list(path.parent.glob(f"*{PARTIAL_SUFFIX}"))
    # a SIGKILL leaves its partial file: the next save in the folder removes it
    stale = path.parent / f".tmp-999999-0{PARTIAL_SUFFIX}"
    stale.write_bytes(b"torn")
    AtomicCheckpointIO().save_checkpoint({"step": 3}, path)
    assert not stale.exists() and torch.load(path, weights_only=True)["step"] == 3


def test_last_checkpoint_link_is_swapped_atomically(tmp_path):
    class Trainer:
        is_global_zero = True

        class strategy:  # noqa: N801
            @staticmethod
            def barrier() -> None:
                pass

    for step in (1, 2):
        (tmp_path / f"step={step}.ckpt").write_text(str(step))
        PlmkitModelCheckpoint._link_checkpoint(Trainer, str(tmp_path / f"step={step}.ckpt"),
                                               str(tmp_path / "last.ckpt"))
        assert (tmp_path / "last.ckpt").is_symlink()
        assert (tmp_path / "last.ckpt").read_text() == str(step)
    assert not list(tmp_path.glob(f"*{PARTIAL_SUFFIX}"))


def _losses(run_dir: Path, version: int) -> dict[int, tuple[float, float]]:
    """(loss, batch fingerprint) per step of one attempt's metrics.csv."""
    with open(run_dir / "logs" / f"version_{version}" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    return {int(r["step"]): (float(r["train/loss"]), float(r["train/batch_fingerprint"]))
            for r in rows}


def test_sigkill_during_a_save_at_a_random_step_then_resume_is_exact(
    tmp_path, corpus_file, tokenizer_dir
):
    """SIGKILL while the victim writes a checkpoint (a partial file is seen), at a random step;
    ``last.ckpt`` loads, and the resumed run's losses equal an unbroken run's bitwise."""
    flags = _flags(corpus_file, tokenizer_dir,
                   "--trainer.max_steps", STEPS,
                   "--checkpoint.every_n_train_steps", 1,
                   "--checkpoint.save_top_k", 0,  # only last.ckpt, every step
                   "--model.optim.schedule", "constant",
                   "--model.optim.warmup_steps", 0,
                   "--trainer.callbacks+=plmkit.callbacks.BatchFingerprint")
    command = [sys.executable, "-m", "plmkit", *flags, "--trainer.default_root_dir"]
    env = dict(os.environ)
    whole, victim = tmp_path / "whole", tmp_path / "victim"
    reference_log = open(tmp_path / "reference.log", "w")  # noqa: SIM115
    reference = subprocess.Popen([*command, str(whole)], env=env, stdout=reference_log,
                                 stderr=subprocess.STDOUT)
    kill_at = random.SystemRandom().randint(3, 15)  # the save after step kill_at
    victim_log = open(tmp_path / "victim.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([*command, str(victim)], env=env, stdout=victim_log,
                            stderr=subprocess.STDOUT)
    checkpoints = victim / "checkpoints"
    seen: set[str] = set()
    while proc.poll() is None:
        if checkpoints.is_dir():
            partial = [e.name for e in os.scandir(checkpoints) if e.name.endswith(PARTIAL_SUFFIX)]
            seen.update(partial)
            # .tmp-<pid>-<n>.partial is the (n+1)-th save, written after step n+1
            if any(int(name.rsplit("-", 1)[1].split(".")[0]) + 1 >= kill_at for name in partial):
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.0005)
    proc.wait()
    victim_log.close()
    assert proc.returncode == -signal.SIGKILL, (
        f"the run ended (status {proc.returncode}) before its kill at {kill_at}:\n"
        + (tmp_path / "victim.log").read_text()[-3000:])
    assert seen, "no save was seen in progress"

    last = checkpoints / "last.ckpt"
    step = int(read_checkpoint(last)["global_step"])  # loads: the kill tore nothing
    assert kill_at - 1 <= step < STEPS
    resumed = subprocess.run([*command, str(victim), "--ckpt_path", "last"], env=env,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list(checkpoints.glob(f"*{PARTIAL_SUFFIX}"))  # swept by the resumed run
    assert reference.wait(timeout=900) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    reference_log.close()

    expected, got = _losses(whole, 0), _losses(victim, 1)
    assert sorted(got) == list(range(step, STEPS)), (kill_at, step, sorted(got))
    for s in range(step, STEPS):
        assert got[s] == expected[s], f"step {s} after a kill at {kill_at}: {got[s]} vs " \
                                      f"{expected[s]}"


# ------------------------------------------------------------------- numerical safety
def _poison(monkeypatch, calls: set[int]) -> None:
    """Make BertObjective's loss NaN on the given compute_loss calls (counted from 0; the
    call on the meta device that measures the FLOPs does not count)."""
    from plmkit.plugins.bert.model import BertObjective

    original = BertObjective.compute_loss
    counter = {"n": 0}

    def compute_loss(self, batch):
        loss, metrics = original(self, batch)
        if loss.is_meta:
            return loss, metrics
        counter["n"] += 1
        if counter["n"] - 1 in calls:
            loss = loss * float("nan")
        return loss, metrics

    monkeypatch.setattr(BertObjective, "compute_loss", compute_loss)


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(
    run_plmkit, monkeypatch, tmp_path, corpus_file, tokenizer_dir
):
    _poison(monkeypatch, {5})
    run_dir = tmp_path / "run"
    line = _one_line_error(*run_plmkit(*_flags(
        corpus_file, tokenizer_dir, "--trainer.max_steps", 10,
        "--checkpoint.every_n_train_steps", 2, "--trainer.default_root_dir", run_dir))[::2])
    assert "the loss became nan at step 5" in line and "on_nonfinite skip" in line
    ckpt = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_nonfinite_loss_skip_drops_the_update_and_counts_it(
    tiny_fit, monkeypatch, corpus_file, tokenizer_dir
):
    _poison(monkeypatch, {2, 3})
    run_dir = tiny_fit("bert_tiny", "--data.corpus", corpus_file, "--data.tokenizer",
                       tokenizer_dir, "--data.max_length", 64, "--data.batch_size", 8,
                       "--trainer.limit_val_batches", 0, "--model.on_nonfinite", "skip",
                       steps=8)
    rows = [r for r in read_metrics(run_dir) if r.get("train/nonfinite_skipped")]
    assert [float(r["train/nonfinite_skipped"]) for r in rows][-1] == 2
    ckpt = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 8 and ckpt["plmkit"]["nonfinite_skipped"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    # AdamW counts only the 6 updates it applied: the 2 skipped steps changed nothing
    steps = {float(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}
    assert steps == {6.0}


def test_bf16_mixed_trains_on_cpu(run_plmkit, tmp_path, base_run, corpus_file, tokenizer_dir):
    run_dir = tmp_path / "bf16"
    code, _, err = run_plmkit(*_flags(corpus_file, tokenizer_dir, "--trainer.max_steps", 4,
                                      "--trainer.precision", "bf16-mixed",
                                      "--trainer.default_root_dir", run_dir))
    assert code == 0, err[-2000:]
    bf16 = {int(r["step"]): float(r["train/loss"]) for r in read_metrics(run_dir)
            if r.get("train/loss")}
    fp32 = {int(r["step"]): float(r["train/loss"]) for r in read_metrics(base_run)
            if r.get("train/loss")}
    assert sorted(bf16) == [0, 1, 2, 3]
    # same weights and batch at step 0: autocast changes the loss, by a little
    assert bf16[0] != fp32[0] and abs(bf16[0] - fp32[0]) < 0.05 * fp32[0]
    state = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())


# ------------------------------------------------------------------------- bad input
def test_resume_from_a_checkpoint_of_another_objective(run_plmkit, tmp_path, base_run):
    before = _snapshot(base_run)
    run_dir = tmp_path / "roberta"
    line = _one_line_error(*run_plmkit(
        "fit", "--recipe", "roberta_tiny", "--ckpt_path", base_run / "checkpoints" / "last.ckpt",
        "--trainer.default_root_dir", run_dir)[::2])
    assert "trained with objective 'bert', not 'roberta'" in line
    assert not run_dir.exists() and _snapshot(base_run) == before


def test_resume_with_another_tokenizer(run_plmkit, tmp_path, base_run, documents, corpus_file,
                                       tokenizer_dir):
    from plmkit.data.tokenizer import train_tokenizer

    other = tmp_path / "other-tokenizer"
    train_tokenizer(documents[:300], "wordpiece", 600, show_progress=False).save_pretrained(
        str(other))
    before = _snapshot(base_run)
    line = _one_line_error(*run_plmkit(*_flags(
        corpus_file, other, "--trainer.max_steps", 5, "--trainer.default_root_dir", base_run,
        "--ckpt_path", "last"))[::2])
    assert "is not the tokenizer" in line and str(other) in line
    assert _snapshot(base_run) == before
    # the tokenizer the run was trained with passes the check and the run resumes
    copy = tmp_path / "copy"
    shutil.copytree(base_run, copy)
    code, _, err = run_plmkit(*_flags(corpus_file, tokenizer_dir, "--trainer.max_steps", 5,
                                      "--trainer.default_root_dir", copy, "--ckpt_path", "last"))
    assert code == 0, err[-2000:]
    assert read_checkpoint(copy / "checkpoints" / "last.ckpt")["global_step"] == 5


def test_recipe_of_an_objective_whose_plugin_is_not_installed(run_plmkit, tmp_path):
    recipe = tmp_path / "xlm.yaml"
    recipe.write_text("# an XLM recipe\nmodel:\n  class_path: plmkit.plugins.xlm.XlmObjective\n")
    line = _one_line_error(*run_plmkit("fit", "--recipe", recipe,
                                       "--trainer.default_root_dir", tmp_path / "run")[::2])
    assert "no installed plugin provides" in line and "plmkit.plugins.xlm" in line
    assert not (tmp_path / "run").exists()


def test_cached_corpus_with_a_token_id_beyond_the_tokenizer(
    run_plmkit, tmp_path, corpus_file, tokenizer_dir, documents
):
    """The tokenized-corpus cache is keyed by the tokenizer, so this takes a cache entry that
    was copied or corrupted: a smaller tokenizer's key holding a larger tokenizer's ids."""
    from plmkit.data.datamodule import PretrainDataModule, default_cache_dir
    from plmkit.data.tokenizer import train_tokenizer

    small = tmp_path / "small-tokenizer"
    train_tokenizer(documents[:200], "wordpiece", 300, show_progress=False).save_pretrained(
        str(small))

    def key(tokenizer_path: Path) -> str:
        dm = PretrainDataModule(corpus=str(corpus_file), tokenizer=str(tokenizer_path))
        return dm.tokenized_key(dm._resolve_tokenizer([]))

    cache = default_cache_dir() / "tokenized"
    big_key, small_key = key(tokenizer_dir), key(small)
    if not (cache / big_key).exists():  # the base run usually made it already
        dm = PretrainDataModule(corpus=str(corpus_file), tokenizer=str(tokenizer_dir))

        class Objective:
            @staticmethod
            def special_tokens() -> list[str]:
                return []

        dm.prepare(Objective())
    shutil.rmtree(cache / small_key, ignore_errors=True)
    shutil.copytree(cache / big_key, cache / small_key)
    run_dir = tmp_path / "run"
    try:
        line = _one_line_error(*run_plmkit(*_flags(
            corpus_file, small, "--trainer.max_steps", 2,
            "--trainer.default_root_dir", run_dir))[::2])
    finally:
        shutil.rmtree(cache / small_key, ignore_errors=True)
    assert "holds token id" in line and "only" in line
    assert not list(run_dir.glob("checkpoints/*.ckpt"))


def test_corpus_that_disappeared_before_a_resume(run_plmkit, tmp_path, documents,
                                                 tokenizer_dir):
    """plmkit's choice: a clear error, not training on from the cache. The cache key covers
    the corpus files, and a resume that cannot read its data cannot promise the batches of
    an unbroken run; restore the file (or point --data.corpus at it) and resume."""
    corpus = tmp_path / "gone.txt"
    corpus.write_text("\n\n".join(documents[:300]), encoding="utf-8")
    run_dir = tmp_path / "run"
    code, _, err = run_plmkit(*_flags(corpus, tokenizer_dir, "--trainer.max_steps", 2,
                                      "--trainer.default_root_dir", run_dir))
    assert code == 0, err[-2000:]
    before = _snapshot(run_dir)
    corpus.unlink()
    line = _one_line_error(*run_plmkit(*_flags(corpus, tokenizer_dir, "--trainer.max_steps", 4,
                                              "--trainer.default_root_dir", run_dir,
                                              "--ckpt_path", "last"))[::2])
    assert str(corpus) in line and "does not exist" in line
    assert _snapshot(run_dir) == before


def test_max_length_above_the_models_positions(run_plmkit, tmp_path, corpus_file,
                                               tokenizer_dir):
    run_dir = tmp_path / "run"
    line = _one_line_error(*run_plmkit(*_flags(corpus_file, tokenizer_dir, "--data.max_length",
                                              4096, "--trainer.default_root_dir", run_dir))[::2])
    assert "data.max_length 4096 is above the 512 positions" in line
    assert "--model.max_position_embeddings" in line
    assert not run_dir.exists()


def test_output_directory_that_holds_another_run(run_plmkit, base_run, corpus_file,
                                                 tokenizer_dir):
    before = _snapshot(base_run)
    line = _one_line_error(*run_plmkit(*_flags(corpus_file, tokenizer_dir,
                                              "--trainer.default_root_dir", base_run))[::2])
    assert "already holds a run" in line and "--overwrite true" in line
    assert _snapshot(base_run) == before
