"""The data side alone, in a fresh process: ``python -m benchmarks.dataside '<RunConfig json>'``.

* ``side="collators"``: examples/s of the method's plmkit collator and of its transformers
  counterpart, single process, on pre-built examples (plmkit: packed blocks as its loader
  hands them over; transformers: ``group_texts`` rows as a ``datasets.Dataset`` hands them
  over). The two are called alternately and the median call time of each is reported.
* ``side="loader"``: tokens/s that plmkit's resumable loader (with its worker processes, as
  in training) delivers with no model attached, to compare with the training step's
  consumption.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any

import numpy as np

from benchmarks.specs import RunConfig, build, train_documents
from benchmarks.worker import configure


def _plmkit_examples(objective: Any, dm: Any, corpus: Any, docs: np.ndarray, n: int) -> list:
    from plmkit.data.packing import BlockDataset, pack

    tokenizer = dm.tokenizer
    separator = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else (
        tokenizer.eos_token_id)
    blocks = pack(corpus, docs, objective.block_length(dm.max_length), objective.packing,
                  separator)
    dataset = BlockDataset(blocks)
    return dataset, [dataset[i] for i in range(min(n, len(dataset)))]


def run_collators(cfg: RunConfig, min_seconds: float = 1.5) -> dict[str, Any]:
    from benchmarks.baselines import baseline_collator, baseline_dataset

    objective, dm = build(cfg)
    corpus = dm.prepare(objective)
    objective.attach_tokenizer(dm.tokenizer, cfg.seq)
    docs = train_documents(dm, corpus)
    _, ours_examples = _plmkit_examples(objective, dm, corpus, docs, cfg.batch)
    rows = baseline_dataset(cfg.method, dm.tokenizer, corpus, docs, cfg.seq)
    theirs_examples = [rows[i] for i in range(cfg.batch)]
    ours = objective.build_collator(seed=0)
    theirs = baseline_collator(cfg.method, dm.tokenizer, objective, cfg.seq)
    calls: dict[str, list[float]] = {"plmkit": [], "baseline": []}
    pairs = {"plmkit": (ours, ours_examples), "baseline": (theirs, theirs_examples)}
    for fn, examples in pairs.values():
        fn(examples)  # warm-up
    start = time.perf_counter()
    while time.perf_counter() - start < 2 * min_seconds or len(calls["plmkit"]) < 3:
        for side, (fn, examples) in pairs.items():
            t0 = time.perf_counter()
            fn(examples)
            calls[side].append(time.perf_counter() - t0)
    out: dict[str, Any] = {"config": cfg.to_dict(), "batch": cfg.batch}
    for side, times in calls.items():
        out[side] = {"examples_per_sec": cfg.batch / statistics.median(times),
                     "calls": len(times)}
    out["ratio"] = out["plmkit"]["examples_per_sec"] / out["baseline"]["examples_per_sec"]
    return out


def run_loader(cfg: RunConfig, batches: int = 40) -> dict[str, Any]:
    from plmkit.data.loader import NUM_TOKENS_KEY, ResumableLoader

    objective, dm = build(cfg)
    corpus = dm.prepare(objective)
    objective.attach_tokenizer(dm.tokenizer, cfg.seq)
    dataset, _ = _plmkit_examples(objective, dm, corpus, train_documents(dm, corpus), 0)
    loader = ResumableLoader(dataset, objective.build_collator(seed=0), cfg.batch,
                             num_workers=cfg.workers, pin_memory=True)
    tokens, count, start = 0, 0, 0.0
    for batch in loader:
        if count == 0:  # the first batch pays for the worker start-up
            start = time.perf_counter()
        else:
            tokens += int(batch[NUM_TOKENS_KEY])
        count += 1
        if count > batches:
            break
    seconds = time.perf_counter() - start
    return {"config": cfg.to_dict(), "tokens_per_sec": tokens / seconds,
            "batches_per_sec": (count - 1) / seconds, "workers": cfg.workers}


def main(argv: list[str] | None = None) -> int:
    cfg = configure(argv)
    result = run_collators(cfg) if cfg.side == "collators" else run_loader(cfg)
    result["load_before"] = os.getloadavg()[0]
    print("BENCHMARK_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
