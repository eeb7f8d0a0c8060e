"""Streaming mode (``--data.streaming true``): deterministic, resumable, faithful to the text."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_run

from plmkit.data.corpus import load_documents
from plmkit.data.loader import POSITION_KEY
from plmkit.data.preprocess import encode_documents
from plmkit.data.streaming import StreamingLoader, StreamSource, held_out
from plmkit.plugins.bert import BertCollator

DOCS = 400
SOURCE = StreamSource("bundled", max_documents=DOCS)


def _rows(examples: list[dict]) -> dict:
    """A collator that keeps the examples (a list, one entry per row)."""
    return {"rows": examples}


def _loader(tokenizer, collator=None, **kw) -> StreamingLoader:
    args = dict(block_length=61, packing="document", separator=tokenizer.sep_token_id,
                batch_size=8, chunk_documents=100, val_fraction=0.05, seed=3)
    return StreamingLoader(SOURCE, tokenizer.backend_tokenizer,
                           collator or BertCollator(tokenizer, max_length=64, seed=1),
                           **(args | kw))


def _epoch(loader: StreamingLoader) -> list[tuple[tuple, dict]]:
    out = []
    for batch in loader:
        position = batch.pop(POSITION_KEY)
        loader.mark_consumed(position)
        out.append((position, batch))
    return out


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["labels"], y["labels"])
        for (_, x), (_, y) in zip(a, b))


def test_streaming_loader_is_deterministic_and_resumes_exactly(tokenizer, one_thread):
    full = _loader(tokenizer)
    epoch0, epoch1 = _epoch(full), _epoch(full)
    assert len(epoch0) > 100 and len(epoch1) == len(epoch0)
    assert {p[0] for p, _ in epoch0} == {0} and {p[0] for p, _ in epoch1} == {1}
    assert len({p[1] for p, _ in epoch0}) == 4  # four chunks of 100 documents
    assert not _same(epoch0, epoch1)  # reshuffled per epoch
    assert _same(_epoch(_loader(tokenizer, num_workers=2)), epoch0)  # workers round robin

    # mid-epoch, mid-chunk: stop after batch 2 of chunk 1, resume in a fresh loader
    cut = next(i for i, (p, _) in enumerate(epoch0) if p[1:3] == (1, 2))
    first = _loader(tokenizer)
    for _, batch in zip(range(cut + 1), first):
        first.mark_consumed(batch.pop(POSITION_KEY))
    state = first.state_dict()
    assert (state["epoch"], state["chunk"], state["skip"], state["batches"]) == (0, 1, 3,
                                                                                 cut + 1)
    resumed = _loader(tokenizer)
    resumed.load_state_dict(state)
    assert _same(_epoch(resumed), epoch0[cut + 1:])

    # saved right after the epoch's last batch: the resumed run starts the next epoch
    at_end = _loader(tokenizer)
    at_end.load_state_dict(state)
    at_end.mark_consumed(epoch0[-1][0])
    assert _same(_epoch(at_end), epoch1)


def _contains(run: list[int], tokens: list[int]) -> bool:
    return any(tokens[i:i + len(run)] == run for i in range(len(tokens) - len(run) + 1))


@pytest.mark.parametrize("mode", ["document", "stream"])
def test_streamed_blocks_are_the_corpus_documents_tokens(tokenizer, mode):
    texts = [text for text, _ in load_documents("bundled", max_documents=DOCS)]
    backend, sep = tokenizer.backend_tokenizer, tokenizer.sep_token_id
    seen = {}
    for split in ("train", "val"):
        docs = set()
        for batch in _loader(tokenizer, _rows, packing=mode, split=split):
            for example in batch["rows"]:
                ids, doc_ids = example["input_ids"].tolist(), example["doc_ids"].tolist()
                if mode == "document":
                    assert len(set(doc_ids)) == 1
                bounds = [0, *np.flatnonzero(np.diff(doc_ids)) + 1, len(ids)]
                for a, b in zip(bounds[:-1], bounds[1:]):
                    d = doc_ids[a]
                    tokens = encode_documents([texts[d]], backend).ids.tolist()
                    assert _contains(ids[a:b], tokens + ([sep] if mode == "stream" else []))
                docs.update(doc_ids)
        seen[split] = docs
    assert not seen["train"] & seen["val"] and max(seen["train"]) >= 300  # global indices
    assert held_out(3, np.array(sorted(seen["val"])), 0.05).all()
    assert not held_out(3, np.array(sorted(seen["train"])), 0.05).any()
    assert 0.09 < held_out(0, np.arange(20000), 0.1).mean() < 0.11


@pytest.mark.parametrize("collate", ["global", "local"])
def test_streaming_ranks_are_disjoint(tokenizer, collate):
    def rows(loader: StreamingLoader) -> list[list[tuple]]:
        return [[(int(e["doc_ids"][0]), *e["input_ids"].tolist()) for e in batch["rows"]]
                for batch in loader]

    ranks = [rows(_loader(tokenizer, _rows, batch_size=4, rank=r, world_size=2,
                          collate=collate)) for r in range(2)]
    single = rows(_loader(tokenizer, _rows))  # one process with the same global batch
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    for a, b, whole in zip(*ranks, single):
        assert not set(a) & set(b) and a + b == whole


COMMON = [
    "--recipe", "bert_tiny",
    "--data.streaming", "true",
    "--data.max_documents", str(DOCS),
    "--data.stream_chunk_documents", "10",  # about four batches a chunk: resumes mid-chunk
    "--data.max_length", "64",
    "--data.batch_size", "8",
    "--data.val_fraction", "0.1",
    "--data.num_workers", "2",
    "--model.optim.schedule", "constant",
    "--model.optim.warmup_steps", "0",
    "--checkpoint.every_n_train_steps", "5",
    "--trainer.log_every_n_steps", "1",
    "--trainer.limit_val_batches", "2",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--trainer.callbacks+=plmkit.callbacks.BatchFingerprint",
]


def test_streaming_fit_resumes_in_a_fresh_process_exactly(run_plmkit, tmp_path: Path):
    whole, half = tmp_path / "whole", tmp_path / "half"
    code, _, err = run_plmkit("fit", *COMMON, "--trainer.max_steps", "10",
                              "--trainer.default_root_dir", whole)
    assert code == 0, err[-2000:]
    code, _, err = run_plmkit("fit", *COMMON, "--trainer.max_steps", "5",
                              "--trainer.default_root_dir", half)
    assert code == 0, err[-2000:]
    resumed = subprocess.run(
        [sys.executable, "-m", "plmkit", "fit", *COMMON, "--trainer.max_steps", "10",
         "--trainer.default_root_dir", str(half), "--ckpt_path", "last"],
        capture_output=True, text=True, env=dict(os.environ), timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_run(whole, half, 10)


def test_streaming_fit_needs_max_steps(run_plmkit, tmp_path: Path):
    code, _, err = run_plmkit("fit", *COMMON, "--trainer.max_steps", "-1",
                              "--trainer.default_root_dir", tmp_path / "run")
    assert code == 2
    assert "plmkit: error: --data.streaming true needs --trainer.max_steps" in err
    assert "Traceback" not in err
