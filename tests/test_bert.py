"""BERT: masking statistics, NSP labels, and a short training run that lowers the loss."""

from __future__ import annotations

import copy

import torch
from conftest import falling, metric_series

from plmkit.collator import IGNORE_INDEX
from plmkit.config import MaskingConfig
from plmkit.plugins.bert import BertCollator


def _collate_many(collator, examples, rounds=8, batch=32):
    out = []
    for _ in range(rounds):
        for i in range(0, len(examples) - batch + 1, batch):
            out.append(collator(examples[i : i + batch]))
    return out


def test_mlm_statistics(tokenizer, make_examples):
    examples = make_examples(125)
    collator = BertCollator(tokenizer, max_length=128, seed=1)
    batches = _collate_many(collator, examples)
    special = torch.tensor(sorted(tokenizer.all_special_ids))
    masked = real = n_mask = n_random = n_keep = 0
    for b in batches:
        labels, ids, attn = b["labels"], b["input_ids"], b["attention_mask"]
        sel = labels != IGNORE_INDEX
        is_special = torch.isin(ids, special) & (ids != tokenizer.mask_token_id)
        real += int((attn.bool() & ~is_special).sum())
        masked += int(sel.sum())
        n_mask += int((ids[sel] == tokenizer.mask_token_id).sum())
        n_keep += int((ids[sel] == labels[sel]).sum())
        n_random += int(((ids[sel] != labels[sel]) & (ids[sel] != tokenizer.mask_token_id)).sum())
        # never a special token or padding
        assert not torch.isin(labels[sel], special).any()
        assert (labels[attn == 0] == IGNORE_INDEX).all()
    assert abs(masked / real - 0.15) < 0.01
    assert abs(n_mask / masked - 0.8) < 0.02
    assert abs(n_random / masked - 0.1) < 0.02
    assert abs(n_keep / masked - 0.1) < 0.02


def test_bernoulli_and_whole_word(tokenizer, make_examples):
    examples = make_examples(125)
    bern = BertCollator(tokenizer, masking=MaskingConfig(exact_count=False), seed=2)
    batches = _collate_many(bern, examples, rounds=4)
    sel = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
    real = sum(int(b["attention_mask"].sum()) - 3 * len(b["input_ids"]) for b in batches)
    assert abs(sel / real - 0.15) < 0.01

    wwm = BertCollator(
        tokenizer, masking=MaskingConfig(whole_word=True), sentence_task=None,
        short_seq_prob=0.0, seed=3,
    )
    # every word is either fully predicted or not at all
    batch_examples = examples[:64]
    b = wwm(batch_examples)
    for row, ex in enumerate(batch_examples):
        n = min(len(ex["input_ids"]), 126)
        sel = (b["labels"][row, 1 : n + 1] != IGNORE_INDEX)
        words = ex["word_ids"][:n]
        for w in words.unique():
            in_word = sel[words == w]
            assert in_word.all() or not in_word.any()


def test_prediction_count_follows_the_reference(tokenizer, make_examples):
    """google-research/bert's budget ``min(max_predictions, max(1, round(len(tokens) * 0.15)))``:
    ``len(tokens)`` counts ``[CLS]`` and the ``[SEP]``s; the default ``max_predictions`` is
    ``max_length * 0.15`` rounded up to a multiple of 10 (the reference's 20 at 128, 80 at 512)."""
    defaults = {n: BertCollator(tokenizer, max_length=n).max_predictions
                for n in (64, 128, 200, 256, 512, 1024)}
    assert defaults == {64: 10, 128: 20, 200: 30, 256: 40, 512: 80, 1024: 160}
    assert BertCollator(tokenizer, masking=MaskingConfig(max_predictions=7)).max_predictions == 7

    collator = BertCollator(tokenizer, max_length=128, seed=5)
    rows = differ = 0
    for b in _collate_many(collator, make_examples(125), rounds=2):
        special = b["token_type_ids"].new_tensor(sorted(tokenizer.all_special_ids))
        for tokens, labels, ids in zip(b["attention_mask"].sum(1).tolist(), b["labels"],
                                       b["input_ids"]):
            want = min(20, max(1, round(tokens * 0.15)))
            assert int((labels != IGNORE_INDEX).sum()) == want
            specials = int(torch.isin(ids[:tokens], special).sum())  # [CLS] and the [SEP]s
            differ += want != min(20, max(1, round((tokens - specials) * 0.15)))
            rows += 1
    assert differ > rows // 5  # counting the special tokens matters in many rows


def test_nsp_labels_and_pairs(tokenizer, make_examples):
    examples = make_examples(125)
    collator = BertCollator(tokenizer, seed=4)
    labels = torch.cat([b["next_sentence_label"] for b in _collate_many(collator, examples)])
    assert abs(labels.float().mean().item() - 0.5) < 0.05
    b = collator(examples[:32])
    ids, types = b["input_ids"], b["token_type_ids"]
    assert (ids[:, 0] == tokenizer.cls_token_id).all()
    assert ((ids == tokenizer.sep_token_id).sum(dim=1) == 2).all()
    assert (types[:, 0] == 0).all() and (types.max(dim=1).values == 1).all()


def test_inputs_not_mutated(tokenizer, make_examples):
    examples = make_examples(125, n=16)
    before = copy.deepcopy(examples)
    BertCollator(tokenizer)(examples)
    for a, b in zip(examples, before):
        for key in a:
            assert torch.equal(a[key], b[key])


def test_training_lowers_loss(tiny_fit):
    run = tiny_fit("bert_tiny", steps=80)
    losses = metric_series(run, "train/loss")
    assert len(losses) >= 70
    assert falling(losses)
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "config.yaml").is_file()
