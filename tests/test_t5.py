"""T5 span corruption: T5's span law, exact reconstruction, sentinels, lengths, training, export."""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections import Counter

import pytest
import torch
from conftest import falling, metric_series

from plmkit.collator import IGNORE_INDEX
from plmkit.config import SpecialTokens
from plmkit.plugins.t5 import (
    T5SpanCorruptionCollator,
    random_spans_helper,
    random_spans_noise_mask,
    sentinel_tokens,
)
from plmkit.throughput import flops_per_token


@pytest.fixture(scope="module")
def t5_tokenizer(tokenizer):
    """The session tokenizer with the sentinels appended as the objective asks."""
    from plmkit.data.tokenizer import add_special_tokens
    from plmkit.plugins.t5 import T5Objective

    tok = copy.deepcopy(tokenizer)
    add_special_tokens(tok, T5Objective().special_tokens())
    return tok


def _spans(mask: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D boolean tensor."""
    padded = torch.cat([torch.zeros(1, dtype=torch.bool), mask, torch.zeros(1, dtype=torch.bool)])
    edges = torch.nonzero(padded[1:].int() - padded[:-1].int()).squeeze(1)
    return (edges[1::2] - edges[::2]).tolist()


def _composition_law(n: int, k: int) -> dict[int, float]:
    """P(a given part = j) when n items are split uniformly into k non-empty parts."""
    total = math.comb(n - 1, k - 1)
    return {j: math.comb(n - j - 1, k - 2) / total for j in range(1, n - k + 2)}


def test_random_spans_helper():
    assert random_spans_helper(512) == (568, 114)
    assert random_spans_helper(128) == (141, 29)


def test_counts_follow_t5():
    # num_noise = round(L * 0.15) in [1, L-1] (half to even), num_spans = max(1, round(n / 3))
    lengths = torch.tensor([1, 2, 3, 10, 30, 50, 141, 568])
    mask = random_spans_noise_mask(lengths, 568, torch.Generator().manual_seed(0))
    assert mask.sum(dim=1).tolist() == [0, 1, 1, 2, 4, 8, 21, 85]
    assert [len(_spans(m)) for m in mask] == [0, 1, 1, 1, 1, 3, 7, 28]
    assert not (mask & (torch.arange(568) >= lengths.unsqueeze(1))).any()


def test_noise_density_and_span_law():
    """Over 4000 rows: noise fraction within 0.005 of 0.15, mean span within 0.05 of 3, and
    the noise / non-noise span lengths follow the uniform-composition law of T5's
    ``_random_segmentation`` (Kolmogorov-Smirnov distance < 0.015 over 28,000 spans)."""
    rows, length = 4000, 141
    generator = torch.Generator().manual_seed(3)
    mask = random_spans_noise_mask(torch.full((rows,), length), length, generator)
    assert abs(mask.float().mean().item() - 0.15) < 0.005
    noise_spans, nonnoise_spans = [], []
    for row in mask:
        noise_spans += _spans(row)
        nonnoise_spans += _spans(~row)
        assert not row[0] and row[-1]  # non-noise first, noise last (no random roll)
    assert abs(sum(noise_spans) / len(noise_spans) - 3.0) < 0.05
    for spans, n in ((noise_spans, 21), (nonnoise_spans, 120)):
        law = _composition_law(n, 7)
        counts = Counter(spans)
        ks = observed = expected = 0.0
        for j, p in sorted(law.items()):
            observed += counts.get(j, 0) / len(spans)
            expected += p
            ks = max(ks, abs(observed - expected))
        assert ks < 0.015, (n, ks)

    # variable lengths in one batch: same density and mean span within looser tolerances
    lengths = torch.randint(40, 600, (2000,), generator=generator)
    mask = random_spans_noise_mask(lengths, 600, generator)
    assert abs(mask.sum().item() / lengths.sum().item() - 0.15) < 0.005
    spans = [s for row in mask for s in _spans(row)]
    assert abs(sum(spans) / len(spans) - 3.0) < 0.1


def _reconstruct(inputs: list[int], targets: list[int], sentinels: set[int], eos: int):
    """Put the target spans back in place of the input sentinels."""
    assert inputs[-1] == eos and targets[-1] == eos
    spans: dict[int, list[int]] = {}
    current = None
    for t in targets[:-1]:
        if t in sentinels:
            current = t
            spans[current] = []
        else:
            spans[current].append(t)
    out = []
    for t in inputs[:-1]:
        out += spans[t] if t in sentinels else [t]
    return out


def test_reconstruction_sentinels_and_lengths(t5_tokenizer, make_examples):
    tok = t5_tokenizer
    vocab = len(tok)
    names = sentinel_tokens()
    # the sentinels count down from the top of the vocabulary
    assert tok.convert_tokens_to_ids(names) == [vocab - 1 - k for k in range(100)]
    examples = make_examples(141, "stream", n=256)
    before = copy.deepcopy(examples)
    collator = T5SpanCorruptionCollator(tok, input_length=128, seed=5)
    assert collator.target_length == 29
    # a SpecialTokens gives plmkit's sentinel layout: the same ids as looked up by name
    bare = T5SpanCorruptionCollator(SpecialTokens.from_tokenizer(tok), input_length=128)
    assert torch.equal(bare.sentinel_ids, collator.sentinel_ids)
    sentinels = set(range(vocab - 100, vocab))
    eos = tok.eos_token_id
    for i in range(0, len(examples), 64):
        chunk = examples[i : i + 64]
        batch = collator(chunk)
        # full blocks: exactly the configured lengths, no padding anywhere
        assert batch["input_ids"].shape == (64, 128)
        assert batch["labels"].shape == (64, 29)
        assert (batch["attention_mask"] == 1).all()
        assert (batch["labels"] != IGNORE_INDEX).all()
        for row, ex in enumerate(chunk):
            inputs, targets = batch["input_ids"][row].tolist(), batch["labels"][row].tolist()
            assert _reconstruct(inputs, targets, sentinels, eos) == ex["input_ids"].tolist()
            # span k gets <extra_id_k> = vocab - 1 - k, in order, in inputs and targets alike
            used_in = [t for t in inputs if t in sentinels]
            used_tg = [t for t in targets if t in sentinels]
            assert used_in == used_tg == [vocab - 1 - k for k in range(7)]
            assert targets[0] == vocab - 1
    for a, b in zip(examples, before):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_tokenizer_without_sentinels_is_refused(tokenizer):
    with pytest.raises(ValueError, match="extra_id_0"):
        T5SpanCorruptionCollator(tokenizer)


def test_paper_lengths_and_short_examples(t5_tokenizer):
    collator = T5SpanCorruptionCollator(t5_tokenizer, input_length=512, seed=1)
    ids = torch.randint(5, 1500, (8, 600))
    batch = collator([{"input_ids": row} for row in ids])  # longer examples are cut to 568
    assert batch["input_ids"].shape == (8, 512) and batch["labels"].shape == (8, 114)
    assert (batch["attention_mask"] == 1).all() and (batch["labels"] != IGNORE_INDEX).all()
    # a short example is padded (pad id / -100) after its EOS
    batch = collator([{"input_ids": ids[0, :568]}, {"input_ids": ids[1, :30]}])
    eos, pad = t5_tokenizer.eos_token_id, t5_tokenizer.pad_token_id
    n_in = int(batch["attention_mask"][1].sum())
    assert n_in == 30 - 4 + 1 + 1  # 4 noise tokens in 1 span
    assert batch["input_ids"][1, n_in - 1] == eos and (batch["input_ids"][1, n_in:] == pad).all()
    assert batch["labels"][1, :6].tolist()[-1] == eos
    assert (batch["labels"][1, 6:] == IGNORE_INDEX).all()


def test_dataloader_workers_and_seeds(t5_tokenizer, make_examples):
    example = make_examples(141, "stream", n=1)[0]
    data = [example] * 32  # identical examples: only the masks can differ

    def run(seed):
        collator = T5SpanCorruptionCollator(t5_tokenizer, input_length=128, seed=seed)
        loader = torch.utils.data.DataLoader(data, batch_size=8, num_workers=2,
                                             collate_fn=collator)
        return [b["input_ids"] for b in loader]

    first, again, other = run(0), run(0), run(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # reproducible per seed
    assert not torch.equal(first[0], first[1])  # worker 0 and worker 1 draw differently
    assert not torch.equal(first[0], other[0])


def test_training_and_export(tiny_fit, export_run, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    run = tiny_fit("t5_tiny", steps=80)
    losses = metric_series(run, "train/loss")
    assert len(losses) >= 70
    assert falling(losses)
    out = export_run(run, tmp_path / "t5_export")

    model = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "T5ForConditionalGeneration"
    assert model.config.decoder_start_token_id == tok.pad_token_id
    assert tok.convert_tokens_to_ids("<extra_id_0>") == len(tok) - 1 == model.config.vocab_size - 1
    encoded = tok("a small <extra_id_0> animal", return_tensors="pt")
    assert encoded["input_ids"][0, -1] == tok.eos_token_id  # inputs end with EOS, as trained
    assert len(tok) - 1 in encoded["input_ids"][0].tolist()
    with torch.no_grad():
        generated = model.generate(**encoded, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] >= 2 and generated[0, 0] == tok.pad_token_id


@pytest.mark.parametrize("optimizer", ["adafactor", "adamw"])
def test_inverse_sqrt_schedule_is_t5s(t5_tokenizer, optimizer):
    """The T5 paper's ``1 / sqrt(max(n, k))``: constant for the first k steps (no linear
    ramp), then the inverse square root; with lr = 1 / sqrt(k) it is T5's rate exactly."""
    import types

    from plmkit.plugins.t5 import T5Objective

    objective = T5Objective(
        d_model=32, num_layers=1, num_heads=2, d_kv=16, d_ff=64, optimizer=optimizer,
        optim={"lr": 0.01, "warmup_steps": 10_000, "schedule": "inverse_sqrt"},
    )
    objective.attach_tokenizer(t5_tokenizer, 128)
    objective.configure_model()
    objective._trainer = types.SimpleNamespace(estimated_stepping_batches=2**19)  # a stub
    scheduler = objective.configure_optimizers()["lr_scheduler"]["scheduler"]
    for step in (0, 1, 500, 9_999, 10_000, 40_000, 2**19):
        lr = objective.optim.lr * scheduler.lr_lambdas[0](step)
        assert math.isclose(lr, 1 / math.sqrt(max(step, 10_000)), rel_tol=1e-9), step
    # a run shorter than the warmup keeps the constant rate, with no warning about it
    objective._trainer = types.SimpleNamespace(estimated_stepping_batches=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scheduler = objective.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert [scheduler.lr_lambdas[0](s) for s in (0, 50, 99)] == [1.0, 1.0, 1.0]
    # other schedules are the core's
    objective.optim = dataclasses.replace(objective.optim, schedule="linear", warmup_steps=10)
    scheduler = objective.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert scheduler.lr_lambdas[0](5) == 0.5


def test_adafactor_follows_the_schedule_and_learns(t5_tokenizer, make_examples):
    import types

    from plmkit.plugins.t5 import T5Objective

    torch.manual_seed(0)
    objective = T5Objective(
        d_model=32, num_layers=1, num_heads=2, d_kv=16, d_ff=64, optimizer="adafactor",
        optim={"lr": 0.01, "warmup_steps": 10, "schedule": "inverse_sqrt", "weight_decay": 0.0},
    )
    objective.attach_tokenizer(t5_tokenizer, 128)
    objective.configure_model()
    assert objective.target_length == 29 and objective.block_length(512) == 568
    assert flops_per_token(objective, 128) > 0
    objective._trainer = types.SimpleNamespace(estimated_stepping_batches=100)  # a stub
    config = objective.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.Adafactor)
    # T5's 1 / sqrt(max(t, k)): 0.01 for the first k = 10 steps, then 0.01 * sqrt(10 / t)
    assert [round(scheduler.lr_lambdas[0](s), 4) for s in (0, 5, 10, 40)] == [1, 1, 1, 0.5]
    batch = objective.build_collator(seed=0)(make_examples(141, "stream", n=16))
    losses = []
    for _ in range(15):
        loss, _ = objective.compute_loss(batch)
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
