"""Build the bundled fortune-cookie classification task shipped in ``plmkit/data/fortunes``.

The task is "fortune text -> the BSD fortune file (category) it comes from", 8 classes. It is a
second downstream task, held out of everything the recipes were tuned on and of every
pretraining corpus: none of its texts occurs in the bundled WordNet corpus.

Source: the Debian package ``fortunes`` (bookworm, version ``1:1.99.1-7.3``, source package
``fortune-mod``, upstream fortune-mod 1.99.1, BSD licence). To get the files without installing
the package (no root needed)::

    apt-get download fortunes          # fortunes_1%3a1.99.1-7.3_all.deb
    dpkg-deb -x fortunes_1%3a1.99.1-7.3_all.deb /tmp/fx
    python scripts/build_fortunes_task.py /tmp/fx/usr/share/games/fortunes \\
        --license-source /tmp/fx/usr/share/doc/fortunes/copyright

(or, with the package installed, just ``python scripts/build_fortunes_task.py``). Only the
eight files named in ``CATEGORIES`` are read: not the ``.dat`` indexes, the ``.u8`` links,
the offensive ``off/`` folder nor ``ascii-art``.

Each entry (the text between two lines holding only ``%``) is cleaned: backspace overstriking
(``_\\bX`` underlining) is resolved as a terminal would show it, other control characters are
removed, text that was UTF-8 encoded twice is repaired, whitespace runs inside each line become
one space, lines are stripped, blank lines at the ends are dropped and blank-line runs inside
become one blank line (line breaks are kept; attribution lines such as ``-- Mark Twain`` are
kept as text). Entries shorter than 20 or longer than 1,000 characters are dropped, and so are
entries that contain a line of the bundled pretraining corpus of 7 words or more (WordNet
example sentences quote a few of the same proverbs and poems). Then duplicates are dropped,
compared on the text before the first attribution line, case-insensitively and with all
whitespace collapsed: the first copy is kept within a category, and a text found in two
categories is dropped from both.

Each category is split 60/10/30 into train/validation/test by sorting its entries on
``sha256(f"{SEED}:{text}")``, so the split does not depend on file order. Output, written
deterministically (same input -> byte-identical files, gzip mtime 0)::

    plmkit/data/fortunes/task.jsonl.gz   {"text", "label", "split", "id"} per line
    plmkit/data/fortunes/LICENSE         the BSD notice from the Debian copyright file
    plmkit/data/fortunes/README.md       source, counts, how to rebuild

``id`` is ``"<category>:<n>"``, ``n`` the 1-based position of the entry in its source file.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from build_wordnet_corpus import write_gzip_text  # a sibling script (scripts/ is on the path)

from plmkit.data.fortunes import LABELS as CATEGORIES
from plmkit.data.fortunes import SPLITS

SPLIT_FRACTIONS: tuple[float, ...] = (0.6, 0.1, 0.3)
SEED = "plmkit-fortunes-v1"
MIN_CHARS = 20
MAX_CHARS = 1000
MIN_SHARED_WORDS = 7  # an entry holding a corpus line of this many words or more is dropped

PACKAGE = "fortunes"
PACKAGE_VERSION = "1:1.99.1-7.3"
DEFAULT_FORTUNE_DIR = Path("/usr/share/games/fortunes")
DEFAULT_OUT = Path("plmkit/data/fortunes")
DEFAULT_LICENSE_SOURCE = Path("/usr/share/doc/fortunes/copyright")
DEFAULT_CORPUS = Path("plmkit/data/wordnet/corpus.txt.gz")

SEPARATOR = "%"
CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
SPACE_RE = re.compile(r"[ \t\f\v\xa0]+")
WS_RE = re.compile(r"\s+")
WORD_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


@dataclass(frozen=True)
class Entry:
    """One cleaned fortune with its category and 1-based position in the source file."""

    category: str
    number: int
    text: str

    @property
    def key(self) -> str:
        """Duplicate-detection key: the text before its first attribution line (``-- ...``),
        case-folded, with all whitespace collapsed to one space; the whole text when what
        precedes the attribution is shorter than ``MIN_CHARS``."""
        lines = self.text.split("\n")
        cut = next((i for i, line in enumerate(lines) if line.startswith("--")), len(lines))
        body = WS_RE.sub(" ", " ".join(lines[:cut])).strip()
        if len(body) < MIN_CHARS:
            body = WS_RE.sub(" ", self.text).strip()
        return body.casefold()


def overstrike(line: str) -> str:
    """The line as a terminal shows it: a backspace moves back one column, the next character
    overwrites the old one (``"_\\bI"`` -> ``"I"``, ``"*__\\b\\bok*"`` -> ``"*ok*"``)."""
    if "\b" not in line:
        return line
    cells: list[str] = []
    column = 0
    for char in line:
        if char == "\b":
            column = max(column - 1, 0)
            continue
        if column < len(cells):
            cells[column] = char
        else:
            cells.append(char)
        column += 1
    return "".join(cells)


def repair_double_utf8(text: str) -> str:
    """Undo UTF-8 text that was decoded as Latin-1 and encoded again (``"don\\xe2\\x80\\x99t"``
    -> ``"don't"`` with a real apostrophe); other text is returned unchanged."""
    if not any("\x80" <= c <= "\xff" for c in text):
        return text
    try:
        return text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text


def clean(raw: str) -> str:
    """Cleaned text of one raw entry (see the module docstring); may be empty."""
    lines = [CONTROL_RE.sub("", overstrike(line)) for line in raw.split("\n")]
    lines = [SPACE_RE.sub(" ", repair_double_utf8(line)).strip() for line in lines]
    kept: list[str] = []
    for line in lines:
        if not line and (not kept or not kept[-1]):
            continue  # leading blank line or a second blank line in a row
        kept.append(line)
    while kept and not kept[-1]:
        kept.pop()
    return "\n".join(kept)


def read_entries(path: Path, category: str) -> list[Entry]:
    """All entries of one fortune file, cleaned, in file order (empty ones included)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    entries: list[Entry] = []
    current: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line == SEPARATOR:
            entries.append(Entry(category, len(entries) + 1, clean("\n".join(current))))
            current = []
        else:
            current.append(line)
    if any(line.strip() for line in current):  # last entry without a closing %
        entries.append(Entry(category, len(entries) + 1, clean("\n".join(current))))
    return entries


def select(entries: list[Entry], in_corpus: set[tuple[str, int]]) -> tuple[list[Entry], dict]:
    """Entries kept after the length filter, the corpus filter (``in_corpus``: the
    ``(category, number)`` of entries sharing words with the pretraining corpus) and
    de-duplication, in input order, and the number dropped per reason and category."""
    dropped: dict[str, Counter] = {
        "too_short": Counter(), "too_long": Counter(), "shares_words_with_corpus": Counter(),
        "duplicate_in_category": Counter(), "in_two_categories": Counter(),
    }
    sized: list[Entry] = []
    for entry in entries:
        if len(entry.text) < MIN_CHARS:
            dropped["too_short"][entry.category] += 1
        elif len(entry.text) > MAX_CHARS:
            dropped["too_long"][entry.category] += 1
        elif (entry.category, entry.number) in in_corpus:
            dropped["shares_words_with_corpus"][entry.category] += 1
        else:
            sized.append(entry)
    categories_of: dict[str, set[str]] = {}
    for entry in sized:
        categories_of.setdefault(entry.key, set()).add(entry.category)
    seen: set[str] = set()
    kept: list[Entry] = []
    for entry in sized:
        if len(categories_of[entry.key]) > 1:
            dropped["in_two_categories"][entry.category] += 1
        elif entry.key in seen:
            dropped["duplicate_in_category"][entry.category] += 1
        else:
            seen.add(entry.key)
            kept.append(entry)
    return kept, {reason: dict(counts) for reason, counts in dropped.items()}


def split_sizes(n: int) -> tuple[int, int, int]:
    """Train, validation and test sizes of a category with ``n`` entries (60/10/30)."""
    n_train = round(n * SPLIT_FRACTIONS[0])
    n_validation = round(n * SPLIT_FRACTIONS[1])
    return n_train, n_validation, n - n_train - n_validation


def assign_splits(entries: list[Entry]) -> dict[tuple[str, int], str]:
    """``(category, number) -> split``: per category, entries sorted by a seeded hash of their
    text are cut 60/10/30."""
    splits: dict[tuple[str, int], str] = {}
    for category in CATEGORIES:
        members = [e for e in entries if e.category == category]
        members.sort(key=lambda e: hashlib.sha256(f"{SEED}:{e.text}".encode()).hexdigest())
        n_train, n_validation, _ = split_sizes(len(members))
        for index, entry in enumerate(members):
            if index < n_train:
                split = "train"
            elif index < n_train + n_validation:
                split = "validation"
            else:
                split = "test"
            splits[(entry.category, entry.number)] = split
    return splits


def words(text: str) -> list[str]:
    """Lower-cased words (letters, digits, inner apostrophes) of a text, punctuation dropped."""
    return WORD_RE.findall(text.casefold())


def corpus_overlap(entries: Iterable[Entry], corpus: Path) -> set[tuple[str, int]]:
    """``(category, number)`` of the entries that contain, as a run of words, a line of the
    pretraining corpus at least ``MIN_SHARED_WORDS`` words long (a WordNet example sentence
    quoting the same proverb or poem, say)."""
    by_start: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
    with gzip.open(corpus, "rt", encoding="utf-8") as handle:
        for line in handle:
            run = tuple(words(line))
            if len(run) >= MIN_SHARED_WORDS:
                by_start.setdefault(run[:MIN_SHARED_WORDS], []).append(run)
    hits: set[tuple[str, int]] = set()
    for entry in entries:
        text = words(entry.text)
        for i in range(len(text) - MIN_SHARED_WORDS + 1):
            candidates = by_start.get(tuple(text[i : i + MIN_SHARED_WORDS]), ())
            if any(tuple(text[i : i + len(run)]) == run for run in candidates):
                hits.add((entry.category, entry.number))
                break
    return hits


def read_license(license_source: Path) -> str:
    """The BSD notice (copyright line, conditions and disclaimer) from the Debian copyright
    file: the text from ``Copyright (c) 1991 The Regents`` to the end of the disclaimer."""
    lines = license_source.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Copyright (c) 1991"))
    end = next(i for i in range(start, len(lines)) if lines[i].strip() == "SUCH DAMAGE.")
    return "\n".join(line.rstrip() for line in lines[start : end + 1]) + "\n"


def file_digests(fortune_dir: Path) -> dict[str, str]:
    """SHA-256 of each source file, so a rebuild can be checked against the same input."""
    return {c: hashlib.sha256((fortune_dir / c).read_bytes()).hexdigest() for c in CATEGORIES}


def render_readme(stats: dict) -> str:
    """README.md for the output directory, from the counts gathered during the build."""
    rows = "\n".join(
        f"| `{c}` | {stats['raw'][c]:,} | {sum(stats['counts'][c].values()):,} | "
        + " | ".join(f"{stats['counts'][c][s]:,}" for s in SPLITS)
        + " |"
        for c in CATEGORIES
    )
    totals = Counter()
    for c in CATEGORIES:
        totals.update(stats["counts"][c])
    total_row = (
        f"| total | {sum(stats['raw'].values()):,} | {sum(totals.values()):,} | "
        + " | ".join(f"{totals[s]:,}" for s in SPLITS)
        + " |"
    )
    dropped = ", ".join(f"{k.replace('_', ' ')}: {sum(v.values()):,}"
                        for k, v in stats["dropped"].items())
    digests = "\n".join(f"    {d}  {c}" for c, d in stats["digests"].items())
    return f"""# Bundled fortune-cookie task (held-out downstream task)

"Fortune text -> the BSD fortune file it comes from", 8 classes. A second downstream task for
`plmkit evaluate --task fortunes`, chosen to be held out of everything the recipes were tuned on
and of every pretraining corpus (no text here occurs in the bundled WordNet corpus). Use it
through `plmkit.data.fortunes`: `task_path()` and `load_task(split)`.

## Source

Eight fortune files of the Debian package `{PACKAGE}` (bookworm, version `{PACKAGE_VERSION}`,
source package `fortune-mod`; upstream fortune-mod 1.99.1, the BSD `fortune(6)` databases by
Ken Arnold and later contributors), one class each:
{", ".join(f"`{c}`" for c in CATEGORIES)}.
They carry the BSD licence of the University of California, reproduced in `LICENSE` as its
clauses 1 and 2 require. The `.dat` indexes, the `.u8` links, the offensive `off/` folder,
`ascii-art` and the other fortune files are not used.

SHA-256 of the source files read:

{digests}

## Cleaning

An entry is the text between two lines holding only `%`. Backspace overstriking (`_^HX`) is
resolved as a terminal shows it, other control characters are removed, text that was UTF-8
encoded twice is repaired, whitespace runs inside a line become one space and lines are
stripped; blank lines at the ends are dropped and runs of blank lines become one. Line breaks
and attribution lines (`-- Mark Twain`) are kept. Entries shorter than {MIN_CHARS} or longer than
{MAX_CHARS:,} characters are dropped, and so are entries holding a line of the bundled WordNet
pretraining corpus ({MIN_SHARED_WORDS} words or more, compared word by word, case-insensitively:
WordNet example sentences quote a few of the same proverbs and poems). Then duplicates are
dropped, compared on the text before the first attribution line, case-insensitively with
whitespace collapsed: the first copy is kept within a file, and a text found in two files is
dropped from both (the same quotation filed under two categories has no single right label).
Dropped: {dropped}.

## Splits

Each class is split {"/".join(str(round(f * 100)) for f in SPLIT_FRACTIONS)} into
train/validation/test by sorting its entries on `sha256("{SEED}:" + text)`.

| label | entries in file | kept | train | validation | test |
| --- | ---: | ---: | ---: | ---: | ---: |
{rows}
{total_row}

## `task.jsonl.gz`

One JSON object per line, by class (in the order above) and then file order:
`{{"text": "...", "label": "computers", "split": "train", "id": "computers:17"}}`; `id` is the
file name and the 1-based position of the entry in that file. Texts may hold line breaks.

## Rebuilding

The file is byte-reproducible (gzip with mtime 0). From the repository root:

```
apt-get download fortunes
dpkg-deb -x fortunes_1%3a1.99.1-7.3_all.deb /tmp/fx
python scripts/build_fortunes_task.py /tmp/fx/usr/share/games/fortunes \\
    --license-source /tmp/fx/usr/share/doc/fortunes/copyright
```
"""


def log(message: str) -> None:
    """Progress message on stderr."""
    print(f"[build_fortunes_task] {message}", file=sys.stderr, flush=True)


def build(fortune_dir: Path, out: Path, license_source: Path, corpus: Path) -> dict:
    """Build every output file into ``out`` and return the statistics shown in the README."""
    missing = [c for c in CATEGORIES if not (fortune_dir / c).is_file()]
    if missing:
        raise SystemExit(f"{fortune_dir}: no fortune file {', '.join(missing)} (see --help)")
    entries: list[Entry] = []
    raw: dict[str, int] = {}
    for category in CATEGORIES:
        read = read_entries(fortune_dir / category, category)
        raw[category] = len(read)
        entries.extend(read)
    if not corpus.is_file():
        raise SystemExit(f"{corpus}: no pretraining corpus to hold the task out of (--corpus)")
    kept, dropped = select(entries, corpus_overlap(entries, corpus))
    splits = assign_splits(kept)
    out.mkdir(parents=True, exist_ok=True)
    records = [
        {"text": e.text, "label": e.category, "split": splits[(e.category, e.number)],
         "id": f"{e.category}:{e.number}"}
        for e in kept
    ]
    write_gzip_text(out / "task.jsonl.gz", (json.dumps(r, ensure_ascii=False) for r in records))
    (out / "LICENSE").write_text(
        read_license(license_source)
        + f"\n---\n\nThe fortune texts in task.jsonl.gz come from the Debian package {PACKAGE} "
        f"{PACKAGE_VERSION}\n(fortune-mod 1.99.1); the file was built by "
        "scripts/build_fortunes_task.py.\n",
        encoding="utf-8",
    )
    log(f"wrote {out / 'LICENSE'}")
    counts = {c: Counter() for c in CATEGORIES}
    for r in records:
        counts[r["label"]][r["split"]] += 1
    stats = {
        "raw": raw,
        "counts": {c: {s: counts[c][s] for s in SPLITS} for c in CATEGORIES},
        "dropped": dropped,
        "digests": file_digests(fortune_dir),
    }
    (out / "README.md").write_text(render_readme(stats), encoding="utf-8")
    log(f"wrote {out / 'README.md'}")
    return stats


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: build the files and print the counts per class and split."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fortune_dir", type=Path, nargs="?", default=DEFAULT_FORTUNE_DIR,
                        help="folder holding the fortune files (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output directory (default: %(default)s)")
    parser.add_argument("--license-source", type=Path, default=None,
                        help="Debian copyright file with the BSD notice (default: "
                        "../../doc/fortunes/copyright beside FORTUNE_DIR, else "
                        f"{DEFAULT_LICENSE_SOURCE})")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS,
                        help="pretraining corpus the task must not overlap (default: "
                        "%(default)s)")
    args = parser.parse_args(argv)
    license_source = args.license_source
    if license_source is None:
        beside = args.fortune_dir.resolve().parents[1] / "doc" / "fortunes" / "copyright"
        license_source = beside if beside.is_file() else DEFAULT_LICENSE_SOURCE
    stats = build(args.fortune_dir, args.out, license_source, args.corpus)
    print(f"{'label':<12} {'file':>5} {'kept':>5} " + " ".join(f"{s:>10}" for s in SPLITS))
    for c in CATEGORIES:
        n = stats["counts"][c]
        print(f"{c:<12} {stats['raw'][c]:>5} {sum(n.values()):>5} "
              + " ".join(f"{n[s]:>10}" for s in SPLITS))
    print("dropped:", json.dumps(stats["dropped"], sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
