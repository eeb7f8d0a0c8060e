"""ERNIE's plmkit.plugins.ernie.lexicon: lexicon files, the batch phrase matcher and whole-unit
span selection. (The shared window helpers are tested in test_masking.py.)"""

from __future__ import annotations

import gzip
import time

import pytest
import torch

from plmkit.plugins.ernie.lexicon import (
    ENTITY,
    PHRASE,
    PhraseMatcher,
    complete_runs,
    load_lexicon,
    read_lexicon,
    select_units,
    span_units,
    spans_from_offsets,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _matcher(entries, max_tokens=8):
    """A matcher over hand-made token-id entries: (ids, word_start_flags, kind)."""
    return PhraseMatcher(
        [e[0] for e in entries], [e[1] for e in entries], [e[2] for e in entries], max_tokens
    )


def _spans(matcher, ids, word_ids=None):
    ids = torch.tensor(ids).unsqueeze(0)
    words = None if word_ids is None else torch.tensor(word_ids).unsqueeze(0)
    return matcher.match(ids, words).spans()[0]


@pytest.fixture(scope="module")
def wordnet_matcher(tokenizer):
    return PhraseMatcher.from_tokenizer(tokenizer)


def test_read_lexicon_formats(tmp_path):
    tsv = tmp_path / "lex.tsv"
    tsv.write_text("# comment\nNew York\tlocation\n\nice cream\tphrase\nAda Lovelace\tPER\n")
    assert read_lexicon(tsv) == [
        ("New York", "location"), ("ice cream", "phrase"), ("Ada Lovelace", "PER")
    ]
    plain = tmp_path / "lex.txt.gz"
    with gzip.open(plain, "wt", encoding="utf-8") as f:
        f.write("hot dog\nred wine\n")
    assert read_lexicon(plain) == [("hot dog", "phrase"), ("red wine", "phrase")]
    assert load_lexicon(["a b", ("c d", "group")]) == [("a b", "phrase"), ("c d", "group")]
    wordnet = load_lexicon()
    assert len(wordnet) > 60000
    assert {k for _, k in wordnet} == {"person", "location", "group", "phrase"}


def test_multi_token_phrases_and_word_boundaries():
    # ids: 10 "ice", 11 "cream", 12 "##s", 20 "new", 21 "york", 22 "city"
    m = _matcher([
        ([10, 11], [1, 1], "phrase"),              # "ice cream"
        ([20, 21], [1, 1], "location"),            # "new york"
        ([10, 11, 12], [1, 1, 0], "phrase"),       # "ice creams" (last word = 2 tokens)
    ])
    # found, with their kinds
    assert _spans(m, [5, 10, 11, 6, 20, 21]) == [(1, 3, PHRASE), (4, 6, ENTITY)]
    # a multi-token phrase whose last word has two tokens
    assert _spans(m, [10, 11, 12, 7], [0, 1, 1, 2]) == [(0, 3, PHRASE)]
    # "ice cream" must not match when "cream" continues into "##s" (ends inside a word) ...
    m2 = _matcher([([10, 11], [1, 1], "phrase")])
    assert _spans(m2, [10, 11, 12], [0, 1, 1]) == []
    # ... nor when the window starts inside a word, nor across a missing word boundary
    assert _spans(m2, [9, 10, 11], [0, 0, 1]) == []
    assert _spans(m2, [10, 11], [0, 0]) == []
    # with explicit word ids, the same tokens as two words do match
    assert _spans(m2, [10, 11], [0, 1]) == [(0, 2, PHRASE)]


def test_overlaps_resolved_longest_first_then_leftmost():
    m = _matcher([
        ([1, 2], [1, 1], "phrase"),
        ([2, 3, 4], [1, 1, 1], "phrase"),
        ([4, 5], [1, 1], "person"),
    ])
    # the 3-token match wins over both 2-token matches it overlaps
    assert _spans(m, [1, 2, 3, 4, 5]) == [(1, 4, PHRASE)]
    # without it, the two 2-token matches do not overlap each other: both are found
    assert _spans(m, [1, 2, 9, 4, 5]) == [(0, 2, PHRASE), (3, 5, ENTITY)]
    # equal lengths: greedy left to right
    chain = _matcher([([7, 7], [1, 1], "phrase")])
    assert _spans(chain, [7, 7, 7, 7, 7]) == [(0, 2, PHRASE), (2, 4, PHRASE)]
    m3 = _matcher([([1, 2], [1, 1], "phrase"), ([2, 3], [1, 1], "group")])
    assert _spans(m3, [1, 2, 3]) == [(0, 2, PHRASE)]
    # the same tokens listed as a phrase and as an entity: the entity kind wins
    dup = _matcher([([1, 2], [1, 1], "phrase"), ([1, 2], [1, 1], "location")])
    assert _spans(dup, [1, 2]) == [(0, 2, ENTITY)]
    # candidates exclude positions (e.g. special tokens)
    ids = torch.tensor([[1, 2, 3]])
    blocked = torch.tensor([[True, False, True]])
    assert m3.match(ids, candidates=blocked).spans() == [[]]


def test_wordnet_matches_are_lexicon_phrases(tokenizer, make_examples, wordnet_matcher):
    """Every match on real text decodes to a lexicon entry; spans align with words."""
    examples = make_examples(126, n=128)
    ids = torch.stack([torch.nn.functional.pad(e["input_ids"], (0, 126 - len(e["input_ids"])))
                       for e in examples])
    words = torch.stack([torch.nn.functional.pad(e["word_ids"], (0, 126 - len(e["word_ids"])),
                                                 value=-1) for e in examples])
    found = wordnet_matcher.match(ids, words)
    phrases = [p for p, _ in load_lexicon()]
    entries = {tuple(ids) for ids in tokenizer(phrases, add_special_tokens=False)["input_ids"]}
    n = 0
    for row, spans in enumerate(found.spans()):
        for s, e, _kind in spans:
            assert tuple(ids[row, s:e].tolist()) in entries, tokenizer.decode(ids[row, s:e])
            # aligned with words: starts a word, ends at a word end
            assert s == 0 or words[row, s] != words[row, s - 1]
            assert e == ids.shape[1] or words[row, e] != words[row, e - 1]
            n += 1
    assert n > 50  # the bundled corpus is full of WordNet phrases


def test_matcher_speed_is_reported(tokenizer, make_examples, wordnet_matcher):
    """Not a timed assertion: prints matches/s for a 128 x 128 batch (see the report)."""
    examples = make_examples(128, mode="stream", n=128)
    ids = torch.stack([e["input_ids"] for e in examples])
    words = torch.stack([e["word_ids"] for e in examples])
    wordnet_matcher.match(ids, words)
    start = time.perf_counter()
    found = wordnet_matcher.match(ids, words)
    elapsed = time.perf_counter() - start
    print(f"\nmatcher: {found.num_spans} matches in {elapsed * 1e3:.1f} ms for {tuple(ids.shape)}"
          f" ({found.num_spans / elapsed:,.0f} matches/s, {ids.numel() / elapsed:,.0f} tokens/s)")
    assert found.num_spans > 0


def test_spans_from_offsets_and_complete_runs():
    tag, length, kind = spans_from_offsets(
        [torch.tensor([[1, 3], [5, 6]]), None, [[0, 2], [4, 9]]], width=6,
        kinds=[ENTITY, ENTITY, PHRASE],
    )
    assert tag[0].tolist() == [-1, 1, 1, -1, -1, 5]
    assert length[0].tolist() == [0, 2, 2, 0, 0, 1]
    assert (tag[1] == -1).all()
    assert tag[2].tolist() == [12, 12, -1, -1, 16, 16]  # [4, 9) clipped to [4, 6)
    assert kind[2, 0] == PHRASE and kind[0, 1] == ENTITY
    # a span seen whole keeps its start; a cut one (only 1 of its 2 tokens) is dropped
    cut = torch.tensor([[-1, 7, 7, -1, 9]])
    full = torch.tensor([[0, 2, 2, 0, 2]])
    assert complete_runs(cut, full).tolist() == [[-1, 1, 1, -1, -1]]


def test_select_units_whole_units_exact_budget():
    g = torch.Generator().manual_seed(0)
    batch, length = 256, 60
    # random units of 1..4 tokens, a few long "entities" of 5 tokens
    sizes = torch.randint(1, 5, (batch, length), generator=g)
    sizes[:, ::7] = 5
    unit_ids = torch.stack([
        torch.repeat_interleave(torch.arange(length), sizes[b])[:length] for b in range(batch)
    ])
    candidates = torch.rand(batch, length, generator=g) > 0.05
    counts = torch.full((batch,), 9)
    selected = select_units(candidates, unit_ids, counts, g)
    assert (selected.sum(dim=1) <= counts).all()
    assert (selected.sum(dim=1) == counts).float().mean() > 0.95  # top-up passes fill it
    assert not (selected & ~candidates).any()
    for b in range(batch):
        for u in unit_ids[b][selected[b]].unique():
            assert selected[b][unit_ids[b] == u].all()  # whole units only
    # spans -> units: a span takes the unit of its first token
    basic = torch.tensor([[0, 1, 2, 3, -1]])
    start = torch.tensor([[-1, 1, 1, -1, -1]])
    active = torch.ones(1, 5, dtype=torch.bool)
    assert span_units(basic, start, active).tolist() == [[0, 1, 1, 3, -1]]
