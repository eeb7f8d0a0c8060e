"""Corpus readers: local text, jsonl, parquet (files, folders, globs) or a saved `datasets` set.

Everything is read with Hugging Face ``datasets`` into one ``text`` column, one row per
document. A ``.txt`` document is a blank-line-separated block (each line a sentence) or, with
``line_per_document``, a single line. Undecodable bytes are replaced, never fatal, and counted
in a warning.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
from pathlib import Path

import datasets

from plmkit.errors import PlmkitError

log = logging.getLogger("plmkit")

BUNDLED = "bundled"
TEXT_SUFFIXES = {".txt", ".text"}
JSON_SUFFIXES = {".jsonl", ".json"}
PARQUET_SUFFIXES = {".parquet"}
COMPRESSION = {".gz", ".bz2", ".xz", ".zst"}
KNOWN = TEXT_SUFFIXES | JSON_SUFFIXES | PARQUET_SUFFIXES


def _kind(path: Path) -> str | None:
    suffixes = [s for s in path.suffixes if s not in COMPRESSION]
    suffix = suffixes[-1] if suffixes else ""
    if suffix in TEXT_SUFFIXES:
        return "text"
    if suffix in JSON_SUFFIXES:
        return "json"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    return None


def bundled_corpus() -> Path:
    """The WordNet 3.0 gloss corpus shipped with plmkit."""
    from plmkit.data.wordnet import corpus_path

    return corpus_path()


def resolve_corpus(spec: str | list[str]) -> tuple[str, list[Path]]:
    """Turn a corpus spec into ``(kind, files)``; kind is text/json/parquet/saved.

    ``spec`` is ``"bundled"``, a file, a folder, a glob, or a list of those. A folder holding
    ``dataset_info.json`` is a dataset saved with ``Dataset.save_to_disk``.
    """
    specs = [spec] if isinstance(spec, str) else list(spec)
    if not specs:
        raise PlmkitError("no corpus given: pass --data.corpus PATH (a file, folder or glob)")
    files: list[Path] = []
    for item in specs:
        if item == BUNDLED:
            files.append(bundled_corpus())
            continue
        path = Path(item).expanduser()
        if path.is_dir() and (path / "dataset_info.json").exists():
            if len(specs) > 1:
                raise PlmkitError(f"{item} is a saved dataset: pass it alone as --data.corpus")
            return "saved", [path]
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _kind(p))
            if not found:
                raise PlmkitError(
                    f"corpus folder {item} holds no .txt, .jsonl or .parquet file; "
                    "point --data.corpus at the files"
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(item), recursive=True))
            matches = [p for p in matches if p.is_file()]
            if not matches:
                raise PlmkitError(
                    f"corpus path {item} does not exist (no file, folder or glob match); "
                    "check --data.corpus"
                )
            files.extend(matches)
    if all(p.stat().st_size == 0 for p in files):
        raise PlmkitError(
            f"corpus {', '.join(str(p) for p in files[:3])} is empty; "
            "point --data.corpus at files with text"
        )
    kinds = {_kind(p) for p in files}
    if None in kinds:
        bad = next(p for p in files if _kind(p) is None)
        raise PlmkitError(
            f"cannot read corpus file {bad}: use .txt, .jsonl or .parquet (optionally .gz)"
        )
    if len(kinds) > 1:
        raise PlmkitError(
            f"corpus mixes file types ({', '.join(sorted(k for k in kinds if k))}); "
            "pass one type at a time"
        )
    return kinds.pop(), files  # type: ignore[return-value]


def fingerprint(kind: str, files: list[Path], **settings: object) -> str:
    """A cache key from the files' paths, sizes and modification times and the settings."""
    digest = hashlib.sha256(kind.encode())
    targets = files
    if kind == "saved":
        targets = sorted(p for p in files[0].rglob("*") if p.is_file())
    for path in targets:
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    for key in sorted(settings):
        digest.update(f"{key}={settings[key]!r}".encode())
    return digest.hexdigest()[:16]


def _span_offsets(span: object) -> tuple[int, int]:
    """``[start, end, ...]`` or ``{"start": .., "end": ..}`` -> ``(start, end)``."""
    if isinstance(span, dict) and "start" in span and "end" in span:
        return int(span["start"]), int(span["end"])
    if isinstance(span, (list, tuple)) and len(span) >= 2:
        return int(span[0]), int(span[1])
    raise ValueError(
        f"an entity span must be [start, end] or {{'start': .., 'end': ..}}, got {span!r}"
    )


def _span_list(spans: object) -> list:
    """A document's spans: a list (None: no spans)."""
    if spans is None:
        return []
    if not isinstance(spans, (list, tuple)):
        raise ValueError(f"a document's entity spans must be a list of spans, got {spans!r}")
    return list(spans)


def _strip(batch: dict[str, list]) -> dict[str, list]:
    texts = [t or "" for t in batch["text"]]
    out: dict[str, list] = {"text": [t.strip() for t in texts]}
    if "entities" in batch:
        # character offsets follow the text when its leading whitespace is stripped
        shifts = [len(t) - len(t.lstrip()) for t in texts]
        out["entities"] = [
            [[a - shift, b - shift] for a, b in map(_span_offsets, _span_list(spans))]
            for spans, shift in zip(batch["entities"], shifts)
        ]
    return out


def _non_empty(batch: dict[str, list]) -> list[bool]:
    return [bool(t) for t in batch["text"]]


def load_documents(
    spec: str | list[str],
    text_field: str = "text",
    line_per_document: bool = False,
    cache_dir: str | Path | None = None,
    entity_field: str | None = None,
) -> datasets.Dataset:
    """Read the corpus into a Dataset with one ``text`` column, one row per document.

    With ``entity_field`` (.jsonl / .parquet / saved datasets), that field's precomputed spans
    are kept as an ``entities`` column: a list of ``[start, end)`` character offsets into the
    document's text (extra items per span, e.g. a label, are ignored).
    Empty documents are dropped; an empty corpus is a PlmkitError.
    """
    kind, files = resolve_corpus(spec)
    datasets.disable_progress_bars()
    data_files = [str(p) for p in files]
    cache = str(cache_dir) if cache_dir else None
    try:
        if kind == "saved":
            ds = datasets.load_from_disk(data_files[0])
            if isinstance(ds, datasets.DatasetDict):
                ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        elif kind == "text":
            ds = datasets.load_dataset(
                "text",
                data_files=data_files,
                split="train",
                sample_by="line" if line_per_document else "paragraph",
                keep_linebreaks=True,
                encoding_errors="replace",
                cache_dir=cache,
            )
        else:
            ds = datasets.load_dataset(kind, data_files=data_files, split="train", cache_dir=cache)
    except PlmkitError:
        raise
    except Exception as exc:
        raise PlmkitError(
            f"could not read corpus {', '.join(data_files[:3])}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}; check the files' format"
        ) from exc
    finally:
        datasets.enable_progress_bars()
    if text_field not in ds.column_names:
        raise PlmkitError(
            f"corpus has no '{text_field}' field (it has: {', '.join(ds.column_names)}); "
            "set --data.text_field"
        )
    if text_field != "text":
        ds = ds.rename_column(text_field, "text")
    columns = ["text"]
    if entity_field is not None:
        if entity_field not in ds.column_names:
            raise PlmkitError(
                f"corpus has no '{entity_field}' field for entity spans (it has: "
                f"{', '.join(ds.column_names)}); set --data.entity_field or leave it unset"
            )
        if entity_field != "entities":
            if "entities" in ds.column_names:
                ds = ds.remove_columns("entities")
            ds = ds.rename_column(entity_field, "entities")
        columns.append("entities")
    ds = ds.select_columns(columns)
    datasets.disable_progress_bars()
    try:
        ds = ds.map(_strip, batched=True).filter(_non_empty, batched=True)
    except ValueError as exc:
        raise PlmkitError(f"corpus field '{entity_field}': {exc}") from exc
    finally:
        datasets.enable_progress_bars()
    if len(ds) == 0:
        raise PlmkitError(
            f"corpus {', '.join(data_files[:3])} is empty (no non-blank text); "
            "point --data.corpus at files with text"
        )
    replaced = sum(t.count("\ufffd") for t in ds["text"]) if kind == "text" else 0
    if replaced:
        log.warning(
            "corpus: %d undecodable byte sequence(s) were replaced by U+FFFD; "
            "re-encode the files as UTF-8 to keep them",
            replaced,
        )
    return ds
