"""Sentence pairs (NSP / SOP / SSO): labels, layout, and the A|B junction under trimming."""

from __future__ import annotations

import torch

from plmkit.collator import Collator
from plmkit.segments import build_segments


def _contiguous(part: list[int], row: list[int]) -> bool:
    n = len(part)
    return any(row[i : i + n] == part for i in range(len(row) - n + 1))


def _pairs(make_examples, task: str, short: float, seed: int = 0, n: int = 128):
    examples = make_examples(125, n=n)
    ids = Collator.pad(examples, "input_ids", 0)
    lengths = torch.tensor([len(e["input_ids"]) for e in examples])
    words = Collator.pad(examples, "word_ids", -1)
    sentences = Collator.pad(examples, "sentence_ids", -1)
    seg = build_segments(ids, lengths, words, sentences, torch.Generator().manual_seed(seed),
                          cls_id=2, sep_id=3, pad_id=0, task=task, short_seq_prob=short)
    return examples, seg


def _split(seg, row: int) -> tuple[list[int], list[int]]:
    tokens = seg.input_ids[row][seg.attention_mask[row].bool()].tolist()
    first_sep = tokens.index(3, 1)
    return tokens[1:first_sep], tokens[first_sep + 1 : -1]


def test_sop_keeps_the_junction_even_when_shortened(make_examples):
    examples, seg = _pairs(make_examples, "sop", short=1.0)
    for row, example in enumerate(examples):
        first, second = _split(seg, row)
        original = example["input_ids"].tolist()
        in_order = first + second if seg.sentence_label[row] == 0 else second + first
        assert _contiguous(in_order, original), row
        assert len(first) + len(second) <= len(original)


def test_sentence_task_labels_are_balanced(make_examples):
    for task, classes in (("nsp", 2), ("sop", 2), ("sso", 3)):
        labels = torch.cat([_pairs(make_examples, task, 0.1, seed=s)[1].sentence_label
                            for s in range(8)])
        shares = torch.bincount(labels, minlength=classes).float() / len(labels)
        assert (shares - 1 / classes).abs().max() < 0.05, (task, shares)


def test_other_document_pairs_take_the_second_segment_from_another_row(make_examples):
    examples, seg = _pairs(make_examples, "nsp", short=0.0)
    for row, example in enumerate(examples):
        first, second = _split(seg, row)
        original = example["input_ids"].tolist()
        assert original[: len(first)] == first  # A is the start of the row (no trimming)
        if seg.sentence_label[row] == 0:
            assert original[len(first) : len(first) + len(second)] == second
    assert (seg.token_type_ids.sum(dim=1) > 0).all()
