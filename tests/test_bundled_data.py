"""Tests for the bundled WordNet 3.0 sample corpus in ``plmkit/data/wordnet``."""

from __future__ import annotations

import gzip
import importlib.util
import subprocess
import sys
from collections import Counter
from itertools import pairwise
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
try:
    from plmkit.data import wordnet
except ImportError:  # plmkit not installed: use the checkout
    sys.path.insert(0, str(ROOT))
    from plmkit.data import wordnet

BUILD_SCRIPT = ROOT / "scripts" / "build_wordnet_corpus.py"
WORDNET_DIR = Path("/usr/share/wordnet")
HAVE_WORDNET = all((WORDNET_DIR / f"data.{p}").is_file() for p in ("noun", "verb", "adj", "adv"))
needs_wordnet = pytest.mark.skipif(not HAVE_WORDNET, reason="WordNet data files not installed")


@pytest.fixture(scope="module")
def corpus_lines() -> list[str]:
    """All lines of corpus.txt.gz, blank document separators included."""
    with gzip.open(wordnet.corpus_path(), "rt", encoding="utf-8") as handle:
        return handle.read().split("\n")


@pytest.fixture(scope="module")
def documents(corpus_lines: list[str]) -> list[list[str]]:
    """The corpus split into documents (lists of sentences)."""
    text = "\n".join(corpus_lines).rstrip("\n")
    return [doc.split("\n") for doc in text.split("\n\n")]


@pytest.fixture(scope="module")
def corpus_set(corpus_lines: list[str]) -> set[str]:
    """The set of non-empty corpus lines."""
    return {line for line in corpus_lines if line}


@pytest.fixture(scope="module")
def eval_records() -> dict[str, list[dict]]:
    """Eval records by split."""
    return {split: wordnet.load_eval(split) for split in wordnet.SPLITS}


def load_build_module() -> ModuleType:
    """Import scripts/build_wordnet_corpus.py as a module."""
    spec = importlib.util.spec_from_file_location("build_wordnet_corpus", BUILD_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses needs the module registered
    spec.loader.exec_module(module)
    return module


def test_files_exist() -> None:
    for path in (wordnet.corpus_path(), wordnet.eval_path(), wordnet.lexicon_path()):
        assert isinstance(path, Path)
        assert path.is_file() and path.stat().st_size > 0
    assert (wordnet.corpus_path().parent / "README.md").is_file()


def test_corpus_size_and_documents(corpus_lines: list[str], documents: list[list[str]]) -> None:
    sentences = [line for line in corpus_lines if line]
    assert len(sentences) > 100_000
    assert corpus_lines[0] != "" and corpus_lines[-1] == ""  # ends with a newline
    assert corpus_lines[-2] != ""  # no trailing blank line
    # documents separated by exactly one blank line: never two blank lines in a row
    assert all(a or b for a, b in pairwise(corpus_lines[:-1]))
    assert all(doc and all(doc) for doc in documents)
    assert sum(len(doc) for doc in documents) == len(sentences)
    assert len(documents) > 5_000
    multi = sum(len(doc) >= 3 for doc in documents)
    assert multi / len(documents) > 0.8
    assert sum(len(doc) for doc in documents) / len(documents) > 5
    assert all(s == s.strip() and "  " not in s and "\t" not in s for s in sentences)


def test_eval_splits_and_labels(eval_records: dict[str, list[dict]]) -> None:
    labels: set[str] = set()
    ids: set[str] = set()
    for split, records in eval_records.items():
        assert records, f"empty split {split}"
        for record in records:
            assert set(record) == {"text", "label", "split", "id"}
            assert record["split"] == split
            assert record["text"].strip()
            assert record["label"].startswith(("noun.", "verb."))
            assert record["id"][:2] in ("n:", "v:") and len(record["id"]) == 10
            assert record["id"][0] == record["label"][0]
            labels.add(record["label"])
            ids.add(record["id"])
    total = sum(len(r) for r in eval_records.values())
    assert len(ids) == total
    assert len(eval_records["train"]) > len(eval_records["test"]) > len(eval_records["validation"])
    assert len(labels) > 20
    per_label = Counter(r["label"] for rs in eval_records.values() for r in rs)
    assert min(per_label.values()) >= 20
    with pytest.raises(ValueError):
        wordnet.load_eval("dev")


def test_eval_text_not_in_corpus(eval_records: dict[str, list[dict]], corpus_set: set[str]) -> None:
    leaked = [r["text"] for rs in eval_records.values() for r in rs if r["text"] in corpus_set]
    assert not leaked, leaked[:5]


def test_lexicon() -> None:
    entries = wordnet.load_lexicon()
    assert len(entries) > 10_000
    assert entries == sorted(entries)
    phrases = [p for p, _ in entries]
    assert len(set(phrases)) == len(phrases)
    assert {k for _, k in entries} == set(wordnet.LEXICON_KINDS)
    assert all(len(p.split(" ")) >= 2 and "_" not in p for p in phrases)
    assert not any(p.endswith(("(a)", "(p)", "(ip)")) for p in phrases)
    lexicon = dict(entries)
    assert lexicon["New York"] == "location"
    assert lexicon["Abraham Lincoln"] == "person"
    assert lexicon["United Nations"] == "group"
    assert lexicon["kick the bucket"] == "phrase"


def test_license() -> None:
    text = (wordnet.corpus_path().parent / "LICENSE").read_text(encoding="utf-8")
    assert "Princeton University" in text
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in text
    assert "scripts/build_wordnet_corpus.py" in text


@needs_wordnet
def test_held_out_examples_not_in_corpus(corpus_set: set[str]) -> None:
    build = load_build_module()
    synsets = build.read_synsets(WORDNET_DIR)
    held_out = [s for s in synsets if build.is_held_out(s)]
    assert 0.07 < len(held_out) / sum(s.pos in "nv" for s in synsets) < 0.09
    leaked = [t for s in held_out for t in s.sentences() if t in corpus_set]
    assert not leaked, leaked[:5]


@needs_wordnet
def test_rebuild_is_byte_identical(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), "--wordnet-dir", str(WORDNET_DIR), "--out", tmp_path],
        check=True,
        capture_output=True,
        timeout=60,
    )
    for name in ("corpus.txt.gz", "eval.jsonl.gz", "lexicon.tsv.gz", "LICENSE", "README.md"):
        bundled = wordnet.corpus_path().parent / name
        assert (tmp_path / name).read_bytes() == bundled.read_bytes(), name
