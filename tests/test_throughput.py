"""FLOPs counted on a meta-device copy of the model, and the monitors every run gets."""

from __future__ import annotations

import copy
import logging

import pytest
import yaml
from conftest import read_metrics
from torch.utils.flop_counter import FlopCounterMode

from plmkit import throughput
from plmkit.data.tokenizer import add_special_tokens
from plmkit.registry import get_registry

MAX_LENGTH = 64


def _objective(recipe: str, tokenizer):
    registry = get_registry()
    model = yaml.safe_load(registry.recipe(recipe).path.read_text())["model"]
    objective = registry.objective_for_class_path(model["class_path"]).cls(
        **model.get("init_args", {}))
    tokenizer = copy.deepcopy(tokenizer)
    add_special_tokens(tokenizer, objective.special_tokens())
    objective.attach_tokenizer(tokenizer, MAX_LENGTH)
    objective.configure_model()
    return objective


# methods whose real CPU count includes attention (ALBERT's and T5's CPU attention kernels
# are invisible to FlopCounterMode, so the meta count is the larger, complete one there)
@pytest.mark.parametrize("recipe", ["bert_tiny", "electra_tiny", "gpt_tiny", "xlnet_tiny",
                                    "elmo_tiny"])
def test_counted_flops_equal_a_real_count(recipe, tokenizer, caplog):
    objective = _objective(recipe, tokenizer)
    weight = next(objective.parameters())
    with caplog.at_level(logging.WARNING, logger="plmkit"):
        counted = throughput.flops_per_batch(objective, 4)
    assert not caplog.records  # counted, not estimated
    assert next(objective.parameters()) is weight and not weight.is_meta  # model untouched
    examples = throughput.fake_examples(objective.tokenizer, 4,
                                        objective.block_length(MAX_LENGTH))
    batch = objective.build_collator(seed=0)(examples)
    counter = FlopCounterMode(display=False)
    with counter:
        objective.compute_loss(batch)[0].backward()
    assert counted == counter.get_total_flops() > 0
    assert throughput.flops_per_token(objective) == pytest.approx(
        counted / (4 * MAX_LENGTH), rel=0.05)  # the same work per position at 4 other rows


def test_the_count_does_not_depend_on_where_the_model_lives(tokenizer):
    objective = _objective("bert_tiny", tokenizer)
    on_cpu = throughput.flops_per_batch(objective, 2)
    objective.to("meta")  # stands in for an accelerator: the counted copy keeps its data on CPU
    assert throughput.flops_per_batch(objective, 2) == on_cpu


def test_a_failed_count_falls_back_to_6n_and_says_why_once(tokenizer, caplog, monkeypatch):
    monkeypatch.setattr(throughput, "_warned", set())
    objective = _objective("bert_tiny", tokenizer)
    objective.compute_loss = lambda batch: 1 / 0  # the copy measured gets it too
    n = sum(p.numel() for name, p in objective.named_parameters() if "embed" not in name)
    with caplog.at_level(logging.WARNING, logger="plmkit"):
        first = throughput.flops_per_batch(objective, 4)
        throughput.flops_per_batch(objective, 4)
    assert first == 6.0 * n * 4 * MAX_LENGTH
    assert len(caplog.records) == 1 and "ZeroDivisionError" in caplog.text


def test_fit_logs_learning_rate_tokens_and_flops(tiny_fit):
    run = tiny_fit("bert_tiny", "--data.batch_size", 8, steps=12)
    rows = read_metrics(run)
    lr = [r for r in rows if r.get("train/lr/decay")]
    assert len(lr) == 12 and all(r["train/lr/no_decay"] == r["train/lr/decay"] for r in lr)
    rates = [r for r in rows if r.get("train/device/items_per_sec")]
    assert rates, "no throughput after the 10-batch window"  # steps 10..12
    last = rates[-1]
    assert float(last["train/device/items_per_sec"]) > 0
    assert float(last["train/device/flops_per_sec"]) > 0
    # non-padding tokens: at most 8 rows of 128 per batch
    assert 0 < float(last["train/lengths"]) <= float(last["train/samples"]) * 128
    assert not any(r.get("train/device/mfu") for r in rows)  # no known peak on a CPU
