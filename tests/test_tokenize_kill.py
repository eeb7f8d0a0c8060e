"""A real kill during tokenization (#14): ``plmkit fit`` is SIGKILLed, with its tokenizer
worker processes, while it writes the sharded cache; the same command run again keeps the
complete shards, tokenizes the rest, trains, and leaves a cache byte-identical to the one an
uninterrupted run writes. (tests/test_data_scale.py interrupts a build in-process.)"""

from __future__ import annotations

import filecmp
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

#: shuffled copies of the 1,500 test documents: 2.5 MB of text, ~48 shards of 50 KB, which two
#: tokenizer processes take about a second to write (more on a busy machine), so a kill at the
#: first complete shard lands long before the manifest
COPIES = 3
SHARD_MB = 0.05
RESUMING = re.compile(r"resuming, (\d+) shard\(s\) already written")

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                                reason="reads process groups from Linux's /proc")


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory: pytest.TempPathFactory, documents: list[str]) -> Path:
    rng = random.Random(0)
    texts: list[str] = []
    for _ in range(COPIES):
        copy = documents[:]
        rng.shuffle(copy)
        texts.extend(copy)
    path = tmp_path_factory.mktemp("kill-corpus") / "corpus.txt"
    path.write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    path = tmp_path_factory.mktemp("kill-tokenizer")
    tokenizer.save_pretrained(str(path))
    return path


def _command(corpus: Path, tokenizer: Path, cache: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "plmkit", *(str(a) for a in (
        "fit", "--recipe", "bert_tiny",
        "--data.corpus", corpus,
        "--data.tokenizer", tokenizer,
        "--data.cache_dir", cache,
        "--data.shard_mb", SHARD_MB,
        "--data.num_proc", 2,
        "--data.max_length", 32,
        "--data.batch_size", 4,
        "--data.num_workers", 0,
        "--model.optim.warmup_steps", 0,
        "--trainer.max_steps", 1,
        "--trainer.limit_val_batches", 0,
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", run_dir,
    ))]


def _group(pgid: int) -> dict[int, str]:
    """Every process of the process group ``pgid`` and its state letter (``Z``: a zombie, dead
    and waiting for its parent or reaper)."""
    members = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended while we looked
            continue
        state, _parent, group = stat.rsplit(")", 1)[1].split()[:3]  # the name may hold ")"
        if int(group) == pgid:
            members[int(entry.name)] = state
    return members


def _names(tokenized: Path) -> list[str]:
    """What the (one) tokenized corpus folder under ``tokenized`` holds now."""
    try:
        folder = next(p for p in tokenized.iterdir() if p.is_dir())  # beside it: its .lock
        return os.listdir(folder)
    except (OSError, StopIteration):  # not created yet
        return []


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def _complete_shards(folder: Path) -> dict[str, tuple[int, int]]:
    """Shards with their meta.json (written last, before the rename into place), by name, with
    the inode of their folder and the mtime of their meta.json: a shard written again is a new
    folder renamed into place."""
    return {p.parent.name: (p.parent.stat().st_ino, p.stat().st_mtime_ns)
            for p in folder.glob("shard-*/meta.json")}


def test_sigkill_during_tokenization_resumes_to_a_byte_identical_cache(
    tmp_path: Path, corpus_file: Path, tokenizer_dir: Path
):
    env = {**os.environ, "PLMKIT_LOG_LEVEL": "INFO"}  # the resume message is an INFO line
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    command = _command(corpus_file, tokenizer_dir, cache, run_dir)
    tokenized = cache / "tokenized"

    # 1. start the run in a session of its own and SIGKILL the whole group (main process,
    # tokenizer workers, multiprocessing's resource tracker) once a shard is complete, best
    # while a worker is writing the next one (its .tmp-* folder half full)
    with open(tmp_path / "killed.log", "w") as log_file:
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True)
        members: dict[int, str] = {}
        deadline = time.monotonic() + 300
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                names = _names(tokenized)
                complete = [n for n in names if n.startswith("shard-")]
                if complete and (len(complete) >= 4 or any(n.startswith(".tmp-") for n in names)):
                    members = _group(proc.pid)
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.001)
        finally:
            if proc.poll() is None and not members:  # timed out, or the test failed
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    output = (tmp_path / "killed.log").read_text()
    assert members, f"the run ended (status {proc.returncode}) before a shard was seen:\n" \
                    f"{output[-3000:]}"
    assert proc.returncode == -signal.SIGKILL, output[-3000:]
    # the workers were running and died with the main process (no orphan tokenizes on)
    assert len(members) >= 3, members  # main process and two workers, at least
    for _ in range(500):
        alive = {pid: s for pid, s in _group(proc.pid).items() if s not in "ZX"}
        if not alive:
            break
        time.sleep(0.02)
    assert not alive, f"processes of the killed run still alive: {alive}"

    # 2. the cache is partial: its plan and at least one complete shard, no manifest; often a
    # torn shard too (a .tmp-* folder without its meta.json)
    folders = [p for p in tokenized.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    folder = folders[0]
    if (folder / "manifest.json").exists():
        pytest.skip("the build finished before the kill landed; nothing was interrupted")
    kept = _complete_shards(folder)
    left = sorted(os.listdir(folder))
    assert kept and "plan.json" in left, left
    assert len(kept) == sum(n.startswith("shard-") for n in left), left  # none half-renamed
    assert not (run_dir / "checkpoints").exists()  # killed before training began

    # 3. the same command resumes: the complete shards are kept (not written again), the rest
    # is tokenized and the run trains
    resumed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    match = RESUMING.search(output)
    assert match, f"no resume message in the second run's output:\n{output[-3000:]}"
    assert int(match.group(1)) == len(kept), (match.group(0), sorted(kept))
    after = _complete_shards(folder)
    assert {name: after.get(name) for name in kept} == kept, "a complete shard was rewritten"
    assert len(after) > len(kept)  # the kill left work to do
    assert not list(folder.glob(".tmp-*")), left  # the torn shard, if any, was swept
    assert "`max_steps=1` reached" in output, output[-3000:]
    assert (run_dir / "checkpoints" / "last.ckpt").exists()

    # 4. an uninterrupted run of the same command into another cache folder writes the same
    # files, byte for byte: the shards, plan.json, manifest.json and the packed block indexes.
    # Nothing is left out of the comparison: the cache holds no timestamps, paths or logs
    # (the logs and checkpoints are in the run folders, which are not compared), and no
    # .tmp-* folder of the killed run may survive the resume.
    whole_cache = tmp_path / "whole-cache"
    whole = subprocess.run(_command(corpus_file, tokenizer_dir, whole_cache, tmp_path / "whole"),
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, (whole.stdout + whole.stderr)[-3000:]
    assert not RESUMING.search(whole.stderr)
    names = _tree(cache)
    assert names == _tree(whole_cache)
    assert any(name.endswith("manifest.json") for name in names)
    different = [n for n in names if not filecmp.cmp(cache / n, whole_cache / n, shallow=False)]
    assert not different, different
