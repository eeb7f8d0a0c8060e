"""ELMo: char table, collator targets, no look-ahead in either direction, padding, clipping,
the scalar-mix embedder, and a short training run that lowers the loss."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from conftest import falling, metric_series

from plmkit.collator import IGNORE_INDEX
from plmkit.plugins.elmo import ElmoCollator
from plmkit.plugins.elmo.bilm import (
    BOW_CHAR,
    BOW_CONTINUATION_CHAR,
    EOW_CHAR,
    ElmoBiLM,
    ElmoConfig,
    ElmoEmbedder,
    char_table,
)

FILTERS = [[1, 8], [2, 8], [3, 16]]


def _tiny_bilm(tokenizer, clip=True, seed=0, **overrides):
    torch.manual_seed(seed)
    table, num_chars = char_table(tokenizer)
    config = ElmoConfig(
        vocab_size=len(tokenizer), num_chars=num_chars, filters=FILTERS, num_highway=1,
        projection_dim=16, lstm_dim=32, clip=clip, **overrides,
    )
    return ElmoBiLM(config, table).eval()


def test_collator_imports_without_lightning():
    code = (
        "import sys; from plmkit.plugins.elmo import ElmoCollator; "
        "assert 'lightning' not in sys.modules, 'lightning imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_char_table(tokenizer):
    table, num_chars = char_table(tokenizer, 50)
    assert table.shape == (len(tokenizer), 50)
    assert int(table.max()) < num_chars
    vocab = tokenizer.get_vocab()
    piece = next(t for t in vocab if t.startswith("##") and len(t) > 3)
    word = next(t for t in vocab if t.isalpha() and len(t) > 3)
    row = table[vocab[piece]].tolist()
    assert row[0] == BOW_CONTINUATION_CHAR  # "##" is stripped, the piece is marked instead
    body = [b + 1 for b in piece[2:].encode()]
    assert row[: len(body) + 2] == [BOW_CONTINUATION_CHAR, *body, EOW_CHAR]
    row = table[vocab[word]].tolist()
    assert row[: len(word) + 2] == [BOW_CHAR, *[b + 1 for b in word.encode()], EOW_CHAR]
    assert all(c == 0 for c in row[len(word) + 2 :])
    # every special token has its own spelling; all rows are distinct
    specials = table[torch.tensor(tokenizer.all_special_ids)]
    assert len({tuple(r.tolist()) for r in specials}) == len(specials)
    assert len({tuple(r.tolist()) for r in table}) == len(tokenizer)
    # long spellings are cut to max_characters with the end marker kept
    short, _ = char_table(tokenizer, 4)
    assert (short[:, 0] >= BOW_CHAR).all() and (short[short[:, 3] != 0, 3] == EOW_CHAR).all()


def test_collator_targets(tokenizer):
    examples = [{"input_ids": torch.arange(10, 10 + n)} for n in (5, 1, 9)]
    before = copy.deepcopy(examples)
    b = ElmoCollator(tokenizer, max_length=10)(examples)
    ids, attn = b["input_ids"], b["attention_mask"].bool()
    fwd, bwd = b["forward_labels"], b["backward_labels"]
    assert ids.shape == (3, 10)
    assert (ids[:, 0] == tokenizer.cls_token_id).all()
    lengths = attn.sum(dim=1)
    assert lengths.tolist() == [7, 3, 10]  # the last example is cut to 8 tokens
    for r in range(3):
        n = int(lengths[r])
        assert ids[r, n - 1] == tokenizer.sep_token_id
        assert (ids[r, n:] == tokenizer.pad_token_id).all()
        assert torch.equal(fwd[r, : n - 1], ids[r, 1:n]) and (fwd[r, n - 1 :] == -100).all()
        assert torch.equal(bwd[r, 1:n], ids[r, : n - 1])
        assert bwd[r, 0] == -100 and (bwd[r, n:] == -100).all()
    for a, c in zip(examples, before):
        assert torch.equal(a["input_ids"], c["input_ids"])


def test_collator_in_dataloader_workers(tokenizer, make_examples):
    from plmkit.plugins.elmo import ElmoObjective

    objective = ElmoObjective()
    objective.attach_tokenizer(tokenizer, 64)
    assert objective.block_length(64) == 62 and objective.max_positions() is None  # [CLS] [SEP]
    examples = make_examples(62, "stream", n=64)
    collator = ElmoCollator(tokenizer, max_length=64)
    loader = torch.utils.data.DataLoader(
        examples, batch_size=16, num_workers=2, collate_fn=collator
    )
    batches = list(loader)
    assert len(batches) == 4
    for i, b in enumerate(batches):
        assert torch.equal(b["input_ids"], collator(examples[i * 16 : (i + 1) * 16])["input_ids"])
        assert int((b["forward_labels"] != IGNORE_INDEX).sum()) == 16 * 63


@pytest.mark.parametrize("clip", [True, False])
@torch.no_grad()
def test_directions_never_see_the_wrong_side(tokenizer, clip):
    model = _tiny_bilm(tokenizer, clip=clip)
    ids = torch.randint(10, len(tokenizer), (3, 20))
    mask = torch.ones_like(ids)
    mask[1, 14:] = 0  # a padded row too
    base = model(ids, mask)
    for t in (0, 6, 13):
        changed = ids.clone()
        changed[:, t] = (changed[:, t] + 11) % (len(tokenizer) - 10) + 10
        out = model(changed, mask)
        for layer in range(2):
            f0, f1 = base["forward"][layer], out["forward"][layer]
            b0, b1 = base["backward"][layer], out["backward"][layer]
            assert torch.equal(f0[:, :t], f1[:, :t])  # forward: nothing from the future
            assert torch.equal(b0[:, t + 1 :][mask[:, t + 1 :].bool()],
                               b1[:, t + 1 :][mask[:, t + 1 :].bool()])  # backward: no past
            assert not torch.allclose(f0[:, t], f1[:, t])  # but both see the token itself
            assert not torch.allclose(b0[:, t], b1[:, t])
        assert not torch.allclose(base["forward"][1][:, t + 1], out["forward"][1][:, t + 1])


@torch.no_grad()
def test_padding_does_not_leak(tokenizer):
    model = _tiny_bilm(tokenizer)
    collator = ElmoCollator(tokenizer, max_length=40)
    short = {"input_ids": torch.randint(10, len(tokenizer), (7,))}
    long = {"input_ids": torch.randint(10, len(tokenizer), (30,))}
    alone = collator([short])
    both = collator([short, long])
    out_alone = model(alone["input_ids"], alone["attention_mask"])
    out_both = model(both["input_ids"], both["attention_mask"])
    n = int(alone["attention_mask"].sum())
    other_pad = both["input_ids"].clone()
    other_pad[0, n:] = 42  # garbage in the padding
    out_garbage = model(other_pad, both["attention_mask"])
    for key in ("forward", "backward"):
        for layer in range(2):
            ref = out_alone[key][layer][0, :n]
            assert torch.allclose(out_both[key][layer][0, :n], ref, atol=1e-6)
            assert torch.allclose(out_garbage[key][layer][0, :n], ref, atol=1e-6)


@torch.no_grad()
def test_clipped_cell_matches_nn_lstm_and_clips(tokenizer):
    """Without clips the step loop equals nn.LSTM(proj_size); with clips |h| <= 3."""
    loop = _tiny_bilm(tokenizer, clip=True, cell_clip=None, proj_clip=None)
    ref = _tiny_bilm(tokenizer, clip=False)
    shared = {k: v for k, v in loop.state_dict().items() if not k.startswith("layers.")}
    ref.load_state_dict(shared, strict=False)
    for layer_loop, layer_ref in zip(loop.layers, ref.layers):
        for d, lstm in enumerate(layer_ref.lstms):
            lstm.weight_ih_l0.copy_(layer_loop.weight_ih[d].T)
            lstm.weight_hh_l0.copy_(layer_loop.weight_hh[d].T)
            lstm.bias_ih_l0.copy_(layer_loop.bias[d, 0])
            lstm.bias_hh_l0.zero_()
            lstm.weight_hr_l0.copy_(layer_loop.weight_proj[d].T)
    ids = torch.randint(10, len(tokenizer), (2, 12))
    a, b = loop(ids), ref(ids)
    for key in ("forward", "backward"):
        for layer in range(2):
            assert torch.allclose(a[key][layer], b[key][layer], atol=1e-5)
    # blow the weights up: the clipped model keeps the first layer's output in [-3, 3]
    clipped = _tiny_bilm(tokenizer, clip=True)
    unclipped = _tiny_bilm(tokenizer, clip=True, cell_clip=None, proj_clip=None)
    for model in (clipped, unclipped):
        for layer in model.layers:
            layer.weight_proj.mul_(50.0)
            layer.weight_hh.mul_(20.0)
    hc, hu = clipped(ids)["forward"][0], unclipped(ids)["forward"][0]
    assert hc.abs().max() <= 3.0 and hu.abs().max() > 3.0


def test_embedder_layers_and_scalar_mix(tokenizer, tmp_path):
    model = _tiny_bilm(tokenizer)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(str(tmp_path))
    embedder = ElmoEmbedder.from_pretrained(tmp_path, num_output_representations=2)
    batch = embedder.tokenizer(["a small dog", "the bank of a long river"],
                               return_tensors="pt", padding=True)
    out = embedder(batch["input_ids"], batch["attention_mask"])
    layers = out["layers"]
    assert layers.shape == (3, 2, batch["input_ids"].shape[1], 32)  # L + 1 layers of 2P
    reps = out["representations"]  # the 2L + 1 representations
    assert len(reps["forward"]) == 2 and len(reps["backward"]) == 2
    assert torch.equal(layers[0, ..., :16], layers[0, ..., 16:])  # [x; x]
    # weights start equal: the mix is gamma * the mean of the layers
    assert torch.allclose(out["elmo"][0], layers.mean(dim=0), atol=1e-6)
    out["elmo"][1].sum().backward()
    mix = embedder.scalar_mixes[1]
    assert mix.weights.grad is not None and mix.gamma.grad is not None
    assert all(p.grad is None for p in embedder.bilm.parameters())  # frozen biLM
    reloaded = ElmoBiLM.from_pretrained(tmp_path)
    ids = batch["input_ids"]
    assert torch.equal(reloaded(ids)["forward"][1], model(ids)["forward"][1])


def test_training_lowers_loss_and_exports(tiny_fit, export_run, tmp_path):
    run = tiny_fit("elmo_tiny", steps=80)
    losses = metric_series(run, "train/loss")
    assert len(losses) >= 70
    assert falling(losses), losses
    assert metric_series(run, "train/forward_loss") and metric_series(run, "train/backward_loss")
    out = export_run(run, tmp_path / "export")
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (out / name).is_file()
    embedder = ElmoEmbedder.from_pretrained(out)
    batch = embedder.tokenizer(["a domestic animal", "a dog"], return_tensors="pt", padding=True)
    result = embedder(batch["input_ids"], batch["attention_mask"])
    assert result["elmo"][0].shape == (2, batch["input_ids"].shape[1], embedder.output_dim)
    assert torch.isfinite(result["layers"]).all()
