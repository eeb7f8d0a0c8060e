"""Corpus readers: local text, jsonl, parquet (files, folders, globs) or a saved `datasets` set.

Documents are *streamed*: :func:`read_documents` yields one ``(text, entity spans)`` pair at a
time and never holds the corpus, or even its list of files, in memory, so a corpus of any size
that fits on disk can be read (millions of small files under a glob included). A ``.txt``
document is a blank-line-separated block (each line a sentence) or, with
``line_per_document``, a single line. Undecodable bytes are replaced and counted in a warning;
a file that is binary (not text) is a one-line error naming it.

Files are opened with ``fsspec`` (compression inferred from the suffix), which is the
extension point for object stores: an ``s3://`` or ``gs://`` reader would plug in there, but
only local files are resolved and tested. Hand-written rather than ``datasets`` streaming
because that needs the whole file list in memory and has a large per-file cost.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import fsspec

from plmkit.errors import PlmkitError

log = logging.getLogger("plmkit")

BUNDLED = "bundled"
TEXT_SUFFIXES = {".txt", ".text"}
JSON_SUFFIXES = {".jsonl", ".json"}
PARQUET_SUFFIXES = {".parquet"}
COMPRESSION = {".gz", ".bz2", ".xz", ".zst"}
_MAGIC = re.compile(r"[*?[]")

#: A document: its stripped text and, with an entity field, its ``[start, end)`` spans.
Document = tuple[str, list[list[int]] | None]


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


def _walk(folder: Path) -> Iterator[Path]:
    """Every file under ``folder``, depth first, sorted within each directory (lazily: only
    one directory's entries are in memory at a time)."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=True):
            yield from _walk(Path(entry.path))
        elif entry.is_file(follow_symlinks=True):
            yield Path(entry.path)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob (``*``, ``?``, ``[...]``, ``**`` across folders) as a regex on whole paths.
    By hand: Python 3.11 has no ``glob.translate``, and ``glob.iglob`` is not sorted."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1:]:
            end = pattern.index("]", i + 1)
            out.append("[" + pattern[i + 1:end].replace("!", "^", 1) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _glob(pattern: str) -> Iterator[Path]:
    """Files matching ``pattern``, sorted, found by walking its longest literal folder."""
    pattern = os.path.abspath(os.path.expanduser(pattern))
    parts = pattern.split(os.sep)
    literal = next(i for i, part in enumerate(parts) if _MAGIC.search(part))
    base = os.sep.join(parts[:literal]) or os.sep
    regex = _glob_regex(pattern)
    return (p for p in _walk(Path(base)) if regex.match(str(p)))


@dataclass(frozen=True)
class CorpusSource:
    """A resolved ``--data.corpus``: its kind (text/json/parquet/saved) and its specs."""

    kind: str
    specs: tuple[str, ...]

    def files(self) -> Iterator[Path]:
        """The corpus files, in a fixed order, one at a time; a file of another kind is a
        PlmkitError naming it."""
        for item in self.specs:
            if item == BUNDLED:
                yield bundled_corpus()
                continue
            path = Path(item).expanduser()
            if self.kind == "saved":
                yield path
            elif path.is_file():
                yield self._checked(path)
            else:
                found = _walk(path) if path.is_dir() else _glob(item)
                for file in found:
                    if _kind(file) is not None or not path.is_dir():
                        yield self._checked(file)

    def _checked(self, path: Path) -> Path:
        kind = _kind(path)
        if kind is None:
            raise PlmkitError(
                f"cannot read corpus file {path}: use .txt, .jsonl or .parquet (optionally .gz)"
            )
        if kind != self.kind:
            raise PlmkitError(
                f"corpus mixes file types ({self.kind} and {kind}, e.g. {path}); "
                "pass one type at a time"
            )
        return path


def resolve_corpus(spec: str | list[str]) -> CorpusSource:
    """Check a corpus spec and find its kind without listing it.

    ``spec`` is ``"bundled"``, a file, a folder, a glob, or a list of those. A folder holding
    ``dataset_info.json`` is a dataset saved with ``Dataset.save_to_disk``.
    """
    specs = [spec] if isinstance(spec, str) else list(spec)
    if not specs:
        raise PlmkitError("no corpus given: pass --data.corpus PATH (a file, folder or glob)")
    kind = None
    for item in specs:
        path = Path(item).expanduser()
        if item == BUNDLED:
            first: Path | None = bundled_corpus()
        elif path.is_dir() and (path / "dataset_info.json").exists():
            if len(specs) > 1:
                raise PlmkitError(f"{item} is a saved dataset: pass it alone as --data.corpus")
            return CorpusSource("saved", (item,))
        elif path.is_dir():
            first = next((p for p in _walk(path) if _kind(p)), None)
            if first is None:
                raise PlmkitError(
                    f"corpus folder {item} holds no .txt, .jsonl or .parquet file; "
                    "point --data.corpus at the files"
                )
        elif path.is_file():
            first = path
            if len(specs) == 1 and path.stat().st_size == 0:
                raise PlmkitError(f"corpus {item} is empty; point --data.corpus at files "
                                  "with text")
        else:
            first = next(_glob(item), None) if _MAGIC.search(item) else None
            if first is None:
                raise PlmkitError(
                    f"corpus path {item} does not exist (no file, folder or glob match); "
                    "check --data.corpus"
                )
        found = _kind(first)
        if found is None:
            raise PlmkitError(
                f"cannot read corpus file {first}: use .txt, .jsonl or .parquet (optionally .gz)"
            )
        if kind is not None and found != kind:
            raise PlmkitError(f"corpus mixes file types ({kind} and {found}); "
                              "pass one type at a time")
        kind = found
    return CorpusSource(kind, tuple(specs))  # type: ignore[arg-type]


def fingerprint(source: CorpusSource, **settings: object) -> str:
    """A cache key from the files' paths, sizes and modification times and the settings."""
    digest = hashlib.sha256(source.kind.encode())
    files = source.files()
    if source.kind == "saved":
        files = (p for p in _walk(Path(source.specs[0])))
    for path in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    for key in sorted(settings):
        digest.update(f"{key}={settings[key]!r}".encode())
    return digest.hexdigest()[:16]


def corpus_size(source: CorpusSource) -> tuple[int, bool]:
    """Bytes of the corpus files on disk, and whether that is the size of its text (plain,
    uncompressed text files)."""
    files = _walk(Path(source.specs[0])) if source.kind == "saved" else source.files()
    total, plain = 0, source.kind == "text"
    for path in files:
        plain = plain and not set(path.suffixes) & COMPRESSION
        total += path.stat().st_size
    return total, plain


# ------------------------------------------------------------------------------- reading
def _span_offsets(span: object) -> tuple[int, int]:
    """``[start, end, ...]`` or ``{"start": .., "end": ..}`` -> ``(start, end)``."""
    if isinstance(span, dict) and "start" in span and "end" in span:
        return int(span["start"]), int(span["end"])
    if isinstance(span, (list, tuple)) and len(span) >= 2:
        return int(span[0]), int(span[1])
    raise PlmkitError(
        f"an entity span must be [start, end] or {{'start': .., 'end': ..}}, got {span!r}; "
        "fix the corpus's --data.entity_field"
    )


def _document(text: object, spans: object, with_spans: bool) -> Document | None:
    """The stripped document (spans shifted with its leading whitespace); None if empty."""
    raw = text if isinstance(text, str) else ""
    stripped = raw.strip()
    if not stripped:
        return None
    if not with_spans:
        return stripped, None
    if spans is not None and not isinstance(spans, (list, tuple)):
        raise PlmkitError(f"a document's entity spans must be a list of spans, got {spans!r}; "
                          "fix the corpus's --data.entity_field")
    shift = len(raw) - len(raw.lstrip())
    return stripped, [[a - shift, b - shift] for a, b in map(_span_offsets, spans or [])]


#: characters read at a time from a text file (then completed to a whole line)
READ_BLOCK = 1 << 22


class _Replaced:
    """Counts U+FFFD (undecodable bytes) over a whole read, for one warning at the end."""

    def __init__(self) -> None:
        self.count = 0


def _text_blocks(path: Path, replaced: _Replaced) -> Iterator[str]:
    """The text of a file in blocks of whole lines (about 4 MB each: splitting a block costs
    far less than handling each line in Python); a binary file is a PlmkitError naming it."""
    with fsspec.open(str(path), "rb", compression="infer") as raw:
        stream = io.TextIOWrapper(raw, encoding="utf-8", errors="replace")
        head = stream.read(min(65536, READ_BLOCK))
        if "\x00" in head or head.count("\ufffd") > 0.1 * max(len(head), 1):
            raise PlmkitError(f"corpus file {path} is not text (binary data); remove it from "
                              "--data.corpus or convert it to UTF-8 text")
        block = head
        while block:
            if not block.endswith("\n"):
                block += stream.readline()
            replaced.count += block.count("\ufffd")
            yield block
            block = stream.read(READ_BLOCK)


def _text_documents(path: Path, line_per_document: bool, replaced: _Replaced
                    ) -> Iterator[Document]:
    if line_per_document:
        for block in _text_blocks(path, replaced):
            for line in block.split("\n"):
                if line.strip():
                    yield line.strip(), None
        return
    rest = ""  # the text after the last empty line, continued by the next block
    for block in _text_blocks(path, replaced):
        paragraphs = (rest + block).split("\n\n")  # paragraphs are separated by an empty line
        rest = paragraphs.pop()
        for paragraph in paragraphs:
            if doc := _document(paragraph, None, False):
                yield doc
    if doc := _document(rest, None, False):
        yield doc


def _missing_field(field: str, found: list[str], path: object, option: str) -> PlmkitError:
    return PlmkitError(f"corpus {path} has no '{field}' field (it has: {', '.join(found)}); "
                       f"set {option}")


def _json_documents(path: Path, text_field: str, entity_field: str | None
                    ) -> Iterator[Document]:
    with fsspec.open(str(path), "rt", compression="infer", encoding="utf-8",
                     errors="replace") as stream:
        first = stream.read(1)
        while first.isspace():
            first = stream.read(1)
        if first == "[":  # a .json array, read whole
            rows = json.loads(first + stream.read())
        else:
            rows = (json.loads(line) for line in _prefixed(first, stream) if line.strip())
        try:
            for number, row in enumerate(rows, 1):
                if not isinstance(row, dict):
                    raise PlmkitError(f"corpus file {path}: record {number} is not an object")
                if text_field not in row:
                    raise _missing_field(text_field, list(row), path, "--data.text_field")
                if entity_field is not None and entity_field not in row:
                    raise _missing_field(entity_field, list(row), path, "--data.entity_field")
                doc = _document(row[text_field], row.get(entity_field or ""),
                                entity_field is not None)
                if doc:
                    yield doc
        except json.JSONDecodeError as exc:
            raise PlmkitError(f"corpus file {path} is not JSON lines ({exc.msg}, line "
                              f"{number + 1}); fix or remove it") from exc


def _prefixed(first: str, stream: io.TextIOBase) -> Iterator[str]:
    head = first + stream.readline()
    yield head
    yield from stream


def _table_documents(batches: Iterator, path: object, columns: list[str], text_field: str,
                     entity_field: str | None) -> Iterator[Document]:
    for batch in batches:
        names = batch.schema.names if hasattr(batch, "schema") else list(batch)
        for field, option in ((text_field, "--data.text_field"),
                              (entity_field, "--data.entity_field")):
            if field is not None and field not in names:
                raise _missing_field(field, columns, path, option)
        texts = batch[text_field]
        texts = texts.to_pylist() if hasattr(texts, "to_pylist") else texts
        spans = [None] * len(texts)
        if entity_field is not None:
            spans = batch[entity_field]
            spans = spans.to_pylist() if hasattr(spans, "to_pylist") else spans
        for text, span in zip(texts, spans):
            if doc := _document(text, span, entity_field is not None):
                yield doc


def _parquet_documents(path: Path, text_field: str, entity_field: str | None
                       ) -> Iterator[Document]:
    import pyarrow.parquet as pq

    with fsspec.open(str(path), "rb") as raw:
        try:
            parquet = pq.ParquetFile(raw)
        except Exception as exc:
            raise PlmkitError(f"corpus file {path} is not a parquet file "
                              f"({type(exc).__name__}); fix or remove it") from exc
        names = parquet.schema_arrow.names
        wanted = [c for c in (text_field, entity_field) if c is not None and c in names]
        yield from _table_documents(parquet.iter_batches(1024, columns=wanted or None),
                                    path, names, text_field, entity_field)


def _saved_documents(path: Path, text_field: str, entity_field: str | None
                     ) -> Iterator[Document]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    names = ds.column_names
    for field, option in ((text_field, "--data.text_field"),
                          (entity_field, "--data.entity_field")):
        if field is not None and field not in names:
            raise _missing_field(field, names, path, option)
    wanted = [c for c in (text_field, entity_field) if c is not None]
    yield from _table_documents(ds.select_columns(wanted).iter(batch_size=1024), path, names,
                                text_field, entity_field)


def read_documents(
    spec: str | list[str] | CorpusSource,
    text_field: str = "text",
    line_per_document: bool = False,
    entity_field: str | None = None,
) -> Iterator[Document]:
    """Every non-empty document of the corpus, stripped, in a fixed order, one at a time.

    With ``entity_field`` (.jsonl / .parquet / saved datasets), that field's precomputed spans
    come with each document: ``[start, end)`` character offsets into its (stripped) text
    (extra items per span, e.g. a label, are ignored). An unreadable file is a PlmkitError.
    """
    source = spec if isinstance(spec, CorpusSource) else resolve_corpus(spec)
    if entity_field is not None and source.kind == "text":
        raise PlmkitError("--data.entity_field needs a .jsonl, .parquet or saved-dataset corpus")
    replaced = _Replaced()
    for path in source.files():
        try:
            if source.kind == "text":
                yield from _text_documents(path, line_per_document, replaced)
            elif source.kind == "json":
                yield from _json_documents(path, text_field, entity_field)
            elif source.kind == "parquet":
                yield from _parquet_documents(path, text_field, entity_field)
            else:
                yield from _saved_documents(path, text_field, entity_field)
        except FileNotFoundError as exc:
            raise PlmkitError(f"corpus file {path} vanished while it was read; "
                              "restore it or change --data.corpus") from exc
        except (OSError, EOFError) as exc:
            raise PlmkitError(f"could not read corpus file {path} ({type(exc).__name__}: "
                              f"{exc}); fix or remove it") from exc
    if replaced.count:
        log.warning(
            "corpus: %d undecodable byte sequence(s) were replaced by U+FFFD; "
            "re-encode the files as UTF-8 to keep them",
            replaced.count,
        )


def load_documents(
    spec: str | list[str],
    text_field: str = "text",
    line_per_document: bool = False,
    entity_field: str | None = None,
    max_documents: int | None = None,
) -> list[Document]:
    """:func:`read_documents` collected in a list (small corpora, tests); an empty corpus is a
    PlmkitError."""
    docs = []
    for doc in read_documents(spec, text_field, line_per_document, entity_field):
        if max_documents is not None and len(docs) >= max_documents:
            break
        docs.append(doc)
    if not docs:
        raise PlmkitError(f"corpus {spec} is empty (no non-blank text); "
                          "point --data.corpus at files with text")
    return docs
