"""ALBERT: n-gram masking law, 15% budget, sentence-order pairs, workers, training, export."""

from __future__ import annotations

import copy
import random
import subprocess
import sys

import pytest
import torch
from conftest import falling, metric_series
from torch.utils.data import DataLoader

from plmkit.collator import IGNORE_INDEX
from plmkit.config import EncoderConfig
from plmkit.plugins.albert import AlbertCollator
from plmkit.throughput import flops_per_token

MAX_LENGTH = 128
BLOCK = MAX_LENGTH - 3
NGRAM_LAW = (6 / 11, 3 / 11, 2 / 11)


@pytest.fixture(scope="module")
def doc_examples(make_examples):
    return make_examples(BLOCK, "document", n=512)


def _collate_many(collator, examples, rounds=4, batch=64):
    return [collator(examples[i : i + batch])
            for _ in range(rounds) for i in range(0, len(examples) - batch + 1, batch)]


def _ngram_sizes(batch):
    """Words per chosen n-gram, from ``span_ids`` and ``word_ids``: a 1-D tensor."""
    spans, words = batch["span_ids"], batch["word_ids"]
    inside = spans >= 0
    rows = torch.arange(len(spans)).unsqueeze(1).expand_as(spans)
    triples = torch.unique(torch.stack([rows[inside], spans[inside], words[inside]], 1), dim=0)
    return torch.unique(triples[:, :2], dim=0, return_counts=True)[1]


def _law(sizes):
    return [float((sizes == n).float().mean()) for n in (1, 2, 3)]


def _albert_reference(batch, budget_of, rng):
    """google-research/albert ``create_masked_lm_predictions`` (n-gram branch), in plain Python.

    Works on the collator's own segments (its ``word_ids``; an n-gram stays inside its segment,
    as plmkit's does) and returns the words per chosen n-gram. Independent of plmkit.masking.
    """
    pvals = [1 / n for n in (1, 2, 3)]
    sizes = []
    lengths = batch["attention_mask"].sum(1).tolist()  # len(tokens): [CLS]/[SEP] included
    for row_words, length in zip(batch["word_ids"].tolist(), lengths):
        words, segment, previous = [], [], None  # token positions of each word, its segment
        seg = 0
        for pos, w in enumerate(row_words):
            if w < 0:
                if previous is not None and previous >= 0:
                    seg += 1
            elif w == previous:
                words[-1].append(pos)
            else:
                words.append([pos])
                segment.append(seg)
            previous = w
        budget = budget_of(length)
        order = list(range(len(words)))
        rng.shuffle(order)
        covered, masked = set(), 0
        for idx in order:
            if masked >= budget:
                break
            grams = []
            for n in (1, 2, 3):
                chunk = [j for j in range(idx, min(idx + n, len(words)))
                         if segment[j] == segment[idx]]
                grams.append(chunk)
            n = rng.choices((1, 2, 3), weights=pvals)[0]
            while n > 0 and masked + sum(len(words[j]) for j in grams[n - 1]) > budget:
                n -= 1
            if n == 0:
                continue
            positions = {p for j in grams[n - 1] for p in words[j]}
            if positions & covered:
                continue
            covered |= positions
            masked += len(positions)
            sizes.append(len(grams[n - 1]))
    return torch.tensor(sizes)


def test_import_without_lightning():
    code = (
        "import sys; from plmkit.plugins.albert import AlbertCollator; "
        "assert 'lightning' not in sys.modules, 'lightning imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_masking_budget_and_whole_words(tokenizer, doc_examples):
    collator = AlbertCollator(tokenizer, max_length=MAX_LENGTH, return_spans=True, seed=1)
    special = torch.tensor(sorted(tokenizer.all_special_ids))
    masked = real = n_mask = n_random = n_keep = 0
    for b in _collate_many(collator, doc_examples):
        labels, ids, words = b["labels"], b["input_ids"], b["word_ids"]
        sel = labels != IGNORE_INDEX
        assert torch.equal(sel, b["span_ids"] >= 0)
        assert not torch.isin(labels[sel], special).any()
        assert (words[sel] >= 0).all()  # never [CLS]/[SEP]/[PAD]
        real += int((words >= 0).sum())
        masked += int(sel.sum())
        n_mask += int((ids[sel] == tokenizer.mask_token_id).sum())
        n_keep += int((ids[sel] == labels[sel]).sum())
        n_random += int(((ids[sel] != labels[sel]) & (ids[sel] != tokenizer.mask_token_id)).sum())
        # whole words: a word is either fully predicted or not at all
        w = words.clamp(min=0) + torch.arange(len(words)).unsqueeze(1) * (2 * MAX_LENGTH)
        per_word = torch.zeros(int(w.max()) + 1).index_add_(0, w[sel], torch.ones(int(sel.sum())))
        size = torch.zeros(int(w.max()) + 1).index_add_(0, w[words >= 0],
                                                         torch.ones(int((words >= 0).sum())))
        assert ((per_word == 0) | (per_word == size)).all()
    assert abs(masked / real - 0.15) < 0.01
    assert abs(n_mask / masked - 0.8) < 0.02
    assert abs(n_random / masked - 0.1) < 0.02
    assert abs(n_keep / masked - 0.1) < 0.02


def test_prediction_count_follows_the_reference(tokenizer, doc_examples):
    """google-research/albert's budget ``min(max_predictions, max(1, round(len(tokens) *
    0.15)))`` counts ``[CLS]`` and both ``[SEP]`` (``len(tokens)``); n-grams fill it and never
    exceed it. The default cap is 20 at 128 and 80 at 512."""
    assert AlbertCollator(tokenizer, max_length=128).max_predictions == 20
    assert AlbertCollator(tokenizer, max_length=512).max_predictions == 80
    collator = AlbertCollator(tokenizer, max_length=MAX_LENGTH, seed=6)
    rows = full = 0
    for b in _collate_many(collator, doc_examples, rounds=2):
        tokens = b["attention_mask"].sum(1)
        assert ((b["input_ids"] == tokenizer.sep_token_id).sum(1) == 2).all()  # 3 specials
        budget = torch.tensor([min(20, max(1, round(n * 0.15))) for n in tokens.tolist()])
        got = (b["labels"] != IGNORE_INDEX).sum(1)
        assert (got <= budget).all()
        full += int((got == budget).sum())
        rows += len(got)
    assert full > 0.9 * rows


def _first_ngrams(batch, budget_of):
    """Words in the first n-gram chosen in each row, where nothing but the draw of n decides it.

    The first n-gram (span id 0) cannot overlap an earlier one; rows are kept only when its
    start word has at least 3 words after it in its segment and 3 words fit in the row's budget
    (both independent of the draw), so its size is exactly the drawn n.
    """
    sizes = []
    for spans, words, length in zip(batch["span_ids"].tolist(), batch["word_ids"].tolist(),
                                    batch["attention_mask"].sum(1).tolist()):
        if 0 not in spans:
            continue
        start = spans.index(0)
        ahead = []  # word id of each token from the start to the end of its segment
        for w in words[start:]:
            if w < 0:
                break
            ahead.append(w)
        distinct = list(dict.fromkeys(ahead))
        if len(distinct) < 3:
            continue
        tokens = sum(w in distinct[:3] for w in ahead)
        if tokens > budget_of(length):
            continue
        sizes.append(len({w for s, w in zip(spans, words) if s == 0}))
    return torch.tensor(sizes)


def test_ngram_law(tokenizer, doc_examples):
    """n-gram sizes: drawn with p(n) = 6/11, 3/11, 2/11, then selected as ALBERT's own loop does.

    * The first n-gram of a row is decided by the draw alone: its sizes follow 6/11, 3/11,
      2/11 within 2 points.
    * All chosen n-grams: the realised law is *not* 1/n at this length (the last n-grams are
      shortened to fit the budget and a longer n-gram more often overlaps one already
      chosen), in ALBERT's own algorithm too: it equals that of a plain-Python port of
      google-research/albert ``create_masked_lm_predictions`` within 2 points.
    """
    import math

    collator = AlbertCollator(tokenizer, max_length=MAX_LENGTH, return_spans=True, seed=2)
    cap = math.ceil(MAX_LENGTH * 0.15)

    def budget_of(n):  # n: the row's length, [CLS] and [SEP] included
        return min(cap, max(1, round(n * 0.15)))

    rng = random.Random(0)
    first, ours, reference = [], [], []
    for k, b in enumerate(_collate_many(collator, doc_examples, rounds=14)):
        first.append(_first_ngrams(b, budget_of))
        if k < 40:
            ours.append(_ngram_sizes(b))
            reference.append(_albert_reference(b, budget_of, rng))
    first = torch.cat(first)
    assert len(first) > 5000
    for got, want in zip(_law(first), NGRAM_LAW):
        assert abs(got - want) < 0.02
    ours, reference = torch.cat(ours), torch.cat(reference)
    assert len(ours) > 8000 and len(reference) > 8000
    for got, want in zip(_law(ours), _law(reference)):
        assert abs(got - want) < 0.02
    assert _law(ours)[0] > NGRAM_LAW[0] + 0.03  # the skew towards unigrams is real


def _segments(batch, row, tokenizer):
    """The two segments of a row: ids between [CLS] and the first [SEP], and to the second."""
    ids = torch.where(batch["labels"][row] != IGNORE_INDEX, batch["labels"][row],
                      batch["input_ids"][row])
    n = int(batch["attention_mask"][row].sum())
    seps = (ids[:n] == tokenizer.sep_token_id).nonzero().squeeze(1).tolist()
    assert ids[0] == tokenizer.cls_token_id and len(seps) == 2 and seps[1] == n - 1
    types = batch["token_type_ids"][row, :n]
    assert (types[: seps[0] + 1] == 0).all() and (types[seps[0] + 1 :] == 1).all()
    return ids[1 : seps[0]], ids[seps[0] + 1 : seps[1]]


def _find(block, piece):
    """Start positions of ``piece`` inside ``block``."""
    if len(piece) > len(block):
        return []
    hits = (block.unfold(0, len(piece), 1) == piece).all(dim=1)
    return hits.nonzero().squeeze(1).tolist()


def test_sop_labels_and_swaps(tokenizer, doc_examples):
    examples = [e for e in doc_examples if len(e["input_ids"]) >= 8]
    collator = AlbertCollator(tokenizer, max_length=MAX_LENGTH, seed=4)
    labels = torch.cat([b["sentence_order_label"] for b in _collate_many(collator, examples)])
    assert abs(labels.float().mean().item() - 0.5) < 0.05

    # without the short-sequence cut, the pair is the whole block, split once
    exact = AlbertCollator(tokenizer, max_length=MAX_LENGTH, short_seq_prob=0.0, seed=5)
    swapped = kept = 0
    for start in range(0, 256, 64):
        batch = exact(examples[start : start + 64])
        for row in range(64):
            block = examples[start + row]["input_ids"]
            first, second = _segments(batch, row, tokenizer)
            assert len(first) > 0 and len(second) > 0
            if batch["sentence_order_label"][row] == 1:  # swapped: B [SEP] A
                assert torch.equal(torch.cat([second, first]), block)
                swapped += 1
            else:
                assert torch.equal(torch.cat([first, second]), block)
                kept += 1
    assert swapped > 50 and kept > 50

    # with it (the default), both segments still come from the block, in the labelled order
    for start in range(0, 256, 64):
        batch = collator(examples[start : start + 64])
        for row in range(64):
            block = examples[start + row]["input_ids"]
            first, second = _segments(batch, row, tokenizer)
            a, b = (second, first) if batch["sentence_order_label"][row] == 1 else (first, second)
            a_at, b_at = _find(block, a), _find(block, b)
            assert any(i + len(a) <= j for i in a_at for j in b_at)


def _worker_masks(collator, example, n=8):
    loader = DataLoader([example] * (8 * n), batch_size=8, num_workers=2, collate_fn=collator)
    return [(b["labels"] != IGNORE_INDEX, b["sentence_order_label"]) for b in loader]


def test_dataloader_workers(tokenizer, doc_examples):
    example = max(doc_examples, key=lambda e: len(e["input_ids"]))

    def make(seed):
        return AlbertCollator(tokenizer, max_length=MAX_LENGTH, seed=seed)

    first = _worker_masks(make(3), example)
    assert not torch.equal(first[0][0], first[1][0])  # worker 0 and worker 1 differ
    second = _worker_masks(make(3), example)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
               for a, b in zip(first, second))
    other = _worker_masks(make(4), example)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other))


def test_inputs_not_mutated(tokenizer, doc_examples):
    examples = doc_examples[:16]
    before = copy.deepcopy(examples)
    AlbertCollator(tokenizer, max_length=MAX_LENGTH, return_spans=True)(examples)
    for a, b in zip(examples, before):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key])


def test_model_and_gathered_loss(tokenizer, doc_examples):
    from plmkit.plugins.albert import AlbertObjective

    objective = AlbertObjective(encoder=EncoderConfig(
        embedding_size=16, hidden_size=32, num_layers=3, num_heads=2, intermediate_size=64,
        dropout=0.0))
    objective.attach_tokenizer(tokenizer, MAX_LENGTH)
    objective.configure_model()
    model = objective.model.eval()
    assert model.albert.embeddings.word_embeddings.weight.shape[1] == 16  # factorized E
    assert len(model.albert.encoder.albert_layer_groups) == 1  # one shared layer
    # the one shared layer is counted each of the 3 times it runs (6 x weights per token each)
    shared = sum(p.numel() for p in model.albert.encoder.albert_layer_groups.parameters())
    assert flops_per_token(objective, MAX_LENGTH) > 6 * 3 * shared
    batch = objective.build_collator(seed=0)(doc_examples[:8])
    with torch.no_grad():
        loss, metrics = objective.compute_loss(batch)
        reference = model(**batch).loss
    assert torch.allclose(loss, reference, atol=1e-5)
    assert set(metrics) == {"mlm_loss", "mlm_acc", "sop_loss", "sop_acc"}


def test_sop_head_is_a_plain_dense_layer(tokenizer):
    """``get_sentence_order_output`` of google-research/albert: a dense layer on the pooled
    output, no dropout (transformers' ``AlbertSOPHead`` applies ``classifier_dropout_prob``);
    the exported config keeps that 0.1 for fine-tuning classifiers."""
    from plmkit.plugins.albert import AlbertObjective

    objective = AlbertObjective(encoder=EncoderConfig(
        embedding_size=16, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64))
    objective.attach_tokenizer(tokenizer, MAX_LENGTH)
    objective.configure_model()
    model = objective.model.train()
    pooled = torch.randn(64, 32)
    torch.manual_seed(0)
    first = model.sop_classifier(pooled)
    assert torch.equal(first, model.sop_classifier(pooled))
    assert torch.allclose(first, model.sop_classifier.classifier(pooled))
    assert model.config.classifier_dropout_prob == 0.1


def test_training_lowers_loss_and_exports(tiny_fit, export_run, tmp_path):
    from transformers import AlbertModel, AutoModel, AutoTokenizer

    run = tiny_fit("albert_tiny", steps=80)
    losses = metric_series(run, "train/loss")
    assert len(losses) >= 70
    assert falling(losses)
    assert metric_series(run, "train/sop_loss")
    out = export_run(run, tmp_path / "export")
    model = AutoModel.from_pretrained(out)
    assert isinstance(model, AlbertModel)
    assert model.config.embedding_size < model.config.hidden_size
    tok = AutoTokenizer.from_pretrained(out)
    inputs = tok(["a living thing", "an entity that has physical existence"], padding=True,
                 return_tensors="pt")
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
    assert hidden.shape == (*inputs["input_ids"].shape, model.config.hidden_size)
    assert torch.isfinite(hidden).all()
