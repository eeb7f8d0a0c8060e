"""Shared test fixtures: an isolated cache, a tiny tokenizer, packed examples, CLI runs."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch  # noqa: F401  (bind Lightning's log handlers to the real stderr)
import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test run gets its own plmkit cache (tokenizers, tokenized corpora)."""
    cache = tmp_path_factory.mktemp("plmkit-cache")
    os.environ["PLMKIT_CACHE"] = str(cache)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return cache


@pytest.fixture(scope="session")
def documents() -> list[str]:
    """The first 1500 documents of the bundled corpus (blank-line separated blocks)."""
    import gzip

    from plmkit.data.wordnet import corpus_path

    with gzip.open(corpus_path(), "rt", encoding="utf-8") as f:
        blocks = f.read().split("\n\n")
    return [b for b in blocks[:1500] if b.strip()]


@pytest.fixture(scope="session")
def tokenizer(documents: list[str]):
    """A small WordPiece tokenizer (vocab 2000) trained on ``documents``."""
    from plmkit.data.tokenizer import train_tokenizer

    return train_tokenizer(documents, "wordpiece", 2000, show_progress=False)


@pytest.fixture(scope="session")
def make_examples(documents: list[str], tokenizer) -> Callable[..., list[dict]]:
    """``make_examples(block_length, mode="document", n=256)``: packed collator examples."""
    import datasets
    import numpy as np

    from plmkit.data.packing import BlockDataset, pack
    from plmkit.data.preprocess import tokenize_corpus

    corpus = tokenize_corpus(
        datasets.Dataset.from_dict({"text": documents}), tokenizer.backend_tokenizer, num_proc=1
    )

    def make(block_length: int, mode: str = "document", n: int = 256) -> list[dict]:
        blocks = pack(corpus, np.arange(corpus.num_documents), block_length, mode,
                      separator_id=tokenizer.sep_token_id)
        dataset = BlockDataset(blocks)
        return [dataset[i] for i in range(min(n, len(dataset)))]

    return make


@pytest.fixture
def one_thread(request: pytest.FixtureRequest):
    """One intra-op thread for collator tests (as collators run in DataLoader workers; much
    faster on a busy 2-core machine); a test with "training" in its name keeps the default.
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    if "training" in request.node.name:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def run_plmkit(capsys: pytest.CaptureFixture) -> Callable[..., tuple[int, str, str]]:
    """Run the ``plmkit`` command in-process: ``code, out, err = run_plmkit("recipes")``."""
    from plmkit.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def export_run(run_plmkit) -> Callable[..., Path]:
    """``out = export_run(run_dir, out_dir, *flags)``: ``plmkit export`` of the run's
    ``last.ckpt`` into ``out_dir``; the test fails with the command's stderr if it fails."""

    def export(run_dir: Path, out: Path, *flags: str) -> Path:
        code, _, err = run_plmkit("export", Path(run_dir) / "checkpoints" / "last.ckpt", out,
                                  *flags)
        assert code == 0, err[-2000:]
        return Path(out)

    return export


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    """Rows of the CSV logs ``run_dir/logs/version_*/metrics.csv``, all attempts in order."""
    rows: list[dict[str, str]] = []
    versions = sorted((Path(run_dir) / "logs").glob("version_*"),
                      key=lambda p: int(p.name.split("_")[1]))
    for version in versions:
        with open(version / "metrics.csv", newline="") as f:
            rows.extend(csv.DictReader(f))
    return rows


def assert_same_run(whole: Path, resumed: Path, steps: int) -> None:
    """The resumed run trained on the same batch (``BatchFingerprint``) with the same loss
    (to a relative 1e-6) at each of the ``steps`` steps as the unbroken one."""
    def series(run_dir: Path) -> dict[int, tuple[float, float]]:
        return {int(r["step"]): (float(r["train/loss"]), float(r["train/batch_fingerprint"]))
                for r in read_metrics(run_dir) if r.get("train/loss")}

    expected, got = series(whole), series(resumed)
    assert sorted(expected) == sorted(got) and len(expected) == steps
    for step in sorted(expected):
        (loss_a, batch_a), (loss_b, batch_b) = expected[step], got[step]
        assert batch_a == batch_b, f"different batch at step {step}"
        # float32 rounding only: 1e-6 absolute was one ulp of a loss near 9, and a busy
        # machine once gave two
        assert math.isclose(loss_a, loss_b, rel_tol=1e-6), f"step {step}: {loss_a} vs {loss_b}"


def metric_series(run_dir: Path, name: str) -> list[float]:
    """The logged values of one metric, in step order."""
    return [float(r[name]) for r in read_metrics(run_dir) if r.get(name) not in (None, "")]


@pytest.fixture
def tiny_fit(run_plmkit, tmp_path: Path) -> Callable[..., Path]:
    """``run_dir = tiny_fit("bert_tiny", steps=60, *extra_flags)``: a short CPU training run.

    Uses the first 2000 documents of the bundled corpus, logs every step and returns the run
    folder (``logs/version_0/metrics.csv``, ``checkpoints/``, ``config.yaml``).
    """

    def fit(recipe: str, *extra: str, steps: int = 60, run_dir: Path | None = None) -> Path:
        run_dir = run_dir or tmp_path / recipe
        code, out, err = run_plmkit(
            "fit", "--recipe", recipe,
            "--trainer.default_root_dir", run_dir,
            "--trainer.max_steps", steps,
            "--trainer.log_every_n_steps", 1,
            "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false",
            "--data.max_documents", 2000,
            "--data.num_workers", 0,
            *extra,
        )
        assert code == 0, err[-3000:]
        return run_dir

    return fit


def falling(values: list[float], window: int = 10) -> bool:
    """True when the mean of the last ``window`` values is clearly below the first ones."""
    head = sum(values[:window]) / window
    tail = sum(values[-window:]) / window
    return tail < head * 0.9
