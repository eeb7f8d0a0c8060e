"""Bundled WordNet 3.0 sample corpus, shipped with plmkit so every recipe runs offline.

Files next to this module (see ``README.md`` here for counts and ``LICENSE`` for the WordNet
licence; rebuild with ``python scripts/build_wordnet_corpus.py``):

* ``corpus.txt.gz``  -- pretraining text, one sentence per line, one blank line between documents
* ``eval.jsonl.gz``  -- held-out "gloss -> lexicographer category" task with train/validation/test
* ``lexicon.tsv.gz`` -- multi-word phrases/entities with their kind (person/location/group/phrase)

Only the standard library is imported here.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

__all__ = [
    "LEXICON_KINDS",
    "SPLITS",
    "corpus_path",
    "eval_path",
    "lexicon_path",
    "load_eval",
    "load_lexicon",
]

SPLITS: tuple[str, ...] = ("train", "validation", "test")
LEXICON_KINDS: tuple[str, ...] = ("person", "location", "group", "phrase")

_HERE = Path(__file__).resolve().parent


def corpus_path() -> Path:
    """Path of ``corpus.txt.gz`` (gzip, UTF-8, one sentence per line, blank line between docs)."""
    return _HERE / "corpus.txt.gz"


def eval_path() -> Path:
    """Path of ``eval.jsonl.gz`` (gzip JSON lines with ``text``, ``label``, ``split``, ``id``)."""
    return _HERE / "eval.jsonl.gz"


def lexicon_path() -> Path:
    """Path of ``lexicon.tsv.gz`` (gzip, ``phrase<TAB>kind`` per line, sorted)."""
    return _HERE / "lexicon.tsv.gz"


def load_eval(split: str) -> list[dict]:
    """Eval records of one split (``"train"``, ``"validation"`` or ``"test"``), in file order.

    Each record is ``{"text": str, "label": str, "split": str, "id": str}``; ``label`` is a
    WordNet lexicographer file name such as ``"noun.animal"`` or ``"verb.motion"``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    with gzip.open(eval_path(), "rt", encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    return [r for r in records if r["split"] == split]


def load_lexicon() -> list[tuple[str, str]]:
    """All ``(phrase, kind)`` lexicon entries, sorted by phrase; kind is in ``LEXICON_KINDS``."""
    entries: list[tuple[str, str]] = []
    with gzip.open(lexicon_path(), "rt", encoding="utf-8") as handle:
        for line in handle:
            row = line.rstrip("\n")
            if row:
                phrase, kind = row.split("\t")
                entries.append((phrase, kind))
    return entries
