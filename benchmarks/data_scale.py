"""Data at scale: tokenize synthetic corpora of growing size, then train on each from its cache.

For every size (MB of text) it writes a corpus of bundled WordNet documents (shuffled repeats),
then runs ``plmkit fit --recipe bert_tiny`` twice on it with a given 8k WordPiece tokenizer and
two training steps: once on an empty cache (tokenization + training) and once on the filled
cache. It reports the tokenization rate (MB of text per second per process, from plmkit's own
log line), the peak resident memory of the fit process and of its process tree (sampled with
psutil every 0.1 s), the part of it that is not file-backed pages of memory maps (``anon``),
and the time from process start to the first training step of the second run.

    python -m benchmarks data --sizes 100 1000 4000   # merges into results/<host>.json
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

_CHILD = """
import sys, time, psutil
from plmkit.objective import Objective
inner = Objective.training_step
def first_step(self, *args, **kwargs):
    if not getattr(first_step, "seen", False):
        first_step.seen = True
        since = time.time() - psutil.Process().create_time()
        print(f"FIRST_STEP {since:.2f}", file=sys.stderr, flush=True)
    return inner(self, *args, **kwargs)
Objective.training_step = first_step
from plmkit.data.datamodule import PretrainDataModule
prepare = PretrainDataModule.prepare_data
def timed_prepare(self):
    since = time.time() - psutil.Process().create_time()
    print(f"DATA_START {since:.2f}", file=sys.stderr, flush=True)
    return prepare(self)
PretrainDataModule.prepare_data = timed_prepare
from plmkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def write_corpus(path: Path, megabytes: int, seed: int = 0) -> None:
    """About ``megabytes`` MB of WordNet documents, repeated in a new order every pass."""
    from plmkit.data.wordnet import corpus_path

    with gzip.open(corpus_path(), "rt", encoding="utf-8") as f:
        documents = [d.strip() for d in f.read().split("\n\n") if d.strip()]
    target, written, rng = megabytes * 1_000_000, 0, random.Random(seed)
    with open(path, "w", encoding="utf-8") as out:
        while written < target:
            rng.shuffle(documents)
            for doc in documents:
                text = doc + "\n\n"
                out.write(text)
                written += len(text.encode())
                if written >= target:
                    break


def _tree_rss(process: psutil.Process) -> tuple[int, int, int]:
    """(main RSS, main RSS less file-backed shared pages, RSS summed over the tree)."""
    try:
        info = process.memory_info()
        total = info.rss
        for child in process.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return info.rss, info.rss - info.shared, total
    except psutil.Error:
        return 0, 0, 0


def run_fit(args: list[str], log: Path) -> dict[str, Any]:
    """One ``plmkit fit`` in a child process, sampled for memory; its numbers."""
    began = time.perf_counter()
    with open(log, "w") as err:
        child = subprocess.Popen([sys.executable, "-c", _CHILD, "fit", *args],
                                 stdout=err, stderr=subprocess.STDOUT)
        process = psutil.Process(child.pid)
        peak = [0, 0, 0]
        while child.poll() is None:
            peak = [max(a, b) for a, b in zip(peak, _tree_rss(process))]
            time.sleep(0.1)
    text = log.read_text()
    if child.returncode != 0:
        raise RuntimeError(f"plmkit fit failed ({child.returncode}); see {log}")
    rate = re.search(r"tokenized ([\d.]+) MB of text \((\d+) shards\) in ([\d.]+) s with (\d+) "
                     r"process\(es\): ([\d.]+) MB/s, ([\d.]+) MB/s per process", text)
    first = re.search(r"FIRST_STEP ([\d.]+)", text)
    data = re.search(r"DATA_START ([\d.]+)", text)
    out = {"wall_s": round(time.perf_counter() - began, 1),
           "peak_rss_mb": round(peak[0] / 2**20), "peak_anon_mb": round(peak[1] / 2**20),
           "peak_tree_rss_mb": round(peak[2] / 2**20),
           "first_step_s": float(first.group(1)) if first else None,
           "data_to_first_step_s": round(float(first.group(1)) - float(data.group(1)), 2)
           if first and data else None}
    if rate:
        out.update(text_mb=float(rate.group(1)), shards=int(rate.group(2)),
                   tokenize_s=float(rate.group(3)), processes=int(rate.group(4)),
                   mb_per_s=float(rate.group(5)), mb_per_s_per_process=float(rate.group(6)))
    return out


def run(sizes: list[int], workdir: Path, num_proc: int | None = None) -> list[dict[str, Any]]:
    """Both runs for every size; the corpora and caches live in ``workdir`` (removed after
    each size, to leave the disk as it was)."""
    from plmkit.data.tokenizer import train_tokenizer

    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = workdir / "tokenizer"
    if not (tokenizer_dir / "tokenizer.json").exists():
        sample = workdir / "sample.txt"
        write_corpus(sample, 8)
        texts = sample.read_text().split("\n\n")
        train_tokenizer(texts, "wordpiece", 8192, show_progress=False).save_pretrained(
            str(tokenizer_dir))
    rows = []
    for size in sizes:
        corpus, cache = workdir / f"corpus-{size}.txt", workdir / f"cache-{size}"
        write_corpus(corpus, size)
        shutil.rmtree(cache, ignore_errors=True)
        # the corpus just written is flushed to disk first: otherwise the kernel writes it
        # back while plmkit tokenizes, and the benchmark times its own writing
        os.sync()
        args = ["--recipe", "bert_tiny", "--data.corpus", str(corpus),
                "--data.tokenizer", str(tokenizer_dir), "--data.cache_dir", str(cache),
                "--data.val_fraction", "0.001", "--trainer.max_steps", "2",
                "--trainer.default_root_dir", str(workdir / "run"), "--overwrite", "true",
                "--trainer.enable_progress_bar", "false"]
        if num_proc:
            args += ["--data.num_proc", str(num_proc)]
        first = run_fit(args, workdir / f"first-{size}.log")
        second = run_fit(args, workdir / f"second-{size}.log")
        rows.append({"corpus_mb": size, "first": first, "second": second})
        print(json.dumps(rows[-1]), flush=True)
        corpus.unlink()
        shutil.rmtree(cache, ignore_errors=True)
    return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The benchmarks page's rows."""
    lines = ["| corpus | shards | processes | tokenize MB/s | per process | first run | peak RSS "
             "(anon) | all processes | second run: data start to first step (process start)"
             " | peak RSS (anon) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        a, b = row["first"], row["second"]
        lines.append(
            f"| {row['corpus_mb']} MB | {a.get('shards', '')} | {a.get('processes', '')} | "
            f"{a.get('mb_per_s', '')} | {a.get('mb_per_s_per_process', '')} | {a['wall_s']} s |"
            f" {a['peak_rss_mb']} MB ({a['peak_anon_mb']}) | {a['peak_tree_rss_mb']} MB | "
            f"{b['data_to_first_step_s']} s ({b['first_step_s']} s) | "
            f"{b['peak_rss_mb']} MB ({b['peak_anon_mb']}) |")
    return lines
