"""ERNIE: masked fraction per level, whole phrase/entity units, precomputed spans, the level
schedule across DataLoader workers, training and export."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from conftest import falling, metric_series

from plmkit.collator import IGNORE_INDEX
from plmkit.config import MaskingConfig
from plmkit.plugins.ernie import ErnieCollator
from plmkit.plugins.ernie.lexicon import PhraseMatcher

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def matcher(tokenizer):
    return PhraseMatcher.from_tokenizer(tokenizer)  # the bundled WordNet lexicon


def _batches(collator, examples, rounds=4, batch=32):
    return [
        collator(examples[i : i + batch])
        for _ in range(rounds)
        for i in range(0, len(examples) - batch + 1, batch)
    ]


def _content(batch, tokenizer):
    special = torch.tensor([tokenizer.cls_token_id, tokenizer.sep_token_id,
                            tokenizer.pad_token_id])
    masked_special = torch.isin(batch["input_ids"], special) & (batch["labels"] == IGNORE_INDEX)
    return batch["attention_mask"].bool() & ~masked_special


def _spans_whole(batch) -> tuple[int, int]:
    """Assert every span masked as one unit is all-or-none; return (spans, masked spans)."""
    labelled = batch["labels"] != IGNORE_INDEX
    start = batch["span_start"]
    inside = start >= 0
    index = start.clamp(min=0)
    size = torch.zeros_like(start).scatter_add_(1, index, inside.long())
    hit = torch.zeros_like(start).scatter_add_(1, index, (inside & labelled).long())
    spans = size > 0
    assert ((hit == 0) | (hit == size))[spans].all(), "part of a span was masked"
    return int(spans.sum()), int((spans & (hit == size)).sum())


@pytest.mark.parametrize("level", ["token", "phrase", "entity"])
def test_masked_fraction_and_whole_spans(tokenizer, make_examples, matcher, level):
    examples = make_examples(125)
    collator = ErnieCollator(
        tokenizer, lexicon=matcher, level_mix={level: 1.0}, return_spans=True,
        return_level=True, seed=1,
    )
    selected = real = spans = masked_spans = 0
    for b in _batches(collator, examples, rounds=2):
        assert (b["masking_level"] == ["token", "phrase", "entity"].index(level)).all()
        selected += int((b["labels"] != IGNORE_INDEX).sum())
        real += int(_content(b, tokenizer).sum())
        n, m = _spans_whole(b)
        spans, masked_spans = spans + n, masked_spans + m
    assert abs(selected / real - 0.15) < 0.01
    if level == "token":
        assert spans == 0
    else:  # units exist and are masked at roughly the unit rate
        assert spans > 40 and masked_spans > 3


def test_basic_units_are_whole_words(tokenizer, make_examples, matcher):
    examples = make_examples(126, n=64)
    collator = ErnieCollator(
        tokenizer, lexicon=matcher, level_mix={"phrase": 1.0}, sentence_task=None,
        short_seq_prob=0.0, seed=2,
    )
    b = collator(examples)
    for row, ex in enumerate(examples):
        n = len(ex["input_ids"])
        labelled = b["labels"][row, 1 : n + 1] != IGNORE_INDEX
        assert torch.equal(b["labels"][row, 1 : n + 1][labelled], ex["input_ids"][labelled])
        for w in ex["word_ids"].unique():
            inside = labelled[ex["word_ids"] == w]
            assert inside.all() or not inside.any()


def test_precomputed_entity_spans(tokenizer, make_examples):
    # blocks of 130 raw tokens, single segments of at most 126: long blocks get truncated
    examples = [dict(e) for e in make_examples(130, n=64)]
    for i, e in enumerate(examples):
        starts = torch.arange(i % 5, len(e["input_ids"]), 10)  # spans of 2..4 tokens
        e["entity_spans"] = torch.stack([starts, starts + 2 + (starts % 3)], dim=1)
    before = copy.deepcopy(examples)
    collator = ErnieCollator(
        tokenizer, lexicon="none", level_mix={"entity": 1.0}, sentence_task=None,
        short_seq_prob=0.0, masking=MaskingConfig(whole_word=False), return_spans=True, seed=3,
    )
    assert collator.matcher is None
    masked_spans = cut = 0
    for _ in range(4):
        b = collator(examples)
        labelled = b["labels"] != IGNORE_INDEX
        for row, e in enumerate(examples):
            n = min(len(e["input_ids"]), 126)  # what the input holds
            for s, t in e["entity_spans"].tolist():
                t = min(t, len(e["input_ids"]))  # offsets are clipped to the example
                if s >= n:
                    continue
                if t > n:  # cut by truncation: not a unit
                    assert (b["span_start"][row, 1 + s : 1 + n] == -1).all()
                    cut += 1
                    continue
                inside = labelled[row, 1 + s : 1 + t]
                assert inside.all() or not inside.any()
                assert (b["span_start"][row, 1 + s : 1 + t] == 1 + s).all()
                masked_spans += int(inside.all())
        assert abs(labelled.sum().item() / _content(b, tokenizer).sum().item() - 0.15) < 0.02
    assert masked_spans > 50 and cut > 0
    for a, c in zip(examples, before):
        for key in a:
            assert torch.equal(a[key], c[key])


def test_precomputed_spans_survive_pairing(tokenizer, make_examples):
    """With NSP pairs (swaps, other-document B, truncation) a span is whole or dropped."""
    examples = [dict(e) for e in make_examples(125, n=64)]
    for e in examples:
        starts = torch.arange(0, max(len(e["input_ids"]) - 3, 0), 7)
        e["entity_spans"] = torch.stack([starts, starts + 3], dim=1)
    collator = ErnieCollator(
        tokenizer, lexicon="none", level_mix={"entity": 1.0}, return_spans=True, seed=4
    )
    spans = 0
    for b in _batches(collator, examples, rounds=2):
        n, _ = _spans_whole(b)
        spans += n
        # every unit is exactly 3 contiguous tokens
        start = b["span_start"]
        for s in start[start >= 0].unique().tolist():
            sizes = (start == s).sum(dim=1)
            assert set(sizes[sizes > 0].tolist()) == {3}
    assert spans > 500


SCHEDULE = [(0, {"token": 1.0}), (3, {"phrase": 1.0}), (6, {"entity": 1.0})]


def _expected_level(step: int) -> int:
    return 0 if step < 3 else 1 if step < 6 else 2


@pytest.mark.parametrize("accumulate", [1, 2])
def test_level_schedule_is_exact_in_loader_workers(tokenizer, make_examples, matcher, accumulate):
    """plmkit's loader gives every batch the optimizer step that trains on it, in the worker
    that builds it: no prefetch lag, and a resumed loader continues the count."""
    from plmkit.data.loader import POSITION_KEY, ResumableLoader

    examples = make_examples(125, n=64)

    def loader():
        collator = ErnieCollator(
            tokenizer, lexicon=matcher, return_level=True, seed=5, level_schedule=SCHEDULE
        )
        ld = ResumableLoader(examples, collator, batch_size=8, seed=1, num_workers=2)
        ld.accumulate_grad_batches = accumulate
        return ld

    def consume(ld, count):
        levels = []
        for batch in ld:
            position = batch.pop(POSITION_KEY)
            ld.mark_consumed(position)
            levels.append((position[2], batch["masking_level"]))
            if len(levels) == count:
                break
        return levels

    first = loader()
    seen = consume(first, 8) + consume(first, 8)  # crosses an epoch (8 batches each)
    state = first.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    seen += consume(resumed, 4)
    assert [number for number, _ in seen] == list(range(20))
    for number, levels in seen:
        assert (levels == _expected_level(number // accumulate)).all(), number


def test_level_schedule_shared_counter_outside_plmkit(tokenizer, make_examples, matcher):
    """A plain DataLoader's workers follow a shared step counter written by the trainer."""
    counter = torch.zeros(1, dtype=torch.long).share_memory_()
    collator = ErnieCollator(
        tokenizer, lexicon=matcher, return_level=True, seed=5, level_schedule=SCHEDULE,
        step_counter=counter,
    )
    loader = torch.utils.data.DataLoader(
        make_examples(125, n=64), batch_size=32, collate_fn=collator, num_workers=2,
        persistent_workers=True,
    )
    assert (torch.cat([b["masking_level"] for b in loader]) == 0).all()
    counter[0] = 4  # the workers are already running: shared memory carries it
    assert (torch.cat([b["masking_level"] for b in loader]) == 1).all()
    collator.set_step(7)  # in the main process only: the workers keep the counter
    assert (torch.cat([b["masking_level"] for b in loader]) == 1).all()
    assert collator.current_mix()[2] == 1.0


def test_entity_spans_from_a_jsonl_corpus(tmp_path, tokenizer):
    """--data.entity_field: character offsets become token spans; ERNIE masks them whole."""
    import json

    import numpy as np

    from plmkit.data.datamodule import PretrainDataModule
    from plmkit.data.packing import BlockDataset, pack
    from plmkit.plugins.ernie import ErnieObjective

    names = ["new york city", "ada lovelace", "the royal society", "black sea"]
    rows = []
    for i in range(400):
        spans, text = [], "  "  # leading blanks: offsets must follow the strip
        for j in range(6):
            name = names[(i + j) % len(names)]
            filler = f"word{(i * 7 + j) % 50} and some plain text here"
            text += filler + " "
            spans.append([len(text), len(text) + len(name), "ENT"])
            text += name + (" .\n" if j % 2 else " , ")
        rows.append({"body": text, "ents": spans})
    corpus = tmp_path / "entities.jsonl"
    corpus.write_text("\n".join(json.dumps(r) for r in rows))

    dm = PretrainDataModule(corpus=str(corpus), text_field="body", entity_field="ents",
                            max_length=128, batch_size=16, num_workers=0, num_proc=1,
                            val_fraction=0.0, cache_dir=str(tmp_path / "cache"))
    dm.use_tokenizer(tokenizer)
    corpus_arrays = dm.prepare(ErnieObjective(lexicon="none"))
    assert corpus_arrays.has_entities
    dataset = BlockDataset(pack(corpus_arrays, np.arange(corpus_arrays.num_documents), 125))
    name_ids = {tuple(tokenizer(n, add_special_tokens=False)["input_ids"]) for n in names}
    spans = 0
    for k in range(0, 200):
        example = dataset[k]
        ids, ent = example["input_ids"], example["entity_ids"]
        for e in ent[ent >= 0].unique().tolist():
            where = torch.nonzero(ent == e).squeeze(1)
            assert (where.diff() == 1).all()  # contiguous
            tokens = tuple(ids[where].tolist())
            inside_block = 0 < where[0] and where[-1] < len(ids) - 1
            if inside_block:  # spans cut by the block edge keep only their part
                assert tokens in name_ids, tokenizer.decode(list(tokens))
                spans += 1
    assert spans > 300
    # the collator masks every span from the corpus as one unit
    collator = ErnieCollator(tokenizer, lexicon="none", max_length=64,
                             level_mix={"entity": 1.0}, return_spans=True)
    examples = [dataset[k] for k in range(128)]
    units = 0
    for b in _batches(collator, examples, rounds=2):
        n, masked = _spans_whole(b)
        units += masked
    assert units > 50


def test_collator_imports_without_lightning():
    code = ("import sys; from plmkit.plugins.ernie import ErnieCollator; "
            "assert 'lightning' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_dataloader_workers_seed_and_no_mutation(tokenizer, make_examples, matcher):
    examples = make_examples(125, n=128)
    before = copy.deepcopy(examples)

    def labels(seed):
        collator = ErnieCollator(tokenizer, lexicon=matcher, seed=seed)
        loader = torch.utils.data.DataLoader(
            examples, batch_size=32, collate_fn=collator, num_workers=2
        )
        return [b["labels"] for b in loader]

    first, again, other = labels(7), labels(7), labels(8)
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert not all(torch.equal(x, y) for x, y in zip(first, other))
    collator = ErnieCollator(tokenizer, lexicon=matcher, seed=7)
    same = torch.utils.data.DataLoader(
        [examples[:32], examples[:32]], batch_size=None, collate_fn=collator, num_workers=2
    )
    w0, w1 = list(same)
    assert not torch.equal(w0["labels"], w1["labels"])
    for a, b in zip(examples, before):
        for key in a:
            assert torch.equal(a[key], b[key])


def test_training_lowers_loss_and_exports(tiny_fit, export_run, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    run = tiny_fit(
        "ernie_tiny", "--model.init_args.level_schedule",
        "[[0, {token: 1.0}], [30, {phrase: 0.5, entity: 0.5}]]", steps=60,
    )
    assert falling(metric_series(run, "train/loss"))
    assert falling(metric_series(run, "train/mlm_loss"))
    phrase_rows = metric_series(run, "train/rows_phrase")
    assert max(phrase_rows[:25]) == 0 and sum(phrase_rows[-20:]) > 0  # the schedule moved
    out = export_run(run, tmp_path / "export")
    model = AutoModel.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    hidden = model(**tokenizer(["New York City"], return_tensors="pt")).last_hidden_state
    assert hidden.shape[-1] == 128 and torch.isfinite(hidden).all()


def test_stream_packing_never_masks_the_separators_inside_a_block(tokenizer, make_examples,
                                                                  matcher):
    from plmkit.plugins.ernie.model import ErnieObjective

    objective = ErnieObjective(sentence_task=None, packing="stream", lexicon="none")
    objective.attach_tokenizer(tokenizer, 64)
    collator = objective.build_collator(seed=3)
    examples = make_examples(62, "stream", n=64)
    inner = sum(int((e["input_ids"] == tokenizer.sep_token_id).sum()) for e in examples)
    assert inner > 10  # documents are joined by [SEP] inside the blocks
    masked_sep = [int((b["labels"] == tokenizer.sep_token_id).sum())
                  for b in _batches(collator, examples)]
    assert sum(masked_sep) == 0  # a [SEP] is never a prediction target
    collator.skip_inner_specials = False  # what ERNIE did before: they were masked
    masked_sep = [int((b["labels"] == tokenizer.sep_token_id).sum())
                  for b in _batches(collator, examples)]
    assert sum(masked_sep) > 0
