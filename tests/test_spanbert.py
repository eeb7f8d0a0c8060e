"""SpanBERT: masking budget and 80/10/10 per span, SBO targets, DataLoader workers, a short
training run that lowers both losses, export loadable with AutoModel."""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import falling, metric_series

from plmkit.collator import IGNORE_INDEX
from plmkit.plugins.spanbert import SpanBertCollator

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def batches(tokenizer, make_examples):
    """(examples, collated batches) at max_length 128: 8 passes over 256 blocks."""
    examples = make_examples(126)
    collator = SpanBertCollator(tokenizer, max_length=128, seed=1)
    out = []
    for _ in range(8):
        for i in range(0, len(examples) - 31, 32):
            out.append((examples[i : i + 32], collator(examples[i : i + 32])))
    return out


def runs(selected: torch.Tensor) -> list[tuple[int, int, int]]:
    """(row, first, last) of every maximal run of True (the merged spans)."""
    out = []
    for b, row in enumerate(selected.tolist()):
        start = None
        for i, v in enumerate(row + [False]):
            if v and start is None:
                start = i
            elif not v and start is not None:
                out.append((b, start, i - 1))
                start = None
    return out


def test_masked_fraction_is_ceil_15_percent(tokenizer, batches):
    """Exactly ceil(0.15 n) tokens per sequence, as the original (which cuts the last span at
    the budget, so there is no overshoot); over the corpus within 1 point of 15%."""
    special = torch.tensor(sorted(tokenizer.all_special_ids))
    masked = real = expected = 0
    for _, b in batches:
        sel = b["labels"] != IGNORE_INDEX
        content = b["attention_mask"].bool() & ~torch.isin(b["input_ids"], special)
        content |= sel  # masked positions hold [MASK] now
        n = content.sum(dim=1)
        assert torch.equal(sel.sum(dim=1), torch.tensor([math.ceil(0.15 * k) for k in n.tolist()]))
        assert not torch.isin(b["labels"][sel], special).any()
        assert (b["labels"][b["attention_mask"] == 0] == IGNORE_INDEX).all()
        masked += int(sel.sum())
        real += int(n.sum())
        expected += sum(math.ceil(0.15 * k) for k in n.tolist())
    assert masked == expected
    assert abs(masked / real - 0.15) < 0.01, masked / real


def test_single_segment_inputs(tokenizer, batches):
    for examples, b in batches[:4]:
        ids = b["input_ids"]
        assert (ids[:, 0] == tokenizer.cls_token_id).all()
        lengths = b["attention_mask"].sum(dim=1)
        assert (ids[torch.arange(len(ids)), lengths - 1] == tokenizer.sep_token_id).all()
        assert (b["token_type_ids"] == 0).all()
        assert torch.equal(lengths, torch.tensor([min(len(e["input_ids"]), 126) + 2
                                                  for e in examples]))


def test_80_10_10_once_per_span(tokenizer, batches):
    decisions = np.zeros(3)
    for _, b in batches:
        sel = b["labels"] != IGNORE_INDEX
        for row, s, e in runs(sel):
            got, orig = b["input_ids"][row, s : e + 1], b["labels"][row, s : e + 1]
            masked = got == tokenizer.mask_token_id
            assert masked.all() or not masked.any()  # one decision for the whole span
            if masked.all():
                decisions[0] += 1
            elif (got == orig).float().mean() > 0.5:  # a random token can equal the original
                decisions[2] += 1
            else:
                decisions[1] += 1
    share = decisions / decisions.sum()
    assert decisions.sum() > 5000
    assert abs(share[0] - 0.8) < 0.02 and abs(share[1] - 0.1) < 0.015
    assert abs(share[2] - 0.1) < 0.015


def test_spans_are_whole_words_from_word_starts(batches):
    """Spans start on word starts and end on word ends, except the span the budget cut
    (the original stops mid-word when the budget is reached): at most one per row."""
    cut_rows = 0
    for examples, b in batches[:16]:
        sel = b["labels"] != IGNORE_INDEX
        cuts = torch.zeros(len(sel), dtype=torch.long)
        for row, s, e in runs(sel):
            words = examples[row]["word_ids"]  # position p of the input is raw index p - 1
            assert s == 1 or words[s - 1] != words[s - 2]  # starts on a word start
            if e < len(words) and words[e] == words[e - 1]:
                cuts[row] += 1  # ends inside a word
        assert (cuts <= 1).all()
        cut_rows += int(cuts.sum())
    assert 0 < cut_rows < 16 * 32 / 2


def test_sbo_targets(tokenizer, batches):
    specials = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id}
    n_targets = 0
    for _, b in batches[:16]:
        sel = b["labels"] != IGNORE_INDEX
        has = b["sbo_labels"] != IGNORE_INDEX
        for key in ("sbo_left", "sbo_right", "sbo_position"):
            assert ((b[key] == IGNORE_INDEX) == ~has).all()
        assert torch.equal(b["sbo_labels"][has], b["labels"][has])
        seen = torch.zeros_like(has)
        for row, s, e in runs(sel):
            # boundaries are the unmasked tokens just outside the merged span
            boundary_ok = (s - 1 >= 1 and int(b["input_ids"][row, s - 1]) not in specials
                           and e + 1 < sel.shape[1]
                           and int(b["input_ids"][row, e + 1]) not in specials)
            for i in range(s, e + 1):
                wanted = boundary_ok and i - s < 15
                assert bool(has[row, i]) == wanted
                if wanted:
                    assert b["sbo_left"][row, i] == s - 1 and b["sbo_right"][row, i] == e + 1
                    assert b["sbo_position"][row, i] == i - s
                    n_targets += 1
            seen[row, s : e + 1] = True
        assert not (has & ~seen).any()
    assert n_targets > 1000


def test_dataloader_workers(tokenizer, make_examples):
    examples = make_examples(126, n=8)
    data = [examples[i % 8] for i in range(32)]  # every batch holds the same 8 examples

    def labels(seed: int) -> list[torch.Tensor]:
        collator = SpanBertCollator(tokenizer, max_length=128, seed=seed)
        loader = torch.utils.data.DataLoader(data, batch_size=8, num_workers=2,
                                             collate_fn=collator)
        return [b["labels"] for b in loader]

    first, again, other = labels(0), labels(0), labels(1)
    assert len(first) == 4
    assert not torch.equal(first[0], first[1])  # workers 0 and 1 draw different masks
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # reproducible per seed
    assert not torch.equal(first[0], other[0])


def test_inputs_not_mutated(tokenizer, make_examples):
    examples = make_examples(126, n=16)
    before = copy.deepcopy(examples)
    SpanBertCollator(tokenizer, max_length=128)(examples)
    for a, b in zip(examples, before):
        for key in a:
            assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key]))


def test_collator_imports_without_lightning():
    code = (
        "import sys; sys.modules['lightning'] = None; sys.modules['pytorch_lightning'] = None\n"
        "from plmkit.config import SpecialTokens\n"
        "from plmkit.plugins.spanbert import SpanBertCollator\n"
        "tokens = SpecialTokens(vocab_size=100, pad=0, cls=2, sep=3, mask=4, all=(0, 1, 2, 3, 4))\n"
        "c = SpanBertCollator(tokens, max_length=32)\n"
        "b = c([{'input_ids': list(range(5, 40))}])\n"
        "assert b['input_ids'].shape == (1, 32), b['input_ids'].shape\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sbo_head_shape_and_tied_output():
    from transformers import BertConfig

    from plmkit.plugins.spanbert.model import SpanBertModel

    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64)
    model = SpanBertModel(config)
    head = model.sbo
    assert head.position_embeddings.weight.shape == (15, 200)
    kinds = [type(m).__name__ for m in head.mlp]
    assert kinds == ["Linear", "GELU", "LayerNorm"] * 2
    assert head.mlp[0].in_features == 2 * 32 + 200
    # the output projection is the word embedding matrix: SBO gradients reach it
    states = head(torch.randn(3, 32), torch.randn(3, 32), torch.tensor([0, 4, 14]))
    emb = model.mlm.get_input_embeddings().weight
    head.logits(states, emb).sum().backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    assert model.mlm.get_output_embeddings().weight is emb  # MLM decoder tied too


def test_model_losses_and_batch_without_sbo_targets(tokenizer, make_examples):
    from transformers import BertConfig

    from plmkit.plugins.spanbert.model import SpanBertModel

    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64)
    model = SpanBertModel(config)
    collator = SpanBertCollator(tokenizer, max_length=64, seed=0)
    batch = collator(make_examples(62, n=8))
    out = model(**batch)
    assert out["mlm_loss"] > 0 and out["sbo_loss"] > 0
    # no SBO target at all (e.g. one-word sequences): a zero loss reaching every SBO weight
    for key in ("sbo_labels", "sbo_left", "sbo_right", "sbo_position"):
        batch[key] = torch.full_like(batch[key], IGNORE_INDEX)
    out = model(**batch)
    assert out["sbo_loss"] == 0
    (out["mlm_loss"] + out["sbo_loss"]).backward()
    assert all(p.grad is not None for p in model.sbo.parameters())


def test_training_lowers_both_losses_and_exports(tiny_fit, export_run, tmp_path):
    run = tiny_fit("spanbert_tiny", steps=80)
    mlm, sbo = metric_series(run, "train/mlm_loss"), metric_series(run, "train/sbo_loss")
    assert len(mlm) >= 70 and len(sbo) >= 70
    assert falling(mlm) and falling(sbo), (mlm[:5], mlm[-5:], sbo[:5], sbo[-5:])

    out = export_run(run, tmp_path / "export")
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(["a small dog barks"], return_tensors="pt")
    model = AutoModel.from_pretrained(out)
    assert type(model).__name__ == "BertModel"
    hidden = model(**enc).last_hidden_state
    assert hidden.shape[-1] == 128 and torch.isfinite(hidden).all()
    mlm_model, info = AutoModelForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"]
    assert mlm_model(**enc).logits.shape[-1] == len(tok)


def test_recipes_listed(run_plmkit):
    code, out, err = run_plmkit("recipes")
    assert code == 0, err
    assert "spanbert_tiny" in out and "spanbert_base" in out
