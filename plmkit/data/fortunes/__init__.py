"""Bundled fortune-cookie classification task: fortune text -> the fortune file it comes from.

A second downstream task for ``plmkit evaluate --task fortunes``, beside the WordNet gloss task.
It is held out of everything: no recipe or default was tuned on it, and none of its texts is in
any pretraining corpus (the build drops the few entries that share a 7-word line with the
bundled WordNet corpus). 8 classes, one per BSD fortune file: ``computers``, ``definitions``,
``people``, ``politics``, ``science``, ``songs-poems``, ``work``, ``men-women``; about 6.6k
entries split 60/10/30 per class into train/validation/test.

Source: the Debian package ``fortunes`` (bookworm, version ``1:1.99.1-7.3``, source package
``fortune-mod``), i.e. the fortune databases of upstream fortune-mod 1.99.1, under the BSD
licence of the University of California (``LICENSE`` here). ``README.md`` here gives the
cleaning rules, the counts and the source-file checksums; rebuild the file with
``python scripts/build_fortunes_task.py``.

Only the standard library is imported here.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

__all__ = ["LABELS", "SPLITS", "load_task", "task_path"]

SPLITS: tuple[str, ...] = ("train", "validation", "test")
LABELS: tuple[str, ...] = (
    "computers",
    "definitions",
    "people",
    "politics",
    "science",
    "songs-poems",
    "work",
    "men-women",
)

_HERE = Path(__file__).resolve().parent


def task_path() -> Path:
    """Path of ``task.jsonl.gz`` (gzip JSON lines with ``text``, ``label``, ``split``, ``id``)."""
    return _HERE / "task.jsonl.gz"


def load_task(split: str) -> list[dict]:
    """Records of one split (``"train"``, ``"validation"`` or ``"test"``), in file order.

    Each record is ``{"text": str, "label": str, "split": str, "id": str}``; ``label`` is one of
    ``LABELS`` and ``id`` is ``"<label>:<n>"``, the entry's 1-based position in its fortune
    file. Texts may hold line breaks.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    with gzip.open(task_path(), "rt", encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    return [r for r in records if r["split"] == split]
