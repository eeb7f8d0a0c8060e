"""RoBERTa: dynamic masking statistics, FULL-SENTENCES inputs, workers, Trainer, training."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from conftest import falling, metric_series
from torch.utils.data import DataLoader

from plmkit.collator import IGNORE_INDEX
from plmkit.config import EncoderConfig, MaskingConfig
from plmkit.data.loader import POSITION_KEY, ResumableLoader
from plmkit.plugins.roberta import RobertaCollator

MAX_LENGTH = 128
BLOCK = MAX_LENGTH - 2


@pytest.fixture(scope="module")
def stream_examples(make_examples):
    return make_examples(BLOCK, "sentences", n=512)


def _restore(batch):
    """The uncorrupted input: labels put back where a token was predicted."""
    return torch.where(batch["labels"] != IGNORE_INDEX, batch["labels"], batch["input_ids"])


def test_import_without_lightning():
    code = (
        "import sys; from plmkit.plugins.roberta import RobertaCollator; "
        "assert 'lightning' not in sys.modules, 'lightning imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_full_sentences_inputs(tokenizer, stream_examples):
    from plmkit.plugins.roberta import RobertaObjective

    assert RobertaObjective.packing == "sentences"
    objective = RobertaObjective(encoder=EncoderConfig(size="tiny", max_position_embeddings=512))
    objective.attach_tokenizer(tokenizer, MAX_LENGTH)
    assert objective.block_length(MAX_LENGTH) == BLOCK
    assert objective.max_positions() == 512  # inputs of 512 need 514 rows (padding offset)
    assert objective.build_model().config.max_position_embeddings == 514
    collator = RobertaCollator(tokenizer, max_length=MAX_LENGTH, seed=0)
    examples = stream_examples[:64]
    batch = collator(examples)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}  # no NSP, no token types
    # whole sentences up to the length: blocks are nearly full, the rest is padding
    lengths = torch.tensor([len(e["input_ids"]) for e in examples])
    assert (lengths <= BLOCK).all() and lengths.float().mean() > 0.9 * BLOCK
    assert torch.equal(batch["attention_mask"].sum(dim=1), lengths + 2)
    expected = torch.stack([torch.nn.functional.pad(
        torch.cat([torch.tensor([tokenizer.cls_token_id]), e["input_ids"],
                   torch.tensor([tokenizer.sep_token_id])]),
        (0, batch["input_ids"].shape[1] - len(e["input_ids"]) - 2), value=tokenizer.pad_token_id)
        for e in examples
    ])
    assert torch.equal(_restore(batch), expected)
    # blocks cross documents: the separator sits inside blocks, and is never predicted
    inner_sep = expected[:, 1:-1] == tokenizer.sep_token_id
    assert inner_sep.any(dim=1).float().mean() > 0.5
    assert (batch["labels"][:, 1:-1][inner_sep] == IGNORE_INDEX).all()


@pytest.mark.parametrize("exact_count", [True, False])
def test_masking_statistics(tokenizer, stream_examples, exact_count):
    collator = RobertaCollator(
        tokenizer, max_length=MAX_LENGTH, masking=MaskingConfig(exact_count=exact_count), seed=1
    )
    special = torch.tensor(sorted(tokenizer.all_special_ids))
    masked = maskable = n_mask = n_random = n_keep = 0
    rows_n, rows_count = [], []
    for _ in range(6):
        for i in range(0, len(stream_examples), 64):
            batch = collator(stream_examples[i : i + 64])
            labels, ids = batch["labels"], batch["input_ids"]
            original = _restore(batch)
            sel = labels != IGNORE_INDEX
            assert not torch.isin(labels[sel], special).any()
            n = (~torch.isin(original, special)).sum(dim=1)
            maskable += int(n.sum())
            masked += int(sel.sum())
            rows_n.append(n)
            rows_count.append(sel.sum(dim=1))
            n_mask += int((ids[sel] == tokenizer.mask_token_id).sum())
            n_keep += int((ids[sel] == labels[sel]).sum())
            n_random += int(((ids[sel] != labels[sel])
                             & (ids[sel] != tokenizer.mask_token_id)).sum())
            # random replacements are never special tokens
            assert not torch.isin(ids[sel & (ids != labels) & (ids != tokenizer.mask_token_id)],
                                  special).any()
    assert abs(masked / maskable - 0.15) < 0.01
    assert abs(n_mask / masked - 0.8) < 0.02
    assert abs(n_random / masked - 0.1) < 0.02
    assert abs(n_keep / masked - 0.1) < 0.02
    n, counts = torch.cat(rows_n), torch.cat(rows_count)
    excess = counts - torch.floor(0.15 * n.double()).long()
    if exact_count:  # fairseq's int(0.15 n + U): floor(0.15 n) or one more, never anything else
        assert set(excess.tolist()) == {0, 1}
        assert abs((counts - 0.15 * n).double().mean().item()) < 0.05  # unbiased rounding
    else:  # Bernoulli: the count varies around 0.15 n
        assert excess.min() < -2 and excess.max() > 3


def test_dynamic_masking_across_epochs(tokenizer, stream_examples):
    """Each epoch masks a block anew; the same (seed, epoch) reproduces the masks."""
    examples = stream_examples[:64]

    def run_epochs(epochs):
        collator = RobertaCollator(tokenizer, max_length=MAX_LENGTH, seed=0)
        loader = ResumableLoader(examples, collator, batch_size=16, seed=5)
        masks = []
        for _ in range(epochs):
            by_block = {}
            for batch in loader:
                epoch, position, number = batch.pop(POSITION_KEY)
                loader.mark_consumed((epoch, position, number))
                ids = loader.order(epoch)[position * 16 : (position + 1) * 16]
                for row, index in enumerate(ids):
                    block = examples[index]["input_ids"]
                    assert torch.equal(_restore(batch)[row, 1 : len(block) + 1], block)
                    by_block[int(index)] = batch["labels"][row] != IGNORE_INDEX
            assert len(by_block) == len(examples)
            masks.append(by_block)
        assert loader.epoch == epochs  # the loader really moved on to the next epochs
        return masks

    epoch0, epoch1 = run_epochs(2)
    differ = sum(not torch.equal(epoch0[i], epoch1[i]) for i in epoch0)
    assert differ == len(epoch0)
    again = run_epochs(1)[0]
    assert all(torch.equal(epoch0[i], again[i]) for i in epoch0)


def _worker_batches(collator, example, n=8):
    loader = DataLoader([example] * (8 * n), batch_size=8, num_workers=2, collate_fn=collator)
    return [b["labels"] != IGNORE_INDEX for b in loader]


def test_dataloader_workers(tokenizer, stream_examples):
    def make(seed):
        return RobertaCollator(tokenizer, max_length=MAX_LENGTH, seed=seed)

    first = _worker_batches(make(3), stream_examples[0])
    # batches 0 and 1 come from workers 0 and 1: the same rows, masked differently
    assert not torch.equal(first[0], first[1])
    # within a batch every row gets its own mask
    assert not torch.equal(first[0][0], first[0][1])
    second = _worker_batches(make(3), stream_examples[0])
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    other = _worker_batches(make(4), stream_examples[0])
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_inputs_not_mutated(tokenizer, stream_examples):
    examples = [dict(e) for e in stream_examples[:16]]
    examples[0] = {k: v.tolist() for k, v in examples[0].items()}  # lists work too
    before = copy.deepcopy(examples)
    RobertaCollator(tokenizer, max_length=MAX_LENGTH)(examples)
    for a, b in zip(examples, before):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key]))


def test_gathered_loss_matches_full_head(tokenizer, stream_examples):
    from plmkit.plugins.roberta import RobertaObjective

    objective = RobertaObjective(encoder=EncoderConfig(
        hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
        max_position_embeddings=MAX_LENGTH))
    objective.attach_tokenizer(tokenizer, MAX_LENGTH)
    objective.configure_model()
    model = objective.model.eval()
    assert model.config.max_position_embeddings == MAX_LENGTH + 2
    assert model.config.pad_token_id == tokenizer.pad_token_id
    batch = objective.build_collator(seed=0)(stream_examples[:8])
    with torch.no_grad():
        loss, metrics = objective.compute_loss(batch)
        reference = model(**batch).loss
    assert torch.allclose(loss, reference, atol=1e-5)
    assert set(metrics) == {"mlm_loss", "mlm_acc"}


def test_hf_trainer(tmp_path, tokenizer, stream_examples):
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
    from transformers import RobertaConfig, RobertaForMaskedLM, Trainer, TrainingArguments

    class Raw(torch.utils.data.Dataset):
        def __len__(self):
            return 48

        def __getitem__(self, i):
            return stream_examples[i]

    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=64,
                           max_position_embeddings=MAX_LENGTH + 2, type_vocab_size=1,
                           pad_token_id=tokenizer.pad_token_id)
    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), report_to=[], use_cpu=True,
                             max_steps=3, per_device_train_batch_size=8,
                             remove_unused_columns=False, save_strategy="no",
                             logging_steps=1)
    trainer = Trainer(model=RobertaForMaskedLM(config), args=args, train_dataset=Raw(),
                      data_collator=RobertaCollator(tokenizer, max_length=MAX_LENGTH))
    result = trainer.train()
    assert result.global_step == 3
    assert torch.isfinite(torch.tensor(result.training_loss))


def test_training_lowers_loss_and_exports(tiny_fit, export_run, tmp_path):
    from transformers import AutoModel, AutoTokenizer, RobertaModel

    run = tiny_fit("roberta_tiny", steps=80)
    losses = metric_series(run, "train/loss")
    assert len(losses) >= 70
    assert falling(losses)
    out = export_run(run, tmp_path / "export")
    model = AutoModel.from_pretrained(out)
    assert isinstance(model, RobertaModel)
    tok = AutoTokenizer.from_pretrained(out)
    inputs = tok(["a living thing", "an entity that has physical existence"],
                 padding=True, return_tensors="pt")
    inputs.pop("token_type_ids", None)
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
    assert hidden.shape == (*inputs["input_ids"].shape, model.config.hidden_size)
    assert torch.isfinite(hidden).all()
