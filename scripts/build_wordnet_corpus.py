"""Build the bundled WordNet 3.0 sample corpus shipped in ``plmkit/data/wordnet``.

The script parses the WordNet ``data.{noun,verb,adj,adv}`` files (format: ``man 5 wndb``) and
writes, deterministically (same input -> byte-identical output):

* ``corpus.txt.gz``   -- pretraining text: one sentence per line, documents separated by one
  blank line.  A sentence is a gloss definition or one quoted example sentence; a document is a
  run of up to 8 consecutive synsets (data-file order) from the same lexicographer file.
* ``eval.jsonl.gz``   -- held-out "gloss -> lexicographer category" classification task built
  from ~8% of the noun and verb synsets (chosen by an MD5 hash of ``"n:01234567"``); none of the
  held-out definitions or examples occurs as a line of the corpus.
* ``lexicon.tsv.gz``  -- multi-word phrase/entity lexicon (``phrase<TAB>kind``) for ERNIE-style
  phrase/entity masking.
* ``LICENSE`` and ``README.md``.

Usage::

    python scripts/build_wordnet_corpus.py [--wordnet-dir /usr/share/wordnet]
                                           [--out plmkit/data/wordnet]

No network access is needed; the WordNet files come from the ``wordnet-base`` package.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# Lexicographer file names, indexed by ``lex_filenum`` (WordNet 3.0 ``lexnames``).
LEXNAMES: tuple[str, ...] = (
    "adj.all",  # 0
    "adj.pert",  # 1
    "adv.all",  # 2
    "noun.Tops",  # 3
    "noun.act",  # 4
    "noun.animal",  # 5
    "noun.artifact",  # 6
    "noun.attribute",  # 7
    "noun.body",  # 8
    "noun.cognition",  # 9
    "noun.communication",  # 10
    "noun.event",  # 11
    "noun.feeling",  # 12
    "noun.food",  # 13
    "noun.group",  # 14
    "noun.location",  # 15
    "noun.motive",  # 16
    "noun.object",  # 17
    "noun.person",  # 18
    "noun.phenomenon",  # 19
    "noun.plant",  # 20
    "noun.possession",  # 21
    "noun.process",  # 22
    "noun.quantity",  # 23
    "noun.relation",  # 24
    "noun.shape",  # 25
    "noun.state",  # 26
    "noun.substance",  # 27
    "noun.time",  # 28
    "verb.body",  # 29
    "verb.change",  # 30
    "verb.cognition",  # 31
    "verb.communication",  # 32
    "verb.competition",  # 33
    "verb.consumption",  # 34
    "verb.contact",  # 35
    "verb.creation",  # 36
    "verb.emotion",  # 37
    "verb.motion",  # 38
    "verb.perception",  # 39
    "verb.possession",  # 40
    "verb.social",  # 41
    "verb.stative",  # 42
    "verb.weather",  # 43
    "adj.ppl",  # 44
)

# Data files in processing order and the part of speech their synsets belong to.
DATA_FILES: tuple[tuple[str, str], ...] = (
    ("noun", "n"),
    ("verb", "v"),
    ("adj", "a"),
    ("adv", "r"),
)
# ss_type -> part of speech (adjective satellites "s" are adjectives).
SS_TYPE_POS: dict[str, str] = {"n": "n", "v": "v", "a": "a", "s": "a", "r": "r"}
LEXNAME_PREFIX: dict[str, str] = {"n": "noun.", "v": "verb.", "a": "adj.", "r": "adv."}

HOLDOUT_POS: frozenset[str] = frozenset({"n", "v"})
HOLDOUT_PER_10000 = 800  # ~8% of noun and verb synsets are held out for the eval task
SPLIT_BOUNDS: tuple[tuple[int, str], ...] = ((70, "train"), (80, "validation"), (100, "test"))
MIN_EVAL_PER_LABEL = 20
MAX_SYNSETS_PER_DOC = 8
LEXICON_KIND_RANK: dict[str, int] = {"person": 0, "location": 1, "group": 2, "phrase": 3}
LEXICON_KIND_BY_LEXNAME: dict[str, str] = {
    "noun.person": "person",
    "noun.location": "location",
    "noun.group": "group",
}

DEFAULT_WORDNET_DIR = Path("/usr/share/wordnet")
DEFAULT_OUT = Path("plmkit/data/wordnet")
DEFAULT_LICENSE_SOURCE = Path("/usr/share/doc/wordnet-base/copyright")

ADJ_MARKER_RE = re.compile(r"\((?:a|p|ip)\)$")
# An example starts at a double quote that opens the gloss or follows ';', ':' or ','.
EXAMPLE_START_RE = re.compile(r'(?:^|[;:,])\s*"')
QUOTED_RE = re.compile(r'"([^"]*)"?')
WS_RE = re.compile(r"\s+")


@dataclass(frozen=True)
class Synset:
    """One parsed line of a WordNet data file."""

    offset: str
    pos: str  # n, v, a, r
    lexname: str
    lemmas: tuple[str, ...]
    definition: str
    examples: tuple[str, ...]

    @property
    def key(self) -> str:
        """Stable identifier ``"pos:offset"``, e.g. ``"n:01234567"``."""
        return f"{self.pos}:{self.offset}"

    def sentences(self) -> list[str]:
        """The gloss definition followed by the example sentences (empty strings dropped)."""
        return [s for s in (self.definition, *self.examples) if s]


def normalise(text: str) -> str:
    """Collapse all whitespace runs to one space and strip the ends."""
    return WS_RE.sub(" ", text).strip()


def split_gloss(gloss: str) -> tuple[str, list[str]]:
    """Split ``definition; "example one"; "example two"`` into the definition and examples.

    WordNet glosses are not perfectly regular (examples separated by ':' or ',', unbalanced
    quotes, trailing attributions such as ``- Henry Miller``); unquoted text after the first
    example is dropped.
    """
    match = EXAMPLE_START_RE.search(gloss)
    if match is None:
        definition, rest = gloss, ""
    else:
        definition, rest = gloss[: match.start()], gloss[match.end() - 1 :]
    definition = normalise(definition).rstrip(";:, ").strip()
    examples = [normalise(q) for q in QUOTED_RE.findall(rest)]
    # Unbalanced quotes can leave bits such as ";" between two examples: keep only text.
    return definition, [e for e in examples if any(c.isalnum() for c in e)]


def parse_line(line: str, expected_pos: str) -> Synset:
    """Parse one synset line of a ``data.*`` file."""
    head, sep, gloss = line.partition(" | ")
    if not sep:
        head, gloss = line, ""
    fields = head.split()
    offset, lex_filenum, ss_type = fields[0], int(fields[1]), fields[2]
    pos = SS_TYPE_POS[ss_type]
    if pos != expected_pos:
        raise ValueError(f"synset {offset}: ss_type {ss_type!r} in the {expected_pos} file")
    lexname = LEXNAMES[lex_filenum]
    if not lexname.startswith(LEXNAME_PREFIX[pos]):
        raise ValueError(f"synset {offset}: lexname {lexname} does not match pos {pos}")
    w_cnt = int(fields[3], 16)
    words = fields[4 : 4 + 2 * w_cnt : 2]
    lemmas = tuple(ADJ_MARKER_RE.sub("", w) for w in words)
    definition, examples = split_gloss(gloss.strip())
    return Synset(offset, pos, lexname, lemmas, definition, tuple(examples))


def read_synsets(wordnet_dir: Path) -> list[Synset]:
    """Parse all four data files, in ``DATA_FILES`` order and data-file order within each."""
    synsets: list[Synset] = []
    for name, pos in DATA_FILES:
        path = wordnet_dir / f"data.{name}"
        start = len(synsets)
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("  ") or not line.strip():  # licence header
                    continue
                synsets.append(parse_line(line.rstrip("\n"), pos))
        log(f"parsed {path}: {len(synsets) - start} synsets")
    return synsets


def md5_int(key: str, start: int, stop: int) -> int:
    """Integer value of hex digits ``[start:stop]`` of ``md5(key)`` (stable across runs)."""
    return int(hashlib.md5(key.encode("utf-8")).hexdigest()[start:stop], 16)


def is_held_out(synset: Synset) -> bool:
    """Whether a synset belongs to the held-out eval set (~8% of nouns and verbs)."""
    return synset.pos in HOLDOUT_POS and md5_int(synset.key, 0, 8) % 10000 < HOLDOUT_PER_10000


def split_of(synset: Synset) -> str:
    """Deterministic 70/10/20 train/validation/test assignment of a held-out synset."""
    bucket = md5_int(synset.key, 8, 16) % 100
    for bound, split in SPLIT_BOUNDS:
        if bucket < bound:
            return split
    raise AssertionError("unreachable")


def build_documents(synsets: Iterable[Synset], banned: set[str]) -> list[list[str]]:
    """Group synsets into documents of up to ``MAX_SYNSETS_PER_DOC`` same-lexname synsets.

    Sentences in ``banned`` (held-out definitions and examples) are left out.
    """
    documents: list[list[str]] = []
    run: list[Synset] = []

    def flush() -> None:
        sentences = [s for syn in run for s in syn.sentences() if s not in banned]
        if sentences:
            documents.append(sentences)
        run.clear()

    for synset in synsets:
        if run and (run[0].lexname != synset.lexname or len(run) == MAX_SYNSETS_PER_DOC):
            flush()
        run.append(synset)
    if run:
        flush()
    return documents


def build_eval(held_out: list[Synset]) -> tuple[list[dict[str, str]], list[str], int]:
    """Eval records for held-out synsets, the labels dropped for having too few entries, and
    the number of records those labels had.

    A definition that occurs more than once among the held-out synsets is kept only for its
    first synset, so the same text never sits in two splits or carries two labels.
    """
    seen: set[str] = set()
    records: list[dict[str, str]] = []
    for synset in held_out:
        if not synset.definition or synset.definition in seen:
            continue
        seen.add(synset.definition)
        records.append(
            {
                "text": synset.definition,
                "label": synset.lexname,
                "split": split_of(synset),
                "id": synset.key,
            }
        )
    per_label = Counter(r["label"] for r in records)
    dropped = sorted(label for label, n in per_label.items() if n < MIN_EVAL_PER_LABEL)
    kept = [r for r in records if per_label[r["label"]] >= MIN_EVAL_PER_LABEL]
    return kept, dropped, len(records) - len(kept)


def build_lexicon(synsets: Iterable[Synset]) -> list[tuple[str, str]]:
    """Multi-word lemmas with their kind (person > location > group > phrase), sorted."""
    best: dict[str, str] = {}
    for synset in synsets:
        kind = LEXICON_KIND_BY_LEXNAME.get(synset.lexname, "phrase")
        for lemma in synset.lemmas:
            phrase = normalise(lemma.replace("_", " "))
            if len(phrase.split(" ")) < 2:
                continue
            old = best.get(phrase)
            if old is None or LEXICON_KIND_RANK[kind] < LEXICON_KIND_RANK[old]:
                best[phrase] = kind
    return sorted(best.items())


def write_gzip_text(path: Path, lines: Iterable[str]) -> None:
    """Write text lines to a gzip file with no name and mtime=0 (byte-reproducible)."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as gz,
        io.TextIOWrapper(gz, encoding="utf-8", newline="\n") as text,
    ):
        for line in lines:
            text.write(line)
            text.write("\n")
    path.write_bytes(buffer.getvalue())
    log(f"wrote {path} ({path.stat().st_size:,} bytes)")


def corpus_lines(documents: list[list[str]]) -> Iterator[str]:
    """Sentences one per line, with exactly one blank line between documents."""
    for index, document in enumerate(documents):
        if index:
            yield ""
        yield from document


def read_license(license_source: Path, wordnet_dir: Path) -> str:
    """The WordNet 3.0 licence text.

    Taken from the ``License: WordNet3.0`` stanza of the Debian copyright file (undoing the
    Debian indentation and ``.`` blank-line markers only), or, if that file is missing, from
    the licence header of ``data.noun`` (stripping the line numbers).
    """
    if license_source.is_file():
        lines = license_source.read_text(encoding="utf-8").splitlines()
        for start, line in enumerate(lines):
            if line.strip() == "License: WordNet3.0":
                body: list[str] = []
                for cont in lines[start + 1 :]:
                    if not cont.startswith(" "):
                        break
                    body.append("" if cont.strip() == "." else cont[1:].rstrip())
                return "\n".join(body).strip("\n") + "\n"
    body = []
    with (wordnet_dir / "data.noun").open(encoding="utf-8") as handle:
        for line in handle:
            if not line.startswith("  "):
                break
            body.append(re.sub(r"^\s+\d+ ?", "", line.rstrip()))
    return "\n".join(body).strip("\n") + "\n"


def render_readme(stats: dict[str, object]) -> str:
    """README.md for the output directory, from the counts gathered during the build."""
    s = stats

    synsets_by_pos = s["synsets_by_pos"]
    assert isinstance(synsets_by_pos, dict)
    eval_by_split = s["eval_by_split"]
    assert isinstance(eval_by_split, dict)
    lexicon_by_kind = s["lexicon_by_kind"]
    assert isinstance(lexicon_by_kind, dict)
    dropped = s["dropped_labels"]
    assert isinstance(dropped, list)
    dropped_text = ", ".join(f"`{d}`" for d in dropped) or "none"
    return f"""# Bundled WordNet 3.0 sample corpus

A small, fully offline corpus derived from [WordNet 3.0](https://wordnet.princeton.edu/)
(Princeton University), shipped inside `plmkit` so that every recipe and test can run without
network access. See `LICENSE` for the WordNet licence.

Use it through `plmkit.data.wordnet`: `corpus_path()`, `eval_path()`, `lexicon_path()`,
`load_eval(split)` and `load_lexicon()`.

## Files

| file | content |
| --- | --- |
| `corpus.txt.gz` | pretraining text, UTF-8, one sentence per line, documents separated by one \
blank line |
| `eval.jsonl.gz` | held-out downstream task "gloss -> lexicographer category" (JSON lines) |
| `lexicon.tsv.gz` | multi-word phrase/entity lexicon, `phrase<TAB>kind`, sorted |
| `LICENSE` | WordNet 3.0 licence |

### `corpus.txt.gz`

A *sentence* is either a synset's gloss definition or one of its quoted example sentences
(quotes stripped, whitespace normalised). A *document* is a run of up to {MAX_SYNSETS_PER_DOC}
consecutive synsets (in data-file order: noun, verb, adj, adv) that share the same
lexicographer file (e.g. `noun.animal`): the first synset's gloss, then its examples, then the
next synset's gloss, and so on. Held-out synsets (see below) are left out, as is any sentence
that is identical to a held-out definition or example.

- synsets parsed: {s["synsets"]:,} ({", ".join(f"{k}: {v:,}" for k, v in synsets_by_pos.items())})
- synsets in the corpus: {s["corpus_synsets"]:,}
- sentences: {s["sentences"]:,} ({s["sentences_removed"]:,} more were dropped because they repeat a
  held-out definition or example)
- documents: {s["documents"]:,} (mean {s["sentences_per_doc"]:.2f} sentences per document)
- whitespace tokens: ~{s["tokens"]:,}

### `eval.jsonl.gz`

One JSON object per line:
`{{"text": definition, "label": "noun.animal", "split": "train", "id": "n:01234567"}}`.
About 8% of the noun and verb synsets are held out, chosen by `md5("pos:offset")`
(`"n:01234567"`, `"v:01234567"`), and split 70/10/20 into train/validation/test by another
part of the same digest. Neither their definitions nor their
examples occur as a line of `corpus.txt.gz`. A definition shared by several held-out synsets is
kept once. Labels with fewer than {MIN_EVAL_PER_LABEL} held-out entries are dropped from the
file (their synsets stay out of the corpus): {dropped_text}.
Some glosses are very short (e.g. a genus glossed only with its member's name), so a few eval
texts are a single word.

- held-out synsets: {s["held_out"]:,}
- eval entries: {s["eval_entries"]:,} ({s["eval_duplicates"]:,} duplicate definitions and \
{s["eval_dropped"]:,} entries of dropped labels removed)
{chr(10).join(f"  - {k}: {v:,}" for k, v in eval_by_split.items())}
- labels: {s["labels"]} (`noun.*` and `verb.*` lexicographer files)

### `lexicon.tsv.gz`

Every lemma of two or more words (WordNet's underscores turned into spaces, adjective markers
`(a)`, `(p)`, `(ip)` removed), with its kind: `person`, `location` or `group` for lemmas of
`noun.person`, `noun.location` and `noun.group` synsets, `phrase` otherwise. A phrase with
several kinds keeps the first of person > location > group > phrase; phrases are
case-sensitive and sorted.

- entries: {s["lexicon_entries"]:,}
{chr(10).join(f"  - {k}: {v:,}" for k, v in lexicon_by_kind.items())}

## Rebuilding

The files are byte-reproducible (gzip with mtime 0). With the Debian/Ubuntu `wordnet-base`
package installed, run from the repository root:

```
python scripts/build_wordnet_corpus.py --wordnet-dir /usr/share/wordnet --out plmkit/data/wordnet
```
"""


def log(message: str) -> None:
    """Progress message on stderr."""
    print(f"[build_wordnet_corpus] {message}", file=sys.stderr, flush=True)


def build(wordnet_dir: Path, out: Path, license_source: Path = DEFAULT_LICENSE_SOURCE) -> dict:
    """Build every output file into ``out`` and return the statistics shown in the README."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    synsets = read_synsets(wordnet_dir)

    held_out = [syn for syn in synsets if is_held_out(syn)]
    banned = {sentence for syn in held_out for sentence in syn.sentences()}
    kept = [syn for syn in synsets if not is_held_out(syn)]
    documents = build_documents(kept, banned)
    write_gzip_text(out / "corpus.txt.gz", corpus_lines(documents))

    records, dropped, n_dropped = build_eval(held_out)
    write_gzip_text(
        out / "eval.jsonl.gz",
        (json.dumps(r, ensure_ascii=False, sort_keys=False) for r in records),
    )

    lexicon = build_lexicon(synsets)
    write_gzip_text(out / "lexicon.tsv.gz", (f"{p}\t{k}" for p, k in lexicon))

    license_text = read_license(license_source, wordnet_dir)
    license_text += (
        "\n---\n\nThis derived corpus was built from WordNet 3.0 by "
        "scripts/build_wordnet_corpus.py.\n"
    )
    (out / "LICENSE").write_text(license_text, encoding="utf-8")
    log(f"wrote {out / 'LICENSE'}")

    sentences = sum(len(d) for d in documents)
    removed = sum(len(syn.sentences()) for syn in kept) - sentences
    by_split = Counter(r["split"] for r in records)
    by_kind = Counter(k for _, k in lexicon)
    stats: dict[str, object] = {
        "synsets": len(synsets),
        "synsets_by_pos": dict(Counter(syn.lexname.split(".")[0] for syn in synsets)),
        "corpus_synsets": len(kept),
        "sentences": sentences,
        "sentences_removed": removed,
        "documents": len(documents),
        "sentences_per_doc": sentences / max(len(documents), 1),
        "tokens": sum(len(s.split()) for d in documents for s in d),
        "held_out": len(held_out),
        "eval_entries": len(records),
        "eval_duplicates": len(held_out) - len(records) - n_dropped,
        "eval_dropped": n_dropped,
        "eval_by_split": {k: by_split[k] for _, k in SPLIT_BOUNDS},
        "labels": len({r["label"] for r in records}),
        "dropped_labels": dropped,
        "lexicon_entries": len(lexicon),
        "lexicon_by_kind": {k: by_kind[k] for k in LEXICON_KIND_RANK},
    }
    (out / "README.md").write_text(render_readme(stats), encoding="utf-8")
    log(f"wrote {out / 'README.md'}")
    log(f"done in {time.perf_counter() - started:.1f} s")
    return stats


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--wordnet-dir",
        type=Path,
        default=DEFAULT_WORDNET_DIR,
        help="directory holding data.noun, data.verb, data.adj, data.adv (default: %(default)s)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output directory (default: %(default)s)"
    )
    parser.add_argument(
        "--license-source",
        type=Path,
        default=DEFAULT_LICENSE_SOURCE,
        help="Debian copyright file with the WordNet licence (default: %(default)s); "
        "falls back to the licence header of data.noun",
    )
    args = parser.parse_args(argv)
    stats = build(args.wordnet_dir, args.out, args.license_source)
    log(json.dumps(stats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
