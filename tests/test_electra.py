"""ELECTRA: shared embeddings, the original's masking law, replaced-token labels, the loss
weighting, masked-only generator logits, a short training run, export and checkpoint reload."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import falling, metric_series

from plmkit.collator import IGNORE_INDEX
from plmkit.config import EncoderConfig, MaskingConfig
from plmkit.errors import PlmkitError
from plmkit.plugins.electra import ElectraCollator
from plmkit.throughput import flops_per_token

TINY = dict(
    encoder=EncoderConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                          embedding_size=32, dropout=0.0),
    generator=EncoderConfig(size="tiny", hidden_size=16, num_heads=1, intermediate_size=64,
                            dropout=0.0),
)


def _objective(tokenizer, max_length=128, **kwargs):
    from plmkit.plugins.electra import ElectraObjective

    objective = ElectraObjective(**{**TINY, **kwargs})
    objective.attach_tokenizer(tokenizer, max_length)
    objective.configure_model()
    return objective.eval()


def _shared(model) -> bool:
    g, d = model.generator.electra.embeddings, model.discriminator.electra.embeddings
    return (
        g.word_embeddings.weight.data_ptr() == d.word_embeddings.weight.data_ptr()
        and g.position_embeddings.weight.data_ptr() == d.position_embeddings.weight.data_ptr()
        and g.token_type_embeddings.weight.data_ptr() == d.token_type_embeddings.weight.data_ptr()
        and model.generator.generator_lm_head.weight is d.word_embeddings.weight
    )


def _collate_many(collator, examples, rounds=8, batch=32):
    return [
        collator(examples[i : i + batch])
        for _ in range(rounds)
        for i in range(0, len(examples) - batch + 1, batch)
    ]


def _varied_lengths(examples, seed=0):
    """The examples cut to random lengths 1..len (short rows exercise the max(1, .) floor)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for ex in examples:
        n = int(torch.randint(1, len(ex["input_ids"]) + 1, (1,), generator=g))
        out.append({k: v[:n] for k, v in ex.items()})
    return out


# ------------------------------------------------------------------------------------ model
def test_embeddings_are_shared(tokenizer):
    objective = _objective(tokenizer)
    model = objective.model
    assert _shared(model)
    # each tower keeps its own projection of the shared 32-dim embeddings
    g_proj = model.generator.electra.embeddings_project
    d_proj = model.discriminator.electra.embeddings_project
    assert g_proj.weight.shape == (16, 32) and d_proj.weight.shape == (64, 32)
    assert g_proj.weight.data_ptr() != d_proj.weight.data_ptr()
    # the optimizer sees each shared tensor once
    ids = [id(p) for p in objective.parameters()]
    assert len(ids) == len(set(ids))
    # one gradient step keeps them the same tensor
    batch = ElectraCollator(tokenizer, seed=0)([{"input_ids": torch.arange(5, 60)}] * 4)
    loss, _ = objective.compute_loss(batch)
    loss.backward()
    torch.optim.AdamW(objective.parameters(), lr=0.1).step()
    assert _shared(model)


def test_generator_size_defaults(tokenizer):
    from plmkit.plugins.electra import ElectraObjective

    objective = ElectraObjective(encoder=EncoderConfig(
        hidden_size=256, num_layers=3, num_heads=4, intermediate_size=1024, embedding_size=128))
    objective.attach_tokenizer(tokenizer, 128)
    objective.configure_model()
    gen = objective.model.generator.config
    disc = objective.model.discriminator.config
    assert (gen.hidden_size, gen.num_attention_heads, gen.intermediate_size) == (64, 1, 256)
    assert gen.num_hidden_layers == disc.num_hidden_layers == 3
    assert gen.embedding_size == disc.embedding_size == 128
    # the checkpoint keeps the derived generator, so a reload builds the same one
    assert objective.hparams["generator"]["hidden_size"] == 64
    with pytest.raises(PlmkitError, match="embedding_size"):
        ElectraObjective(generator=EncoderConfig(size="tiny", embedding_size=32))
    # FLOPs count both towers: more than the discriminator's 6N alone
    encoder = objective.model.discriminator.electra.encoder
    disc_only = 6 * sum(p.numel() for p in encoder.parameters())
    assert flops_per_token(objective, 128) > disc_only * 1.05


def test_tie_encoder_runs_both_heads_on_the_discriminators_encoder(tokenizer, make_examples):
    # the paper's "tie all weights": one encoder (and one projection of the embeddings), a
    # generator head and a discriminator head; both losses train the one encoder
    objective = _objective(tokenizer, generator=None, tie_encoder=True)
    model = objective.model
    disc, gen = model.discriminator.electra, model.generator.electra
    assert gen.encoder is disc.encoder and gen.embeddings_project is disc.embeddings_project
    assert _shared(model)
    assert gen.config.hidden_size == 64 and objective.hparams["generator"]["hidden_size"] == 64
    own = {id(p) for p in model.discriminator.parameters()}
    extra = [n for n, p in model.generator.named_parameters() if id(p) not in own]
    assert extra and all(n.startswith(("generator_predictions.", "generator_lm_head.bias"))
                         for n in extra)
    batch = ElectraCollator(tokenizer, seed=5)(make_examples(126, "stream", n=8))
    out = model(batch["input_ids"], batch["attention_mask"], batch["labels"],
                batch["token_type_ids"])
    weight = disc.encoder.layer[0].attention.self.query.weight
    for loss in (out.disc_loss, out.mlm_loss):
        (grad,) = torch.autograd.grad(loss, weight, retain_graph=True)
        assert grad.abs().sum() > 0
    with pytest.raises(PlmkitError, match="leave model.generator unset"):
        _objective(tokenizer, tie_encoder=True)  # TINY's generator is narrower
    # a checkpoint's hyperparameters (the generator's shape stored) build the same model
    again = type(objective)(**{**objective.hparams, "encoder": objective.encoder})
    assert again.generator == again.encoder and again.tie_encoder


def test_generator_head_only_at_masked_positions(tokenizer, make_examples):
    objective = _objective(tokenizer)
    batch = ElectraCollator(tokenizer, seed=1)(make_examples(126, "stream", n=8))
    seen = {}
    model = objective.model
    hooks = [
        model.generator.generator_predictions.register_forward_hook(
            lambda m, args, out: seen.__setitem__("head_in", args[0].shape)
        ),
        model.generator.generator_lm_head.register_forward_hook(
            lambda m, args, out: seen.__setitem__("logits", out.shape)
        ),
    ]
    objective.compute_loss(batch)
    for h in hooks:
        h.remove()
    num_masked = int((batch["labels"] != IGNORE_INDEX).sum())
    assert 0 < num_masked < batch["input_ids"].numel() // 4
    assert seen["head_in"] == (num_masked, 16)
    assert seen["logits"] == (num_masked, len(tokenizer))


def test_correct_guess_is_labelled_real(tokenizer, make_examples):
    from plmkit.plugins.electra.model import replace_tokens

    original = torch.tensor([[2, 10, 11, 12, 13, 3]])
    masked = torch.tensor([[False, True, True, False, True, False]])
    sampled = torch.tensor([10, 99, 13])  # right, wrong, right
    fake, is_replaced = replace_tokens(original, masked, sampled)
    assert fake.tolist() == [[2, 10, 99, 12, 13, 3]]
    assert is_replaced.tolist() == [[False, False, True, False, False, False]]

    # end to end: a generator that is sure of the right token (a margin far beyond the Gumbel
    # noise, which lies in [-3.1, 16.7]) never produces a "replaced" label
    objective = _objective(tokenizer)
    batch = ElectraCollator(tokenizer, seed=2)(make_examples(126, "stream", n=8))
    targets = batch["labels"][batch["labels"] != IGNORE_INDEX]
    head = objective.model.generator.generator_lm_head

    def sure(offset):
        def hook(module, args, out):
            return out + 1e4 * torch.nn.functional.one_hot(
                (targets + offset) % out.shape[-1], out.shape[-1]
            )
        return hook

    handle = head.register_forward_hook(sure(0))
    _, metrics = objective.compute_loss(batch)
    handle.remove()
    assert metrics["replaced_frac"] == 0 and metrics["sampled_acc"] == 1
    handle = head.register_forward_hook(sure(1))  # sure of a wrong token: all replaced
    _, metrics = objective.compute_loss(batch)
    handle.remove()
    real = int(batch["attention_mask"].sum())
    assert math.isclose(float(metrics["replaced_frac"]), len(targets) / real, rel_tol=1e-6)
    assert metrics["sampled_acc"] == 0


def test_discriminator_judges_the_corrupted_ids(tokenizer, make_examples):
    """The generator reads the masked ids, the discriminator the generator's samples (the
    original everywhere else), and the labels are exactly "differs from the original". The
    discriminator's loss reaches no generator weight (the sample is discrete, no gradient),
    the generator's loss no discriminator weight; both reach the shared embeddings."""
    objective = _objective(tokenizer)
    model = objective.model
    batch = ElectraCollator(tokenizer, seed=5)(make_examples(126, "stream", n=8))
    seen = {}

    def keep(name):
        def hook(module, args, kwargs):
            seen[name] = kwargs["input_ids"].clone()
        return hook

    hooks = [model.generator.electra.register_forward_pre_hook(keep("gen"), with_kwargs=True),
             model.discriminator.electra.register_forward_pre_hook(keep("disc"),
                                                                   with_kwargs=True)]
    out = model(batch["input_ids"], batch["attention_mask"], batch["labels"],
                batch["token_type_ids"])
    for h in hooks:
        h.remove()
    masked = batch["labels"] != IGNORE_INDEX
    original = torch.where(masked, batch["labels"], batch["input_ids"])
    assert torch.equal(seen["gen"], batch["input_ids"])
    assert (seen["gen"][masked] == tokenizer.mask_token_id).any()
    disc_in = seen["disc"]
    assert torch.equal(disc_in[~masked], original[~masked])
    assert torch.equal(disc_in[masked], out.sampled_ids)
    assert torch.equal(out.is_replaced, disc_in != original)
    assert 0 < int(out.is_replaced.sum()) <= int(masked.sum())

    shared = dict(model.discriminator.electra.embeddings.named_parameters())
    shared_ids = {id(p) for p in shared.values()}
    gen_only = [p for p in model.generator.parameters() if id(p) not in shared_ids]
    disc_only = [p for p in model.discriminator.parameters() if id(p) not in shared_ids]
    assert all(g is None for g in torch.autograd.grad(
        out.disc_loss, gen_only, retain_graph=True, allow_unused=True))
    assert all(g is None for g in torch.autograd.grad(
        out.mlm_loss, disc_only, retain_graph=True, allow_unused=True))
    word = shared["word_embeddings.weight"]
    for loss in (out.disc_loss, out.mlm_loss):
        (grad,) = torch.autograd.grad(loss, word, retain_graph=True)
        assert grad.abs().sum() > 0


def test_roc_auc():
    """The rank formula against a brute-force count of correctly ordered pairs."""
    from plmkit.plugins.electra.model import roc_auc

    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(500, generator=generator)
    targets = torch.rand(500, generator=generator) < 0.2
    pos, neg = scores[targets], scores[~targets]
    pairwise = (pos[:, None] > neg[None, :]).float().mean()
    assert math.isclose(float(roc_auc(scores, targets)), float(pairwise), abs_tol=1e-5)
    assert float(roc_auc(targets.float() + 0.1 * scores, targets)) == 1.0
    assert float(roc_auc(-targets.float(), targets)) == 0.0
    assert float(roc_auc(scores, torch.zeros(500, dtype=torch.bool))) == 0.5


def test_discriminator_training_beats_base_rate_on_token_evidence(tokenizer, make_examples):
    """With a generator that samples uniformly from the vocabulary (its logits pinned at
    zero), a replaced token is usually a rare one: evidence in the token itself, which a
    working discriminator learns in a few dozen steps, below the base-rate entropy and with
    a ROC AUC well above 0.5 on the non-special tokens. Fails if the discriminator read the
    original or masked ids, or its labels or loss were misaligned with its inputs.

    (Once the generator samples from the unigram distribution only context tells a
    replaced token apart, which a 2 x 128 discriminator had not learned after 1000
    ``electra_tiny`` steps: ``disc_auc`` ~0.52.)"""
    torch.manual_seed(0)
    objective = _objective(tokenizer, discriminator_prior_init=True).train()
    handle = objective.model.generator.generator_lm_head.register_forward_hook(
        lambda module, args, out: torch.zeros_like(out))
    batches = _collate_many(ElectraCollator(tokenizer, seed=8),
                            make_examples(126, "stream"), rounds=3, batch=16)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=2e-3)
    losses, bases, aucs = [], [], []
    for step in range(40):
        loss, m = objective.compute_loss(batches[step % len(batches)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        r = float(m["replaced_frac"])
        losses.append(float(m["disc_loss"]))
        bases.append(-(r * math.log(r) + (1 - r) * math.log(1 - r)))
        aucs.append(float(m["disc_auc"]))
    handle.remove()
    assert sum(losses[-10:]) < 0.85 * sum(bases[-10:]), (losses[-10:], bases[-10:])
    assert sum(aucs[-10:]) / 10 > 0.75, aucs[-10:]


def test_disallow_correct_after_the_temperature(tokenizer, make_examples):
    """google-research/electra ``_get_fake_data``: ``sample_from_softmax(logits / temp,
    disallow)`` subtracts 1000 from the original token's logit *after* the temperature, so
    the original is never sampled, however sure the generator is and whatever the
    temperature (subtracted before dividing by 10, the penalty would shrink to 100)."""
    batch = ElectraCollator(tokenizer, seed=4)(make_examples(126, "stream", n=8))
    targets = batch["labels"][batch["labels"] != IGNORE_INDEX]

    def sure(module, args, out):  # a generator sure of the original token
        return out + 5000.0 * torch.nn.functional.one_hot(targets, out.shape[-1])

    for disallow, sampled_acc in ((False, 1.0), (True, 0.0)):
        objective = _objective(tokenizer, temperature=10.0, disallow_correct=disallow)
        handle = objective.model.generator.generator_lm_head.register_forward_hook(sure)
        _, metrics = objective.compute_loss(batch)
        handle.remove()
        assert float(metrics["sampled_acc"]) == sampled_acc


def test_loss_weighting(tokenizer, make_examples):
    batch = ElectraCollator(tokenizer, seed=3)(make_examples(126, "stream", n=8))
    for gen_w, disc_w in ((1.0, 50.0), (2.0, 7.0)):
        objective = _objective(tokenizer, generator_weight=gen_w, discriminator_weight=disc_w)
        loss, m = objective.compute_loss(batch)
        expected = gen_w * m["mlm_loss"] + disc_w * m["disc_loss"]
        assert torch.allclose(loss, expected, rtol=1e-5), (gen_w, disc_w)
        assert m["mlm_loss"] > 0 and m["disc_loss"] > 0
    from plmkit.plugins.electra import ElectraObjective

    default = ElectraObjective()
    assert (default.generator_weight, default.discriminator_weight) == (1.0, 50.0)


# --------------------------------------------------------------------------------- collator
@pytest.mark.parametrize("max_length", [128, 64])
def test_masked_count_law(tokenizer, make_examples, max_length):
    p = 0.15
    examples = make_examples(max_length - 2, "stream", n=96)
    examples += _varied_lengths(make_examples(max_length - 2, "document", n=160), seed=5)
    collator = ElectraCollator(tokenizer, max_length=max_length, seed=6)
    special = torch.tensor(sorted(tokenizer.all_special_ids))
    cap = int((p + 0.005) * max_length)
    hit_cap = hit_floor = 0
    for start in range(0, len(examples), 32):
        b = collator(examples[start : start + 32])
        ids, attn, labels = b["input_ids"], b["attention_mask"], b["labels"]
        selected = labels != IGNORE_INDEX
        for row in range(len(ids)):
            n_real = int(attn[row].sum())
            candidates = int((attn[row].bool() & ~torch.isin(ids[row], special)).sum()
                             + (ids[row] == tokenizer.mask_token_id).sum())
            expected = min(max(1, min(cap, round(n_real * p))), candidates)
            assert int(selected[row].sum()) == expected, (n_real, expected)
            hit_cap += round(n_real * p) > cap
            hit_floor += round(n_real * p) == 0
        # never a special token or padding; [CLS] first, [SEP] closes every row
        assert not torch.isin(labels[selected], special).any()
        assert (labels[attn == 0] == IGNORE_INDEX).all()
        assert (ids[:, 0] == tokenizer.cls_token_id).all()
        last = attn.sum(dim=1) - 1
        assert (ids[torch.arange(len(ids)), last] == tokenizer.sep_token_id).all()
    assert hit_floor > 0  # short rows took the max(1, .) branch
    if max_length == 64:
        assert hit_cap > 0  # round(64 * 0.15) = 10 > int(0.155 * 64) = 9


def test_mask_keep_split(tokenizer, make_examples):
    examples = make_examples(126, "stream")
    collator = ElectraCollator(tokenizer, seed=7)
    n_sel = n_mask = n_keep = n_random = 0
    for b in _collate_many(collator, examples):
        sel = b["labels"] != IGNORE_INDEX
        ids, labels = b["input_ids"][sel], b["labels"][sel]
        n_sel += int(sel.sum())
        n_mask += int((ids == tokenizer.mask_token_id).sum())
        n_keep += int((ids == labels).sum())
        n_random += int(((ids != labels) & (ids != tokenizer.mask_token_id)).sum())
        # outside the selection nothing changes
        assert not (b["input_ids"][~sel] == tokenizer.mask_token_id).any()
    assert n_sel > 20_000
    assert abs(n_mask / n_sel - 0.85) < 0.02
    assert abs(n_keep / n_sel - 0.15) < 0.02
    assert n_random == 0
    with pytest.raises(PlmkitError, match="whole_word"):  # ELECTRA masks single tokens
        ElectraCollator(tokenizer, masking=MaskingConfig(whole_word=True))


def test_collator_alone_in_dataloader(tokenizer, make_examples):
    from torch.utils.data import DataLoader

    example = make_examples(126, "stream", n=1)[0]
    dataset = [example] * 32  # identical inputs: any difference comes from the masks
    before = copy.deepcopy(example)

    def masks(seed):
        collator = ElectraCollator(tokenizer, seed=seed)
        loader = DataLoader(dataset, batch_size=8, num_workers=2, collate_fn=collator)
        return [b["labels"] != IGNORE_INDEX for b in loader]

    first, again, other = masks(0), masks(0), masks(1)
    assert len(first) == 4
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # reproducible per seed
    assert not torch.equal(first[0], first[1])  # worker 0 and worker 1 draw different masks
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    for key in example:
        assert torch.equal(example[key], before[key])  # inputs never mutated


def test_collator_imports_without_lightning():
    code = ("import sys; from plmkit.plugins.electra import ElectraCollator; "
            "assert 'lightning' not in sys.modules, 'lightning imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------- training and export
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One short electra_tiny run shared by the tests below (same flags as ``tiny_fit``)."""
    from plmkit.cli import main

    run = tmp_path_factory.mktemp("electra") / "electra_tiny"
    code = main([
        "fit", "--recipe", "electra_tiny",
        "--trainer.default_root_dir", str(run),
        "--trainer.max_steps", "100",
        "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--data.max_documents", "2000",
        "--data.num_workers", "0",
    ])
    assert code == 0
    return run


def _base_rate_entropy(rates: list[float]) -> list[float]:
    """BCE of the best constant predictor: "original" everywhere at the replaced rate."""
    return [-(r * math.log(r) + (1 - r) * math.log(1 - r)) for r in rates]


def test_training_lowers_both_losses(trained):
    mlm, disc = metric_series(trained, "train/mlm_loss"), metric_series(trained, "train/disc_loss")
    assert len(mlm) >= 90 and len(disc) >= 90
    assert falling(mlm)
    # electra_tiny starts the discriminator at the base rate (discriminator_prior_init), so its
    # loss starts near the base-rate entropy (~0.42, not ln 2); it then has to go below it
    # while the generator it is judging keeps improving
    first, last = sum(disc[:5]) / 5, sum(disc[-50:]) / 50
    assert last < 0.985 * first
    assert min(disc) < 0.93 * first


def test_discriminator_beats_all_original_baseline(trained):
    """The discriminator's BCE is below the base-rate entropy, the loss of the best constant
    predictor ("original" everywhere at the replaced rate): it tells replaced tokens from
    original ones better than the all-original baseline can, both over the run and at its
    end (where the generator it judges has learned the unigram distribution)."""
    disc = metric_series(trained, "train/disc_loss")
    baseline = _base_rate_entropy(metric_series(trained, "train/replaced_frac"))
    assert sum(disc[10:]) < 0.97 * sum(baseline[10:])
    assert sum(disc[-50:]) < sum(baseline[-50:])


def test_discriminator_auc_is_logged(trained):
    """``disc_auc`` (replaced vs original, non-special tokens only) shows what the loss hides:
    the discriminator tells replacements apart while the generator is still worse than the
    unigram distribution (its samples are rare tokens), then falls back towards 0.5 (no
    evidence beyond the base rate) once only context could tell them apart."""
    auc = metric_series(trained, "train/disc_auc")
    assert len(auc) >= 90 and all(0.0 <= a <= 1.0 for a in auc)
    assert max(sum(auc[i : i + 10]) / 10 for i in range(50)) > 0.6


def test_checkpoint_reload_keeps_sharing(trained):
    from plmkit.export import objective_from_checkpoint

    objective = objective_from_checkpoint(trained / "checkpoints" / "last.ckpt")
    assert _shared(objective.model)
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    key = "model.discriminator.electra.embeddings.word_embeddings.weight"
    assert torch.equal(objective.model.generator.electra.embeddings.word_embeddings.weight,
                       ckpt[key])


def test_export_loads_and_runs(trained, export_run, tmp_path):
    from transformers import AutoTokenizer, ElectraForMaskedLM, ElectraForPreTraining

    out = export_run(trained, tmp_path / "export", "--generator")
    disc, info = ElectraForPreTraining.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    gen, info = ElectraForMaskedLM.from_pretrained(out / "generator", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(["a small domesticated carnivorous mammal"], return_tensors="pt")
    with torch.no_grad():
        logits = disc(**enc).logits
        gen_logits = gen(**enc).logits
    assert logits.shape == enc["input_ids"].shape and torch.isfinite(logits).all()
    assert gen_logits.shape == (*enc["input_ids"].shape, len(tok))
    # each tower holds its own copy of the same trained embeddings
    assert torch.equal(disc.electra.embeddings.word_embeddings.weight,
                       gen.electra.embeddings.word_embeddings.weight)
    assert gen.generator_lm_head.weight is gen.electra.embeddings.word_embeddings.weight
