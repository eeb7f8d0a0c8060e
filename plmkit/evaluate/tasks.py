"""Downstream tasks: labelled text-classification data for ``plmkit evaluate``.

A task is a built-in name (``wordnet``: gloss -> lexicographer category, held out of the
bundled corpus; ``fortunes``: fortune cookie -> its BSD fortune file, held out of all tuning)
or a ``.csv`` / ``.tsv`` / ``.jsonl`` file (optionally ``.gz``) with text and label columns
and, optionally, a ``split`` column.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plmkit.errors import PlmkitError

log = logging.getLogger("plmkit")


@dataclass
class Task:
    """A labelled text-classification task: training and held-out examples, label names."""

    name: str
    labels: list[str]
    train: list[tuple[str, int]]
    eval: list[tuple[str, int]]
    eval_split: str


def _wordnet(split: str) -> list[dict]:
    from plmkit.data.wordnet import load_eval

    return load_eval(split)


def _fortunes(split: str) -> list[dict]:
    from plmkit.data.fortunes import load_task as load_fortunes

    return load_fortunes(split)


#: built-in tasks: name -> (description, loader(split) -> records with text/label)
BUILTIN_TASKS: dict[str, tuple[str, Callable[[str], list[dict]]]] = {
    "wordnet": (
        "WordNet gloss -> lexicographer category (37 classes, held out of the bundled corpus)",
        _wordnet,
    ),
    "fortunes": (
        "fortune cookie -> category file (8 classes, BSD fortune-mod, held out of all tuning)",
        _fortunes,
    ),
}


def _read_rows(path: Path) -> list[dict[str, Any]]:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    suffix = suffixes[-1] if suffixes else ""
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as handle:
            if suffix in (".csv", ".tsv"):
                return list(csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ","))
            if suffix in (".jsonl", ".json"):
                return [json.loads(line) for line in handle if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise PlmkitError(f"could not read task file {path}: {type(exc).__name__}: {exc}") from exc
    raise PlmkitError(f"task file {path} must be .csv, .tsv or .jsonl (optionally .gz)")


def _split_file(path: Path, eval_split: str, text_column: str, label_column: str,
                holdout: float, seed: int) -> tuple[list[dict], list[dict]]:
    """The training and held-out rows of a task file."""
    rows = _read_rows(path)
    if not rows:
        raise PlmkitError(f"task file {path} holds no rows; add text and label columns")
    columns = list(rows[0].keys())
    missing = [c for c in (text_column, label_column) if c not in columns]
    if missing:
        raise PlmkitError(
            f"task file {path} has no {' and no '.join(repr(c) for c in missing)} column "
            f"(it has: {', '.join(map(str, columns))}); name the columns text and label "
            "or pass --text-column / --label-column"
        )
    if "split" in columns:
        train_rows = [r for r in rows if r.get("split") == "train"]
        eval_rows = [r for r in rows if r.get("split") == eval_split]
        if not train_rows or not eval_rows:
            raise PlmkitError(
                f"task file {path} has a split column but no rows with split 'train' "
                f"and '{eval_split}'; fix the column or pass --split"
            )
        return train_rows, eval_rows
    if len(rows) < 2:
        raise PlmkitError(f"task file {path} needs at least 2 rows")
    random.Random(seed).shuffle(rows)
    cut = max(1, min(len(rows) - 1, round(len(rows) * (1 - holdout))))
    return rows[:cut], rows[cut:]


def load_task(
    name_or_path: str,
    eval_split: str = "test",
    text_column: str = "text",
    label_column: str = "label",
    holdout: float = 0.2,
    seed: int = 0,
) -> Task:
    """A built-in task by name, or a .csv / .tsv / .jsonl file with text and label columns.

    A file with a ``split`` column is split by it (``train`` and ``eval_split``); a file without
    one is shuffled with ``seed`` and its last ``holdout`` fraction is held out. Held-out
    examples whose label never occurs in training are dropped (with a warning).
    """
    path = Path(name_or_path).expanduser()
    if name_or_path in BUILTIN_TASKS:
        loader = BUILTIN_TASKS[name_or_path][1]
        try:
            train_rows, eval_rows = loader("train"), loader(eval_split)
        except ValueError as exc:
            raise PlmkitError(
                f"task {name_or_path}: {exc}; use --split validation or test"
            ) from exc
        name = name_or_path
    elif path.is_file():
        train_rows, eval_rows = _split_file(path, eval_split, text_column, label_column,
                                            holdout, seed)
        name = path.name
    else:
        close = difflib.get_close_matches(name_or_path, list(BUILTIN_TASKS), n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise PlmkitError(
            f"unknown task '{name_or_path}': {hint}pass a built-in task "
            f"({', '.join(BUILTIN_TASKS)}) or a .csv/.jsonl file with text and label columns"
        )
    labels = sorted({str(r[label_column]) for r in train_rows})
    if len(labels) < 2:
        raise PlmkitError(f"task {name} has fewer than 2 labels in its training split")
    index = {label: i for i, label in enumerate(labels)}

    def examples(rows: list[dict]) -> list[tuple[str, int]]:
        return [(str(r[text_column] or ""), index[str(r[label_column])]) for r in rows
                if str(r[label_column]) in index]

    train, held_out = examples(train_rows), examples(eval_rows)
    if len(held_out) < len(eval_rows):
        log.warning("task %s: %d held-out examples have labels unseen in training; dropped",
                    name, len(eval_rows) - len(held_out))
    if not held_out:
        raise PlmkitError(f"task {name}: no held-out example has a label seen in training")
    return Task(name, labels, train, held_out, eval_split)
