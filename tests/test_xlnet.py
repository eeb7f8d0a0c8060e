"""XLNet: perm_mask / target_mapping invariants, target statistics, odd lengths, training."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import falling, metric_series

from plmkit.collator import IGNORE_INDEX
from plmkit.plugins.xlnet import XLNetCollator

SPAN_LAW = torch.tensor([1 / n for n in range(1, 6)])
SPAN_LAW = SPAN_LAW / SPAN_LAW.sum()


def _batches(collator, examples, rounds=4, batch=32):
    out = []
    for _ in range(rounds):
        for i in range(0, len(examples) - batch + 1, batch):
            out.append((examples[i : i + batch], collator(examples[i : i + batch])))
    return out


def _check_batch(b, tokenizer, functional_in_order=False):
    """Every invariant of one batch; returns (targets, real non-special tokens)."""
    ids, attn = b["input_ids"], b["attention_mask"].bool()
    perm, tmap, labels = b["perm_mask"].bool(), b["target_mapping"], b["labels"]
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    # target_mapping: one-hot rows (or empty rows carrying label -100), each position once
    assert ((tmap == 0) | (tmap == 1)).all()
    row_sums = tmap.sum(dim=2)
    assert ((row_sums == 0) | (row_sums == 1)).all()
    assert ((row_sums == 0) == (labels == IGNORE_INDEX)).all()
    assert tmap.sum(dim=1).max() <= 1
    target = tmap.sum(dim=1) > 0
    # labels are the tokens at the mapped positions; never a special token or padding
    mapped = torch.einsum("bpl,bl->bp", tmap, ids.float()).long()
    used = labels != IGNORE_INDEX
    assert torch.equal(mapped[used], labels[used])
    assert not (target & (special | ~attn)).any()
    # every sequence ends with [SEP] [CLS] then padding; CLS has segment 2
    lengths = attn.sum(dim=1)
    rows = torch.arange(len(ids))
    assert (ids[rows, lengths - 2] == tokenizer.sep_token_id).all()
    assert (ids[rows, lengths - 1] == tokenizer.cls_token_id).all()
    assert (b["token_type_ids"][rows, lengths - 1] == 2).all()

    for r in range(len(ids)):
        n = int(lengths[r])
        p = perm[r, :n, :n]
        t = target[r, :n]
        func = special[r, :n]
        context = ~t & ~func if functional_in_order else ~t
        # a target never attends to itself
        assert p.diagonal()[t].all()
        # non-target tokens never see targets
        assert p[context][:, t].all()
        # non-target tokens are visible to every position
        assert not p[:, context].any()
        if functional_in_order:  # data_utils.py: [SEP]/[CLS] sit in the order, see themselves
            order = t | func
            sees_all = ~p[order][:, order]
            m = int(order.sum())
            assert torch.equal(sees_all.diagonal(), func[order])
            off = sees_all & ~torch.eye(m, dtype=torch.bool)
            assert torch.equal(off | off.T, ~torch.eye(m, dtype=torch.bool))
            assert not ((off.float() @ off.float() > 0) & ~off).any()
        # targets: exactly one of two targets sees the other, and "sees" is a strict order
        sees = ~p[t][:, t]
        k = int(t.sum())
        assert not sees.diagonal().any()
        assert torch.equal(sees | sees.T, ~torch.eye(k, dtype=torch.bool))
        assert not (sees & sees.T).any()
        two_steps = (sees.float() @ sees.float()) > 0
        assert not (two_steps & ~sees).any()  # transitive, hence acyclic
        assert torch.equal(sees.sum(dim=1).sort().values, torch.arange(k))
        # padding is invisible
        assert perm[r, :, n:].all()
    return int(target.sum()), int((attn & ~special).sum())


def test_perm_mask_and_target_mapping(tokenizer, make_examples):
    for mode, block in (("stream", 125), ("document", 61)):  # odd lengths, padded rows
        examples = make_examples(block, mode, n=64)
        collator = XLNetCollator(tokenizer, max_length=block + 2, seed=1)
        for _, b in _batches(collator, examples, rounds=1):
            _check_batch(b, tokenizer)
    original = XLNetCollator(
        tokenizer, max_length=63, functional_in_order=True, perm_size=21, seed=1
    )
    for _, b in _batches(original, make_examples(61, "stream", n=64), rounds=1):
        _check_batch(b, tokenizer, functional_in_order=True)


def test_prediction_ratio(tokenizer, make_examples):
    examples = make_examples(125, "stream")
    collator = XLNetCollator(tokenizer, max_length=127, seed=2)
    special = torch.tensor(tokenizer.all_special_ids)
    predicted = real = 0
    for _, b in _batches(collator, examples, rounds=6):
        predicted += int((b["labels"] != IGNORE_INDEX).sum())
        real += int((b["attention_mask"].bool() & ~torch.isin(b["input_ids"], special)).sum())
    ratio = predicted / real
    assert abs(ratio - 1 / 6) < 0.02, ratio
    # 85 targets at 512, as in the original (num_predict = 85)
    long = make_examples(510, "stream", n=8)
    b = XLNetCollator(tokenizer, max_length=512, seed=3)(long)
    assert b["target_mapping"].shape == (8, 85, 512)
    assert ((b["labels"] != IGNORE_INDEX).sum(dim=1) == 85).all()


def _run_lengths(selected: torch.Tensor, word_ids: torch.Tensor | None) -> torch.Tensor:
    """Lengths (in words, or tokens) of the maximal runs of selected positions."""
    previous = torch.cat([torch.zeros_like(selected[:, :1]), selected[:, :-1]], dim=1)
    run = torch.where(selected, (selected & ~previous).long().cumsum(dim=1), 0)
    units = selected
    if word_ids is not None:
        prev_word = torch.cat([word_ids[:, :1] - 1, word_ids[:, :-1]], dim=1)
        units = selected & ((word_ids != prev_word) | ~previous)
    offset = (torch.arange(len(selected)) * (selected.shape[1] + 1)).unsqueeze(1)
    counts = torch.bincount((run + offset)[units & (run > 0)])
    return counts[counts > 0]


@pytest.mark.parametrize("whole_word", [False, True])
def test_span_length_law(tokenizer, make_examples, whole_word):
    examples = make_examples(255, "stream", n=192)
    collator = XLNetCollator(
        tokenizer, max_length=257, whole_word=whole_word, fill_to_budget=False, seed=4
    )
    lengths = []
    for chunk, b in _batches(collator, examples, rounds=3):
        selected = b["target_mapping"].sum(dim=1)[:, :255] > 0
        words = torch.stack([e["word_ids"] for e in chunk]) if whole_word else None
        lengths.append(_run_lengths(selected, words))
    lengths = torch.cat(lengths)
    assert len(lengths) > 3000 and lengths.max() <= 5
    freq = torch.bincount(lengths, minlength=6)[1:].float() / len(lengths)
    distance = 0.5 * (freq - SPAN_LAW).abs().sum()  # total variation
    assert distance < 0.04, (freq, distance)
    assert 0.5 * (freq - 0.2).abs().sum() > 0.15  # clearly not uniform lengths (HF's law)


def test_odd_and_tiny_lengths_run_through_the_model(tokenizer):
    from transformers import XLNetConfig, XLNetLMHeadModel

    examples = [{"input_ids": torch.randint(10, 500, (n,))} for n in (1, 2, 3, 7, 10, 33)]
    collator = XLNetCollator(tokenizer, max_length=35, seed=5)
    b = collator(examples)
    assert b["input_ids"].shape == (6, 35)
    _check_batch(b, tokenizer)
    model = XLNetLMHeadModel(
        XLNetConfig(vocab_size=len(tokenizer), d_model=32, n_layer=2, n_head=2, d_inner=64)
    ).eval()
    inputs = {k: v for k, v in b.items() if k != "labels"}
    logits = model(**inputs).logits
    assert logits.shape == (6, b["labels"].shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()


@torch.no_grad()
def test_no_information_leak_in_the_model(tokenizer, make_examples):
    """End to end through XLNetLMHeadModel: a target's prediction depends on the context and
    on the targets before it in the factorization order, never on itself or later targets."""
    from transformers import XLNetConfig, XLNetLMHeadModel

    torch.manual_seed(0)
    model = XLNetLMHeadModel(
        XLNetConfig(vocab_size=len(tokenizer), d_model=32, n_layer=2, n_head=2, d_inner=64)
    ).eval()
    example = make_examples(41, "stream", n=1)
    b = XLNetCollator(tokenizer, max_length=43, seed=6)(example)
    inputs = {k: v for k, v in b.items() if k != "labels"}
    base = model(**inputs).logits[0]
    perm = b["perm_mask"][0].bool()
    slots = b["target_mapping"][0].argmax(dim=1)  # position of each prediction slot
    sees = ~perm[slots][:, slots]
    first = int(sees.sum(dim=1).argmin())  # the earliest target in the order
    last = int(sees.sum(dim=1).argmax())
    for slot in (first, last):
        changed = b["input_ids"].clone()
        changed[0, slots[slot]] = (changed[0, slots[slot]] + 7) % 500 + 10
        out = model(**{**inputs, "input_ids": changed}).logits[0]
        hidden_from = ~sees[:, slot]  # slots that must not see this target
        assert torch.allclose(out[hidden_from], base[hidden_from], atol=1e-5)
        assert not torch.allclose(out, base, atol=1e-5) or slot == last
    # a context token is seen by every target
    context = (b["target_mapping"][0].sum(dim=0) == 0) & (b["attention_mask"][0] == 1)
    position = int(context.nonzero()[0])
    changed = b["input_ids"].clone()
    changed[0, position] = (changed[0, position] + 7) % 500 + 10
    out = model(**{**inputs, "input_ids": changed}).logits[0]
    assert not torch.allclose(out, base, atol=1e-5)


def test_collator_in_dataloader_workers(tokenizer, make_examples):
    examples = make_examples(61, "stream", n=16) * 4  # every batch holds the same examples
    before = copy.deepcopy(examples)

    def run(seed):
        collator = XLNetCollator(tokenizer, max_length=63, seed=seed)
        loader = torch.utils.data.DataLoader(
            examples, batch_size=16, num_workers=2, collate_fn=collator
        )
        return [b["perm_mask"] for b in loader]

    first, again, other = run(7), run(7), run(8)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], first[1])  # same examples, two workers: different masks
    assert any(not torch.equal(a, b) for a, b in zip(first, other))
    for a, b in zip(examples, before):
        for key in a:
            assert torch.equal(a[key], b[key])


def test_memory_option(tokenizer, make_examples):
    from plmkit.plugins.xlnet import XLNetObjective

    objective = XLNetObjective(hidden_size=32, num_layers=2, num_heads=2,
                               intermediate_size=64, mem_len=16)
    objective.attach_tokenizer(tokenizer, 35)
    assert objective.block_length(35) == 33 and objective.max_positions() is None
    objective.configure_model()
    collator = objective.build_collator(seed=0)
    examples = make_examples(33, "stream", n=8)
    objective.train()
    loss1, _ = objective.compute_loss(collator(examples[:4]))
    assert objective._mems is not None and objective._mems[0].shape[:2] == (16, 4)
    loss2, metrics = objective.compute_loss(collator(examples[4:]))
    assert torch.isfinite(loss1) and torch.isfinite(loss2) and "plm_acc" in metrics


def _check_exported_layout(out, tokenizer):
    """The exported tokenizer encodes as the collator does: ``A [SEP] [CLS]`` (pairs
    ``A [SEP] B [SEP] [CLS]``), ``[CLS]`` of type 2, padding on the left, so that
    ``XLNetForSequenceClassification`` (which pools the last position) pools ``[CLS]``."""
    from transformers import AutoTokenizer, XLNetForSequenceClassification

    tok = AutoTokenizer.from_pretrained(out)
    text = "the bank of a river"
    enc = tok(text)
    assert tok.convert_ids_to_tokens(enc["input_ids"][-2:]) == ["[SEP]", "[CLS]"]
    raw = tok(text, add_special_tokens=False)["input_ids"]
    b = XLNetCollator(tokenizer, max_length=32)([{"input_ids": torch.tensor(raw)}])
    n = int(b["attention_mask"].sum())
    assert enc["input_ids"] == b["input_ids"][0, :n].tolist()
    assert enc["token_type_ids"] == b["token_type_ids"][0, :n].tolist()
    pair = tok("a small dog", "the bank")
    a_len = len(tok("a small dog", add_special_tokens=False)["input_ids"])
    b_len = len(tok("the bank", add_special_tokens=False)["input_ids"])
    assert tok.convert_ids_to_tokens(pair["input_ids"])[a_len] == "[SEP]"
    assert tok.convert_ids_to_tokens(pair["input_ids"][-2:]) == ["[SEP]", "[CLS]"]
    assert pair["token_type_ids"] == [0] * (a_len + 1) + [1] * (b_len + 1) + [2]

    texts = ["a dog", "the bank of a river in the north"]
    batch = tok(texts, padding=True, return_tensors="pt")
    assert (batch["input_ids"][:, -1] == tok.cls_token_id).all()  # left padding
    model = XLNetForSequenceClassification.from_pretrained(out, num_labels=2).eval()
    with torch.no_grad():
        logits = model(**batch).logits
        alone = torch.cat([model(**tok(t, return_tensors="pt")).logits for t in texts])
    assert torch.allclose(logits, alone, atol=1e-4)


def test_exported_tokenizer_has_xlnets_layout(tokenizer, tmp_path):
    from plmkit.plugins.xlnet import XLNetObjective

    objective = XLNetObjective(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    objective.attach_tokenizer(tokenizer, 64)
    objective.configure_model()
    objective.export(tmp_path / "export")
    _check_exported_layout(tmp_path / "export", tokenizer)
    # the objective's own tokenizer is unchanged (the data pipeline uses it)
    assert tokenizer("a dog")["input_ids"][0] == tokenizer.cls_token_id


def test_training_lowers_loss_and_exports(tiny_fit, export_run, tmp_path):
    from transformers import AutoModel, AutoTokenizer, XLNetModel

    run = tiny_fit("xlnet_tiny", steps=80)
    losses = metric_series(run, "train/loss")
    assert len(losses) >= 70
    assert falling(losses), losses
    out = export_run(run, tmp_path / "export")
    model = AutoModel.from_pretrained(out)
    assert isinstance(model, XLNetModel)
    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(["a small dog", "the bank of a river"], return_tensors="pt", padding=True)
    hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])[0]
    assert hidden.shape[:2] == enc["input_ids"].shape and torch.isfinite(hidden).all()
    _check_exported_layout(out, tok)
