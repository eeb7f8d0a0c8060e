"""The benchmark harness (benchmarks/): one tiny plmkit / baseline pair end to end, one collator
pair, the results schema, and the faithfulness of the T5 baseline port. No timing assertions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import harness, report
from benchmarks.baselines import T5SpanCorruptionPort, compute_input_and_target_lengths
from benchmarks.dataside import run_collators
from benchmarks.specs import RunConfig

TINY = {"size": "tiny", "seq": 64, "batch": 4, "steps": 1, "warmup": 1, "threads": 1,
        "workers": 0, "max_documents": 300}


@pytest.fixture(scope="module")
def pair() -> dict:
    """bert tiny, plmkit (Lightning Trainer) and baseline, each in a fresh subprocess."""
    return harness.compare(RunConfig(method="bert", **TINY), repeats=1, log=lambda _: None)


def test_train_pair_same_setup_and_schema(pair: dict):
    a, b = pair["plmkit"], pair["baseline"]
    for side in (a, b):
        assert side["tokens_per_sec"] > 0 and side["peak_memory_mb"] > 0
        assert side["flops_per_token"] > 0 and side["threads"] == 1
        assert {"step_seconds", "tokens_per_step", "runs_tokens_per_sec", "load"} <= set(side)
    # the same model configuration, batch, sequence length and precision on both sides
    assert pair["same_model_config"] is True
    assert a["model_configs"] == b["model_configs"]
    assert a["model_configs"]["model"]["num_hidden_layers"] == 2
    for key in ("batch", "seq", "precision", "threads", "workers", "size"):
        assert a["config"][key] == b["config"][key] == TINY.get(key, a["config"][key])
    assert a["config"]["side"] == "plmkit" and b["config"]["side"] == "baseline"
    # full blocks on both sides: the same tokens per step
    assert a["tokens_per_step"] == b["tokens_per_step"] == 4 * 64
    assert pair["ratio"] == pytest.approx(a["tokens_per_sec"] / b["tokens_per_sec"])


def test_collator_pair_and_report(pair: dict, tmp_path):
    cfg = RunConfig(method="bert_wwm", side="collators", **{**TINY, "batch": 16})
    collators = run_collators(cfg, min_seconds=0.05)
    assert collators["plmkit"]["examples_per_sec"] > 0
    assert collators["baseline"]["examples_per_sec"] > 0
    assert collators["plmkit"]["calls"] == collators["baseline"]["calls"] >= 3
    results = {
        "environment": {**harness.environment(1), "load_average_end": [0.0, 0.0, 0.0]},
        "command": "python -m benchmarks all", "train": [pair], "collators": [collators],
        "loader": [{"config": {**pair["config"], "side": "loader"}, "tokens_per_sec": 1e6,
                    "batches_per_sec": 10.0, "workers": 0}],
    }
    path = tmp_path / "cpu.json"
    path.write_text(json.dumps(results))
    page = tmp_path / "benchmarks.md"
    report.write([path], page)
    text = page.read_text()
    assert "| bert | 4 x 64 |" in text and "| bert_wwm |" in text
    assert "Pending" in text and "transformers" in text


def test_t5_port_is_faithful():
    """The Flax collator port: noise density ~0.15, mean noise span ~3, exact lengths."""
    raw, targets = compute_input_and_target_lengths(128)
    assert (raw, targets) == (141, 29)
    vocab = 1000
    port = T5SpanCorruptionPort(vocab, eos_id=2, pad_id=0, decoder_start_id=0,
                                input_length=128, target_length=targets, seed=0)
    rng = np.random.default_rng(1)
    examples = [{"input_ids": rng.integers(5, 800, raw).tolist()} for _ in range(64)]
    batch = port(examples)
    noise = batch["noise_mask"]
    assert noise.shape == (64, raw)
    assert noise.mean() == pytest.approx(0.15, abs=0.01)
    starts = noise & ~np.pad(noise, [(0, 0), (1, 0)])[:, :-1]
    assert noise.sum() / starts.sum() == pytest.approx(3.0, abs=0.3)
    assert batch["input_ids"].shape == (64, 128) and batch["labels"].shape == (64, targets)
    assert (batch["input_ids"][:, -1] == 2).all() and (batch["labels"][:, -1] == 2).all()
    # sentinels count down from the top of the vocabulary, <extra_id_0> first
    assert batch["labels"][0, 0] == vocab - 1
    assert (batch["decoder_input_ids"][:, 0] == 0).all()
    assert (batch["decoder_input_ids"][:, 1:] == batch["labels"][:, :-1]).all()


def test_budget_table_marks_a_gain_clear_only_when_the_seed_ranges_are_apart(tmp_path):
    from benchmarks import budget

    def point(step: int, accs: list[float]) -> dict:
        return {"objective": "bert", "step": step, "tokens": step * 4096, "wall_minutes": 20,
                "accuracy": sum(accs) / 3, "per_seed": [{"accuracy": a} for a in accs]}

    def scores(pre: list[float], rand: list[float]) -> dict:
        return {"score": {"runs": [{"accuracy": a} for a in pre]},
                "baseline": {"runs": [{"accuracy": a} for a in rand]}}

    (tmp_path / "bert_tiny.compare.json").write_text(json.dumps(
        {"points": [point(100, [0.5, 0.6, 0.55]), point(0, [0.3, 0.31, 0.32])]}))
    # overlapping ranges: a positive mean gain that is not clear
    (tmp_path / "bert_tiny.wordnet.ft.json").write_text(json.dumps(
        scores([0.50, 0.60, 0.70], [0.45, 0.55, 0.65])))
    rows = budget.load(tmp_path)
    assert [r["recipe"] for r in rows] == ["bert_tiny"] and rows[0]["step"] == 100
    line = budget.table(rows)[2]
    assert "0.550 ± 0.050 / 0.310 ± 0.010 / **+0.240**" in line  # probe: apart
    assert "0.600 ± 0.100 / 0.550 ± 0.100 / +0.050 |" in line  # fine-tuned: overlapping
    assert line.count("—") == 2  # fortunes not run
    budget.plot(rows, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0
