"""GPT: causal-LM batches, attention cut at document boundaries, training, export + generate."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import falling, metric_series

from plmkit.collator import IGNORE_INDEX
from plmkit.config import SpecialTokens
from plmkit.plugins.gpt import GptCollator, document_causal_mask


def _tiny_gpt(tokenizer, document_mask: bool):
    from plmkit.plugins.gpt import GptObjective

    torch.manual_seed(0)
    objective = GptObjective(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                             max_position_embeddings=128, document_mask=document_mask)
    objective.attach_tokenizer(tokenizer, 128)
    objective.configure_model()
    return objective.eval()


def test_separator_is_eos(tokenizer, make_examples):
    # stream packing puts the tokenizer's sep token between documents: it must be GPT's EOS
    assert tokenizer.sep_token_id == tokenizer.eos_token_id
    examples = make_examples(128, "stream", n=64)
    for ex in examples:
        ids, docs = ex["input_ids"], ex["doc_ids"]
        closes = torch.nonzero(docs[1:] != docs[:-1]).squeeze(1)
        assert (ids[closes] == tokenizer.eos_token_id).all()


def test_labels_padding_and_no_mutation(tokenizer, make_examples):
    examples = make_examples(128, "stream", n=8)
    short = [{"input_ids": e["input_ids"][: 40 + 10 * i], "doc_ids": e["doc_ids"][: 40 + 10 * i]}
             for i, e in enumerate(examples)]
    before = copy.deepcopy(short)
    for document_mask in (False, True):
        b = GptCollator(tokenizer, document_mask=document_mask)(short)
        assert b["input_ids"].shape == (8, 110)
        for i, e in enumerate(short):
            n = len(e["input_ids"])
            assert torch.equal(b["input_ids"][i, :n], e["input_ids"])
            assert (b["input_ids"][i, n:] == tokenizer.pad_token_id).all()
            assert (b["labels"][i, n:] == IGNORE_INDEX).all()
            # labels are the inputs (the model shifts them); cut boundaries aside
            assert torch.equal(b["labels"][i, :n], e["input_ids"])
        if document_mask:
            assert "attention_mask" not in b and "position_ids" in b
        else:
            assert torch.equal(b["attention_mask"].sum(dim=1), torch.arange(40, 120, 10))
    for a, c in zip(short, before):
        assert all(torch.equal(a[k], c[k]) for k in a)


def test_positions_restart_at_each_document(tokenizer, make_examples):
    examples = make_examples(128, "stream", n=128)
    b = GptCollator(tokenizer, document_mask=True, max_length=128)(examples)
    ids, pos = b["input_ids"], b["position_ids"]
    sep = tokenizer.eos_token_id
    restarts = 0
    for i, ex in enumerate(examples):
        docs = ex["doc_ids"]
        opens = torch.nonzero(docs[1:] != docs[:-1]).squeeze(1)  # the separator opens a doc
        expected = torch.zeros(128, dtype=torch.bool)
        expected[0] = True
        expected[opens] = True
        assert torch.equal(pos[i] == 0, expected)
        assert (ids[i][opens] == sep).all()
        restarts += len(opens)
    assert restarts > 32  # many blocks hold the end of one document and the start of another
    # nothing is lost: every boundary is opened by the separator, so no label is cut
    assert (b["labels"] != IGNORE_INDEX).all()


def test_boundary_without_separator_cuts_the_label(tokenizer):
    ex = {"input_ids": torch.tensor([10, 11, 12, 20, 21]), "doc_ids": torch.tensor([0, 0, 0, 1, 1])}
    b = GptCollator(tokenizer, document_mask=True)([ex])
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert b["labels"].tolist() == [[10, 11, 12, IGNORE_INDEX, 21]]


@pytest.mark.parametrize("document_mask", [True, False])
def test_second_document_sees_only_itself(tokenizer, make_examples, document_mask):
    """A token of document 2 gets the same logits whether or not document 1 precedes it."""
    objective = _tiny_gpt(tokenizer, document_mask)
    collator = GptCollator(tokenizer, document_mask=document_mask)
    sep = tokenizer.eos_token_id
    worst, checked = 0.0, 0
    for ex in make_examples(128, "stream", n=32):
        docs = ex["doc_ids"]
        opens = torch.nonzero(docs[1:] != docs[:-1]).squeeze(1)
        if len(opens) == 0 or opens[0] > 120:
            continue
        checked += 1
        start = int(opens[0])  # the separator that opens document 2 of this block
        assert ex["input_ids"][start] == sep
        alone = {k: v[start:] for k, v in ex.items()}
        full, cut = collator([ex]), collator([alone])
        with torch.no_grad():
            a = objective.model(**{k: v for k, v in full.items() if k != "labels"}).logits
            b = objective.model(**{k: v for k, v in cut.items() if k != "labels"}).logits
            # the explicit 4-D mask gives the same as transformers' own packed-sequence mask
            if document_mask:
                c = objective.model(
                    input_ids=full["input_ids"], position_ids=full["position_ids"],
                    attention_mask=document_causal_mask(full["position_ids"]),
                ).logits
                assert torch.allclose(a, c, atol=1e-5)
        worst = max(worst, (a[0, start:] - b[0]).abs().max().item())
    assert checked >= 5
    if document_mask:
        assert worst < 1e-4
    else:  # attention across the block: document 1 changes document 2's logits
        assert worst > 1e-2


def test_loss_matches_transformers(tokenizer, make_examples):
    objective = _tiny_gpt(tokenizer, document_mask=False)
    batch = GptCollator(tokenizer)(make_examples(128, "stream", n=8))
    loss, metrics = objective.compute_loss(batch)
    with torch.no_grad():
        reference = objective.model(**batch).loss
    assert torch.allclose(loss, reference, atol=1e-5)
    assert 0.0 <= metrics["accuracy"] <= 1.0
    # a block is one model input; learned positions bound data.max_length
    assert objective.block_length(128) == 128 and objective.max_positions() == 128
    tokens = SpecialTokens.from_tokenizer(tokenizer)
    from_ids = GptCollator(tokens)(make_examples(128, "stream", n=8))
    assert all(torch.equal(batch[k], from_ids[k]) for k in batch)


def test_dataloader_with_two_workers(tokenizer, make_examples):
    examples = make_examples(128, "stream", n=64)
    collator = GptCollator(tokenizer, document_mask=True)
    loader = torch.utils.data.DataLoader(examples, batch_size=16, num_workers=2,
                                         collate_fn=collator)
    batches = list(loader)
    assert len(batches) == 4
    for i, b in enumerate(batches):  # no randomness: the same batches as in the main process
        direct = collator(examples[16 * i : 16 * (i + 1)])
        assert all(torch.equal(b[k], direct[k]) for k in direct)


def test_training_export_and_generate(tiny_fit, export_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tiny_fit("gpt_tiny", steps=80)
    losses = metric_series(run, "train/loss")
    assert len(losses) >= 70
    assert falling(losses)
    out = export_run(run, tmp_path / "gpt_export")

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert model.config._attn_implementation == "sdpa"
    assert tok.pad_token_id is not None and tok.eos_token_id == model.config.eos_token_id
    prompt = tok("a domesticated animal", return_tensors="pt")
    assert prompt["input_ids"][0, -1] != tok.eos_token_id  # the prompt does not end the text
    with torch.no_grad():
        generated = model.generate(**prompt, max_new_tokens=10, min_new_tokens=10,
                                   do_sample=False)
    new = generated[0, prompt["input_ids"].shape[1]:]
    assert len(new) == 10
    assert tok.decode(new, skip_special_tokens=True).strip()
