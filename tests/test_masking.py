"""The shared masking primitives: budgets, token / whole-word / n-gram / geometric-span selection,
80/10/10 corruption, window helpers. Statistical checks run over many rows with stated
tolerances; the span selectors are also compared with plain-Python re-implementations of the
original algorithms (google-research/albert n-gram masking, facebookresearch/SpanBERT span
masking)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from plmkit import masking
from plmkit.collator import IGNORE_INDEX

# ----------------------------------------------------------------------------- fixtures


pytestmark = pytest.mark.usefixtures("one_thread")


def make_rows(batch: int, words: int, seed: int, max_word: int = 3, pad_max: int = 0):
    """Rows ``[CLS] w1 .. wn [SEP] [PAD]*`` with words of 1..max_word tokens.

    Returns ``(candidates, word_ids, words_per_row)``: special/padding positions are not
    candidates and have word id -1; word ids count from 0 in each row.
    """
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, max_word + 1, (batch, words), generator=g)
    pads = torch.randint(0, pad_max + 1, (batch,), generator=g)
    n_words = words - pads  # shorter rows: fewer words, then padding
    sizes = torch.where(torch.arange(words) < n_words.unsqueeze(1), sizes, 0)
    tokens = sizes.sum(dim=1)
    width = int(tokens.max()) + 2
    pos = torch.arange(width - 2).expand(batch, -1).contiguous()
    index = torch.searchsorted(sizes.cumsum(dim=1), pos, right=True)
    content = torch.where(pos < tokens.unsqueeze(1), index, -1)
    word_ids = torch.full((batch, width), -1, dtype=torch.long)
    word_ids[:, 1:-1] = content
    return word_ids >= 0, word_ids, n_words


def word_starts(word_ids: torch.Tensor) -> torch.Tensor:
    prev = torch.cat([torch.full_like(word_ids[:, :1], -2), word_ids[:, :-1]], 1)
    return (word_ids >= 0) & (word_ids != prev)


def per_unit(unit_ids: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For every (row, unit id >= 0) present: (tokens in the unit, sum of ``values`` there)."""
    inside = unit_ids >= 0
    width = int(unit_ids.max()) + 1 if inside.any() else 1
    keys = (torch.arange(len(unit_ids)).unsqueeze(1) * width + unit_ids)[inside]
    size = torch.bincount(keys, minlength=len(unit_ids) * width)
    total = torch.bincount(keys, weights=values[inside].double(), minlength=len(size))
    present = size > 0
    return size[present], total[present].long()


def never_split(selected: torch.Tensor, word_ids: torch.Tensor) -> bool:
    """Every word is either wholly selected or not at all."""
    size, chosen = per_unit(word_ids, selected)
    return bool(((chosen == 0) | (chosen == size)).all())


def spans_of(span_ids: torch.Tensor, row: int) -> list[tuple[int, int]]:
    """(first, last) positions of every span id of a row."""
    ids = span_ids[row]
    out = []
    for s in ids[ids >= 0].unique().tolist():
        where = (ids == s).nonzero().squeeze(1)
        out.append((int(where.min()), int(where.max())))
    return out


def tv(p: np.ndarray, q: np.ndarray) -> float:
    return 0.5 * float(np.abs(p - q).sum())


def chi2_same_law(a: list[int], b: list[int], top: int) -> float:
    """Two-sample chi-square homogeneity statistic over the values 1 .. top (top = "top+")."""
    ha = np.bincount(np.minimum(a, top), minlength=top + 1)[1:]
    hb = np.bincount(np.minimum(b, top), minlength=top + 1)[1:]
    total = ha + hb
    ha, hb, total = ha[total > 0], hb[total > 0], total[total > 0]
    ea, eb = total * ha.sum() / total.sum(), total * hb.sum() / total.sum()
    return float(((ha - ea) ** 2 / ea + (hb - eb) ** 2 / eb).sum())


# chi-square critical values at the 0.1% level, by degrees of freedom
CHI2_999 = {2: 13.82, 11: 31.26}


def histogram(values: list[int], size: int) -> np.ndarray:
    h = np.bincount(np.asarray(values, dtype=np.int64), minlength=size + 1)[: size + 1]
    return h / max(h.sum(), 1)


# ------------------------------------------------------------------------------- budgets


def test_exact_counts():
    n = torch.tensor([0, 1, 10, 30, 50, 128, 1000])
    counts = masking.exact_counts(n, 0.15, max_predictions=20)
    # round half to even (Python's round): 10 * .15 = 1.5 -> 2, 30 * .15 = 4.5 -> 4
    assert counts.tolist() == [0, 1, 2, 4, 8, 19, 20]
    assert masking.exact_counts(torch.tensor([1000]), 0.15).tolist() == [150]


def test_ceil_counts_like_python():
    n = torch.arange(0, 600)
    counts = masking.ceil_counts(n, 0.15)
    assert counts.tolist() == [math.ceil(k * 0.15) if k else 0 for k in range(600)]
    assert masking.ceil_counts(torch.tensor([7]), 0.15).item() == 2  # ceil(1.05)
    assert masking.ceil_counts(torch.tensor([510]), 0.15, max_predictions=40).item() == 40


# ----------------------------------------------------------------- select_exact / bernoulli


def test_select_exact_tokens():
    g = torch.Generator().manual_seed(0)
    cand, words, _ = make_rows(64, 60, seed=1, pad_max=20)
    counts = masking.exact_counts(cand.sum(1), 0.15)
    freq = torch.zeros(cand.shape)
    for _ in range(200):
        sel = masking.select_exact(cand, counts, g)
        assert torch.equal(sel.sum(1), counts)
        assert not (sel & ~cand).any()
        freq += sel
    # every candidate is equally likely: per-position rate = counts / n within 4 sigma
    rate = (counts / cand.sum(1)).unsqueeze(1).expand_as(freq)[cand]
    observed = (freq / 200)[cand]
    sigma = (rate * (1 - rate) / 200).sqrt()
    assert ((observed - rate).abs() < 4.5 * sigma + 1e-9).float().mean() > 0.99


def test_select_exact_whole_words_never_split():
    g = torch.Generator().manual_seed(1)
    cand, words, _ = make_rows(128, 50, seed=2, pad_max=10)
    cand[:, 5] = False  # a word with a non-candidate token is never taken
    bad_word = words[:, 5]
    counts = masking.exact_counts(cand.sum(1), 0.15)
    for _ in range(20):
        sel = masking.select_exact(cand, counts, g, unit_ids=words)
        assert never_split(sel, words)
        assert not (sel & (words == bad_word.unsqueeze(1))).any()
        assert (sel.sum(1) <= counts).all()  # never over the budget
        assert (sel.sum(1) >= counts - 2).float().mean() > 0.95


def test_whole_words_meet_the_budget_skipping_words_that_do_not_fit():
    """BERT's rule: a word that would overshoot is skipped and the next one tried, so a row
    stays within its budget and ends under it only when no word left fits; rows with enough
    one-token words are filled exactly."""
    g = torch.Generator().manual_seed(4)
    cand, words, _ = make_rows(384, 60, seed=5, max_word=4, pad_max=30)
    counts = masking.exact_counts(cand.sum(1), 0.15, max_predictions=20)
    size, _ = per_unit(words, cand)
    one_token = torch.zeros(len(cand), dtype=torch.long)
    for row in range(len(cand)):
        _, ids_count = words[row][words[row] >= 0].unique(return_counts=True)
        one_token[row] = (ids_count == 1).sum()
    for _ in range(10):
        sel = masking.select_exact(cand, counts, g, unit_ids=words)
        taken = sel.sum(1)
        assert never_split(sel, words) and (taken <= counts).all()
        assert torch.equal(taken[one_token >= counts], counts[one_token >= counts])
        # where a row is under budget, every word it left out is larger than what is left
        room = counts - taken
        left_out = (words >= 0) & ~sel
        word_size = torch.zeros_like(words)
        for row in range(len(cand)):
            ids = words[row].clamp(min=0)
            word_size[row] = torch.bincount(ids, minlength=int(ids.max()) + 1)[ids]
        assert (~left_out | (word_size > room.unsqueeze(1))).all()
    assert (one_token >= counts).sum() > 20 and size.max() == 4
    # a word larger than the whole budget is never taken (nothing rather than too much)
    big = torch.tensor([[-1, 0, 0, 0, -1]])
    nothing = masking.select_exact(big >= 0, torch.tensor([2]), g, unit_ids=big)
    assert not nothing.any()


def test_select_bernoulli_rate_tokens_and_words():
    g = torch.Generator().manual_seed(2)
    cand, words, _ = make_rows(256, 60, seed=3, pad_max=10)
    sel = torch.stack([masking.select_bernoulli(cand, 0.15, g) for _ in range(20)])
    assert not (sel & ~cand).any()
    assert abs(sel.sum().item() / (cand.sum().item() * 20) - 0.15) < 0.005
    sel_w = torch.stack(
        [masking.select_bernoulli(cand, 0.15, g, unit_ids=words) for _ in range(20)]
    )
    starts = word_starts(words)
    # the rate holds per word, and a word is never split
    assert abs((sel_w & starts).sum().item() / (starts.sum().item() * 20) - 0.15) < 0.005
    assert all(never_split(sel_w[k], words) for k in range(len(sel_w)))


# ------------------------------------------------------------------------------ corrupt


def _categories(corrupted, original, selected, mask_id):
    is_mask = selected & (corrupted == mask_id)
    is_keep = selected & (corrupted == original)
    is_rand = selected & ~is_mask & ~is_keep
    return is_mask, is_keep, is_rand


def test_corrupt_per_token():
    g = torch.Generator().manual_seed(3)
    vocab, mask_id = 1000, 4
    ids = torch.randint(10, vocab, (256, 128), generator=g)
    before = ids.clone()
    selected = torch.rand(ids.shape, generator=g) < 0.15
    random_ids = masking.non_special_ids(vocab, [0, 1, 2, 3, 4])
    out, labels = masking.corrupt(ids, selected, g, mask_id, random_ids)
    assert torch.equal(ids, before)  # not mutated
    assert torch.equal(labels, torch.where(selected, ids, IGNORE_INDEX))
    assert torch.equal(out[~selected], ids[~selected])
    is_mask, is_keep, is_rand = _categories(out, ids, selected, mask_id)
    n = selected.sum().item()
    # random replacements equal to the original (1/995) count as kept: allow 0.5 point
    assert abs(is_mask.sum().item() / n - 0.8) < 0.01
    assert abs(is_rand.sum().item() / n - 0.1) < 0.01
    assert abs(is_keep.sum().item() / n - 0.1) < 0.01
    assert not torch.isin(out[is_rand], torch.tensor([0, 1, 2, 3, 4])).any()


def test_corrupt_per_unit_shares_the_decision():
    g = torch.Generator().manual_seed(4)
    vocab, mask_id = 1000, 4
    cand, words, _ = make_rows(256, 60, seed=5)
    ids = torch.randint(10, vocab, cand.shape, generator=g)
    sel, span_ids = masking.select_geometric_spans(cand, words, torch.full((256,), 20), g)
    random_ids = masking.non_special_ids(vocab, [0, 1, 2, 3, 4])
    decisions = np.zeros(3)
    for _ in range(12):
        out, labels = masking.corrupt(ids, sel, g, mask_id, random_ids, unit_ids=span_ids)
        assert torch.equal(labels, torch.where(sel, ids, IGNORE_INDEX))
        is_mask, is_keep, is_rand = _categories(out, ids, sel, mask_id)
        size, masked = per_unit(span_ids, is_mask)
        _, kept = per_unit(span_ids, is_keep)
        assert ((masked == 0) | (masked == size)).all()  # one decision per span
        # a random span may hit an original token by chance (p = 1/995 per token)
        decisions += [(masked > 0).sum().item(), ((masked == 0) & (2 * kept <= size)).sum().item(),
                      ((masked == 0) & (2 * kept > size)).sum().item()]
    d = decisions / decisions.sum()
    assert decisions.sum() > 8000
    assert abs(d[0] - 0.8) < 0.02 and abs(d[1] - 0.1) < 0.015 and abs(d[2] - 0.1) < 0.015


def test_non_special_ids():
    ids = masking.non_special_ids(10, [0, 3, 9])
    assert ids.tolist() == [1, 2, 4, 5, 6, 7, 8]


# ------------------------------------------------------------------------ span helpers


def test_run_ids_and_span_bounds():
    sel = torch.tensor([[0, 1, 1, 0, 1, 0, 0, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0, 0, 0, 1]]).bool()
    ids = masking.run_ids(sel)
    o = -1
    assert ids.tolist() == [[o, 0, 0, o, 1, o, o, 2, 2, 2], [0, 0, 0, 0, o, o, o, o, o, 1]]
    first, last = masking.span_bounds(ids)
    assert first.tolist() == [[o, 1, 1, o, 4, o, o, 7, 7, 7], [0, 0, 0, 0, o, o, o, o, o, 9]]
    assert last.tolist() == [[o, 2, 2, o, 4, o, o, 9, 9, 9], [3, 3, 3, 3, o, o, o, o, o, 9]]


# ------------------------------------------------------------------------ window helpers


def test_window_count_matches_slices():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 13, generator=g) < 0.4
    for left, right in [(0, 0), (0, 2), (-2, -1), (-3, 3), (1, 4), (-20, 20)]:
        got = masking.window_count(x, left, right)
        for s in range(x.shape[1]):
            lo, hi = max(s + left, 0), max(min(s + right + 1, x.shape[1]), 0)
            expected = x[:, lo:hi].long().sum(dim=1) if hi > lo else torch.zeros(8)
            assert got[:, s].tolist() == expected.tolist(), (left, right, s)


def test_greedy_non_overlapping_matches_a_python_scan():
    g = torch.Generator().manual_seed(0)
    for length in (2, 3, 5):
        starts = torch.rand(64, 40, generator=g) < 0.3
        got = masking.greedy_non_overlapping(starts, length)
        for row in range(64):
            expected, end = [], -1
            for s in starts[row].nonzero().flatten().tolist():
                if s >= end:
                    expected.append(s)
                    end = s + length
            assert got[row].nonzero().flatten().tolist() == expected


# ------------------------------------------------------------------------ select_ngrams


def albert_reference(sizes: list[int], budget: int, rng: np.random.Generator, max_n: int = 3):
    """google-research/albert create_masked_lm_predictions, n-gram branch, on word sizes.

    Returns the number of words of every chosen n-gram and the tokens selected.
    """
    pvals = 1.0 / np.arange(1, max_n + 1)
    pvals /= pvals.sum()
    ngram_sets = [[list(range(i, min(i + n, len(sizes)))) for n in range(1, max_n + 1)]
                  for i in range(len(sizes))]
    rng.shuffle(ngram_sets)
    masked, covered, lengths = 0, set(), []
    for cand in ngram_sets:
        if masked >= budget:
            break
        n = rng.choice(np.arange(1, max_n + 1), p=pvals)
        gram = cand[n - 1]
        n -= 1
        while masked + sum(sizes[w] for w in gram) > budget:
            if n == 0:
                break
            gram = cand[n - 1]
            n -= 1
        if masked + sum(sizes[w] for w in gram) > budget:
            continue
        if any(w in covered for w in gram):
            continue
        covered.update(gram)
        masked += sum(sizes[w] for w in gram)
        lengths.append(len(gram))
    return lengths, masked


def ngram_lengths(span_ids: torch.Tensor, words: torch.Tensor) -> list[int]:
    """Words per chosen n-gram (every span id of every row)."""
    _, starts = per_unit(span_ids, word_starts(words))
    return starts.tolist()


def test_select_ngrams_frequencies_and_whole_words():
    # long rows, one-token words, a 5% budget: n-grams shortened at the budget (one per row
    # at most) and skipped for overlap (favouring short ones) are rare, so the chosen n-grams
    # follow p(n) = 1/n (measured bias < 0.5 point; the noise over 16k n-grams ~0.4 point)
    g = torch.Generator().manual_seed(5)
    cand, words, _ = make_rows(16, 4096, seed=6, max_word=1)
    counts = torch.full((16,), 205)
    lengths = []
    for _ in range(8):
        before = (cand.clone(), words.clone(), counts.clone())
        sel, span_ids = masking.select_ngrams(cand, words, counts, g)
        assert all(torch.equal(a, b) for a, b in zip(before, (cand, words, counts)))
        assert torch.equal(sel, span_ids >= 0)
        assert torch.equal(sel.sum(1), counts)  # one-token words: the budget is met exactly
        lengths += ngram_lengths(span_ids, words)
    freq = histogram(lengths, 3)[1:]
    assert len(lengths) > 15000
    assert np.abs(freq - np.array([6, 3, 2]) / 11).max() < 0.02, freq


def test_select_ngrams_realistic_matches_albert():
    # BERT-sized rows (126 tokens, words of 1-3 tokens) with ALBERT's budget of 19-20 tokens
    g = torch.Generator().manual_seed(7)
    rng = np.random.default_rng(7)
    cand, words, n_words = make_rows(256, 64, seed=8, pad_max=8)
    counts = masking.exact_counts(cand.sum(1), 0.15, 20)
    ours, ref, tokens_ours, tokens_ref = [], [], [], []
    for _ in range(4):
        sel, span_ids = masking.select_ngrams(cand, words, counts, g)
        assert (sel.sum(1) <= counts).all()  # never over the budget
        assert not (sel & ~cand).any()
        assert never_split(sel, words)  # whole words only, one n-gram per word
        same_word = (words[:, 1:] == words[:, :-1]) & (words[:, 1:] >= 0)
        assert (span_ids[:, 1:] == span_ids[:, :-1])[same_word].all()
        ours += ngram_lengths(span_ids, words)
        tokens_ours += sel.sum(1).tolist()
    for b in range(len(words)):
        sizes = torch.bincount(words[b][words[b] >= 0]).tolist()
        for _ in range(4):
            lengths, masked = albert_reference(sizes, int(counts[b]), rng)
            ref += lengths
            tokens_ref.append(masked)
    assert chi2_same_law(ours, ref, 3) < CHI2_999[2]
    assert tv(histogram(ours, 3), histogram(ref, 3)) < 0.03
    assert abs(np.mean(tokens_ours) - np.mean(tokens_ref)) < 0.2


def test_select_ngrams_respects_invalid_words_and_probs():
    g = torch.Generator().manual_seed(9)
    cand, words, _ = make_rows(64, 40, seed=10, max_word=1)
    cand[:, 10] = False  # a special token in the middle: nothing crosses it
    sel, span_ids = masking.select_ngrams(cand, words, torch.full((64,), 30), g, max_n=2,
                                          probs=[0.0, 1.0])
    assert not sel[:, 10].any()
    assert not ((span_ids[:, 9] >= 0) & (span_ids[:, 9] == span_ids[:, 11])).any()
    lengths = ngram_lengths(span_ids, words)
    # only bigrams are drawn; unigrams appear only where a bigram is cut by an edge/budget
    assert np.mean(np.asarray(lengths) == 2) > 0.8


# ---------------------------------------------------------------- select_geometric_spans


def spanbert_reference(is_start: list[bool], budget: int, law: np.ndarray,
                       rng: np.random.Generator) -> list[int]:
    """facebookresearch/SpanBERT PairWithSpanMaskingScheme.mask + merge_intervals.

    Returns the token lengths of the merged spans.
    """
    n = len(is_start)
    lens = np.arange(1, len(law) + 1)

    def word_end(i):
        i += 1
        while i < n and not is_start[i]:
            i += 1
        return i

    mask, spans = set(), []
    while len(mask) < budget:
        span_len = rng.choice(lens, p=law)
        anchor = rng.integers(n)
        if anchor in mask:
            continue
        left = anchor
        while left > 0 and not is_start[left]:
            left -= 1
        right = word_end(anchor)
        spans.append([left, left])
        for i in range(left, right):
            if len(mask) >= budget:
                break
            mask.add(i)
            spans[-1][-1] = i
        words = 1
        while words < span_len and right < n and len(mask) < budget:
            left2, right = right, word_end(right)
            words += 1
            for i in range(left2, right):
                if len(mask) >= budget:
                    break
                mask.add(i)
                spans[-1][-1] = i
    merged = []
    for s, e in sorted(spans):
        if merged and merged[-1][1] + 1 >= s:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [e - s + 1 for s, e in merged]


def test_geometric_span_length_law():
    """One span per row (budget 1 token, last span not cut): its length in words follows the
    clipped geometric law. The expected histogram accounts for spans cut by the row end
    (start word w of a row with W words can cover at most W - w words). Bound: TV < 0.02
    over ~16k spans (the sampling noise is ~0.007; p = 0.25 instead of 0.2 gives ~0.06)."""
    g = torch.Generator().manual_seed(11)
    law = masking.geometric_length_probs(0.2, 1, 10).numpy()
    assert abs(float((law * np.arange(1, 11)).sum()) - 3.8) < 0.01  # mean ~3.8 words
    observed, expected = [], np.zeros(11)
    for seed in range(8):
        cand, words, n_words = make_rows(2000, 128, seed=100 + seed)
        before = (cand.clone(), words.clone())
        sel, span_ids = masking.select_geometric_spans(
            cand, words, torch.ones(2000, dtype=torch.long), g, truncate=False
        )
        assert torch.equal(before[0], cand) and torch.equal(before[1], words)
        assert (span_ids.max(dim=1).values == 0).all()  # exactly one span per row
        starts = word_starts(words)
        first = sel.float().argmax(dim=1)
        assert starts[torch.arange(2000), first].all()  # spans start on word starts
        # words per span: whole words only
        counted = (sel & starts).sum(1)
        last = sel.shape[1] - 1 - sel.flip(1).float().argmax(dim=1)
        nxt = words[torch.arange(2000), (last + 1).clamp(max=sel.shape[1] - 1)]
        assert (nxt != words[torch.arange(2000), last]).all()  # ends on a word end
        observed += counted.tolist()
        # expected: start word w with probability size(w) / tokens, length clipped at W - w
        sizes = torch.zeros(len(words), 129, dtype=torch.long).scatter_add_(
            1, words.clamp(min=0), (words >= 0).long())[:, :128].numpy()
        start_p = sizes / sizes.sum(1, keepdims=True)
        far = np.ones(len(start_p))  # mass of starts with >= 10 words to their right
        for room in range(1, 10):
            w_idx = np.clip(n_words.numpy()[:, None] - room, 0, 127)
            p_room = np.take_along_axis(start_p, w_idx, 1)[:, 0]
            far -= p_room
            clipped = np.concatenate([law[: room - 1], [law[room - 1 :].sum()]])
            expected[1 : room + 1] += p_room.sum() * clipped
        expected[1:] += far.sum() * law
    expected /= expected.sum()
    assert tv(histogram(observed, 10), expected) < 0.02


def test_geometric_spans_budget_and_merging():
    g = torch.Generator().manual_seed(12)
    cand, words, _ = make_rows(256, 100, seed=13, pad_max=30)
    cand[:, 7] = False  # an invalid word in the middle of every row
    counts = masking.ceil_counts(cand.sum(1), 0.15)
    before = (cand.clone(), words.clone(), counts.clone())
    sel, span_ids = masking.select_geometric_spans(cand, words, counts, g)
    assert all(torch.equal(a, b) for a, b in zip(before, (cand, words, counts)))
    assert torch.equal(sel.sum(1), counts)  # the original stops exactly at the budget
    assert not (sel & ~cand).any() and not sel[:, 7].any()
    assert not sel[words == words[:, 7:8]].any()  # nor any token of the invalid word
    starts = word_starts(words)
    assert torch.equal(span_ids, masking.run_ids(sel))  # merged: one id per maximal run
    first, _ = masking.span_bounds(span_ids)
    span_first = sel & (first == torch.arange(sel.shape[1]))
    assert starts[span_first].all()  # every (merged) span starts on a word start
    # without truncation the budget may be passed by at most one span (<= 10 words)
    sel2, _ = masking.select_geometric_spans(cand, words, counts, g, truncate=False)
    assert (sel2.sum(1) >= counts).all() and (sel2.sum(1) <= counts + 30).all()
    assert never_split(sel2, words)
    # rows with fewer tokens than their budget take all they can
    sel3, _ = masking.select_geometric_spans(cand, words, torch.full((256,), 10_000), g)
    assert torch.equal(sel3, cand & ~(words == words[:, 7:8]))


def test_geometric_spans_match_spanbert_reference():
    """Realistic rows (~128 tokens, budget ceil(15%)): the merged-span lengths (in tokens) and
    the number of spans per row match the original algorithm: a chi-square homogeneity test
    at the 0.1% level (the statistic is ~3-17 here; not cutting the last span gives ~240)."""
    g = torch.Generator().manual_seed(14)
    rng = np.random.default_rng(14)
    law = masking.geometric_length_probs(0.2, 1, 10).numpy()
    cand, words, _ = make_rows(512, 64, seed=15, pad_max=10)
    counts = masking.ceil_counts(cand.sum(1), 0.15)
    ours, ref, runs_ours, runs_ref = [], [], [], []
    starts = word_starts(words)
    for _ in range(3):
        sel, span_ids = masking.select_geometric_spans(cand, words, counts, g)
        for b in range(len(sel)):
            bounds = spans_of(span_ids, b)
            ours += [e - s + 1 for s, e in bounds]
            runs_ours.append(len(bounds))
    for b in range(len(words)):
        row_starts = starts[b][cand[b]].tolist()
        for _ in range(3):
            lengths = spanbert_reference(row_starts, int(counts[b]), law, rng)
            ref += lengths
            runs_ref.append(len(lengths))
    assert chi2_same_law(ours, ref, 12) < CHI2_999[11]
    assert tv(histogram(np.minimum(ours, 12), 12), histogram(np.minimum(ref, 12), 12)) < 0.06
    assert abs(np.mean(runs_ours) - np.mean(runs_ref)) < 0.1 * np.mean(runs_ref)


def test_span_selectors_are_reproducible():
    cand, words, _ = make_rows(16, 40, seed=16)
    counts = masking.ceil_counts(cand.sum(1), 0.15)
    for fn in (masking.select_ngrams, masking.select_geometric_spans):
        a = fn(cand, words, counts, torch.Generator().manual_seed(3))
        b = fn(cand, words, counts, torch.Generator().manual_seed(3))
        c = fn(cand, words, counts, torch.Generator().manual_seed(4))
        assert torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


@pytest.mark.parametrize("fn", [masking.select_ngrams, masking.select_geometric_spans])
def test_span_selectors_edge_cases(fn):
    g = torch.Generator().manual_seed(0)
    empty = torch.zeros(3, 0, dtype=torch.bool)
    sel, ids = fn(empty, torch.zeros(3, 0, dtype=torch.long), torch.zeros(3, dtype=torch.long),
                  g)
    assert sel.shape == (3, 0) and ids.shape == (3, 0)
    cand = torch.tensor([[False, True, True, False], [False, False, False, False]])
    words = torch.tensor([[-1, 0, 1, -1], [-1, -1, -1, -1]])
    sel, ids = fn(cand, words, torch.tensor([1, 1]), g)
    assert sel[0].sum() == 1 and not sel[1].any() and (ids[1] == -1).all()
    with pytest.raises(ValueError):
        fn(cand, words[:, :3], torch.tensor([1, 1]), g)
