"""Sentence pairs (NSP / SOP / SSO): labels, what each label's pair really is, no start cue.

The content tests run :func:`build_segments` on *proxy ids*: token ``OFFSET + row * width +
position`` stands for the raw token at ``(row, position)`` of the batch, so every output
token tells where it was taken from.
"""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch

from plmkit.collator import Collator
from plmkit.data.packing import BlockDataset, pack
from plmkit.data.preprocess import tokenize_corpus
from plmkit.segments import build_segments, example_doc_ids

CLS, SEP, PAD, OFFSET = 2, 3, 0, 10
#: the meaning of each label: B follows A, B precedes A, B is from another document
KINDS = {"nsp": ("next", "other"), "sop": ("next", "previous"),
         "sso": ("next", "previous", "other")}


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
                          cls_id=CLS, sep_id=SEP, pad_id=PAD, task=task, short_seq_prob=short)
    return examples, seg


def _split(seg, row: int) -> tuple[list[int], list[int]]:
    tokens = seg.input_ids[row][seg.attention_mask[row].bool()].tolist()
    first_sep = tokens.index(SEP, 1)
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


# ------------------------------------------------------------ proxies: where each token is from
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def packed(documents, tokenizer):
    """Whole-sentence blocks of 125 tokens, with per-token flags: starts a sentence,
    is a continuation piece (``##``)."""
    corpus = tokenize_corpus(datasets.Dataset.from_dict({"text": documents[:1000]}),
                             tokenizer.backend_tokenizer, num_proc=1)
    blocks = pack(corpus, np.arange(corpus.num_documents), 125, "document")
    dataset = BlockDataset(blocks)
    examples = [dataset[i] for i in range(len(dataset))]
    new_sentence = np.ones(len(blocks.ids), dtype=bool)
    new_sentence[1:] = blocks.sent_index[1:] != blocks.sent_index[:-1]
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    piece = torch.tensor([t.startswith("##") for t in vocab])
    starts = torch.zeros(len(examples), 125, dtype=torch.bool)
    continuation = torch.zeros(len(examples), 125, dtype=torch.bool)
    for i, (s, e) in enumerate(zip(blocks.starts, blocks.ends)):
        starts[i, : e - s] = torch.from_numpy(new_sentence[s:e])
        continuation[i, : e - s] = piece[examples[i]["input_ids"]]
    return examples, starts, continuation


def _proxy_pairs(examples, index, task, seed, short=0.1, doc_ids=True):
    """build_segments on proxy ids of ``examples[index]``; returns (segments, width)."""
    batch = [examples[int(i)] for i in index]
    width = max(len(e["input_ids"]) for e in batch)
    proxies = [{**e, "input_ids": torch.arange(len(e["input_ids"])) + OFFSET + r * width}
               for r, e in enumerate(batch)]
    seg = build_segments(
        Collator.pad(proxies, "input_ids", PAD),
        torch.tensor([len(e["input_ids"]) for e in batch]),
        Collator.pad(batch, "word_ids", -1),
        Collator.pad(batch, "sentence_ids", -1),
        torch.Generator().manual_seed(seed),
        cls_id=CLS, sep_id=SEP, pad_id=PAD, task=task, short_seq_prob=short,
        doc_ids=example_doc_ids(batch, width) if doc_ids else None,
    )
    return seg, width


def _source(part: list[int], width: int) -> tuple[int, int, int]:
    """(row, start, end) of a segment, checked to be one run of one row."""
    rows = {(t - OFFSET) // width for t in part}
    cols = [(t - OFFSET) % width for t in part]
    assert len(rows) == 1 and cols == list(range(cols[0], cols[0] + len(cols))), part
    return rows.pop(), cols[0], cols[0] + len(cols)


def _documents(example) -> set[int]:
    return set(example["doc_ids"].tolist())


@pytest.mark.parametrize("task", ["nsp", "sop", "sso"])
@pytest.mark.parametrize("order", ["shuffled", "in order"])
def test_each_label_is_the_pair_it_claims(packed, task, order):
    """next: B follows A in A's row; previous: B precedes A there (the pair is swapped);
    other: B comes from a row of another document, even when the batch holds consecutive
    blocks of one document (validation batches are in dataset order)."""
    examples = packed[0]
    rng = np.random.default_rng(0)
    seen = dict.fromkeys(KINDS[task], 0)
    for k in range(30):
        index = (rng.choice(len(examples), 32, replace=False) if order == "shuffled"
                 else np.arange(k * 32, k * 32 + 32))
        seg, width = _proxy_pairs(examples, index, task, seed=k)
        for r in range(len(index)):
            first, second = (_source(part, width) for part in _split(seg, r))
            kind = KINDS[task][int(seg.sentence_label[r])]
            seen[kind] += 1
            if kind == "next":
                assert first[0] == second[0] == r and first[2] == second[1]
            elif kind == "previous":
                assert first[0] == second[0] == r and second[2] == first[1]
            else:
                assert first[0] == r and second[0] != r
                here, there = examples[index[r]], examples[index[second[0]]]
                assert not _documents(here) & _documents(there), (r, second[0])
    assert min(seen.values()) > 250, seen


def test_without_doc_ids_every_row_is_its_own_document(packed):
    examples = packed[0]
    seg, width = _proxy_pairs(examples, np.arange(64), "nsp", seed=1, doc_ids=False)
    others = 0
    for r in range(64):
        first, second = (_source(part, width) for part in _split(seg, r))
        if seg.sentence_label[r] == 1:
            others += 1
            assert first[0] == r and second[0] != r
    assert others > 20


def test_no_other_document_in_the_batch_means_no_other_document_label(packed):
    examples = packed[0]
    doc = [i for i, e in enumerate(examples) if len(_documents(e)) == 1]
    same = [i for i in doc if _documents(examples[i]) == _documents(examples[doc[0]])]
    for task, other in (("nsp", 1), ("sso", 2)):
        for index in ([0], same):
            seg, _ = _proxy_pairs(examples, np.array(index), task, seed=3)
            assert not (seg.sentence_label == other).any()


@pytest.mark.parametrize("task", ["nsp", "sop", "sso"])
def test_segment_starts_carry_no_label_cue(packed, task):
    """For every label, the same share of first and second segments starts at a sentence
    start, and the same share starts with a continuation piece (``##``), within 2 points."""
    examples, starts, continuation = packed
    rng = np.random.default_rng(1)
    flags, labels = [], []
    for k in range(100):
        index = torch.from_numpy(rng.choice(len(examples), 128, replace=False))
        seg, width = _proxy_pairs(examples, index, task, seed=100 + k)
        rows = torch.arange(len(index))
        sep = (seg.input_ids == SEP).int().argmax(dim=1)
        heads = []
        for position in (torch.ones_like(sep), sep + 1):
            source = seg.input_ids[rows, position] - OFFSET
            example, column = index[source // width], source % width
            heads += [starts[example, column], continuation[example, column]]
        flags.append(torch.stack(heads, dim=1).float())
        labels.append(seg.sentence_label)
    flags, labels = torch.cat(flags), torch.cat(labels)
    shares = torch.stack([flags[labels == c].mean(dim=0) for c in range(len(KINDS[task]))])
    spread = shares.max(dim=0).values - shares.min(dim=0).values
    assert (spread < 0.02).all(), (task, shares)
    # and most segments do start at a sentence start (a cut in one sentence is the exception)
    assert (shares[:, [0, 2]] > 0.95).all(), shares
