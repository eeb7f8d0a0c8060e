"""Command line of the benchmark harness: ``python -m benchmarks {train,collators,loader,
scaling,all,data,budget,report} --help``.

``all`` runs every section at the issue's sizes, writes ``benchmarks/results/<host>.json``
and regenerates ``docs/benchmarks.md``; the other commands print one section as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks import harness, report
from benchmarks.specs import SIZES, SPECS, RunConfig

TRAIN_METHODS = ("bert", "roberta", "electra", "xlnet", "gpt", "t5")
COLLATOR_METHODS = ("bert", "bert_wwm", "roberta", "electra", "xlnet", "gpt", "t5")
RESULTS = harness.ROOT / "benchmarks" / "results"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=SIZES, default="small",
                        help="model size: the <method>_<size> recipe (default: small)")
    parser.add_argument("--seq", type=int, default=128, help="sequence length (default 128)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads on both sides; 0: torch's default (default 1: on "
                             "a shared 2-core machine one thread per side is the stable "
                             "setting, the other core runs the loader worker)")
    parser.add_argument("--workers", type=int, default=1,
                        help="DataLoader worker processes, both sides (default 1)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="cpu or cuda (default cpu)")
    parser.add_argument("--max-documents", type=int, default=None,
                        help="use only the first N corpus documents (quick runs, tests)")
    parser.add_argument("--cache-dir", default=None,
                        help="plmkit cache for tokenizers and tokenized corpora "
                             "(default $PLMKIT_CACHE or ~/.cache/plmkit)")


def _train_opts(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=None,
                        help="global batch (default: the method's, see benchmarks/specs.py)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run (default 4)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed steps first in every run (default 1)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs per side, alternating plmkit and baseline (default 3)")
    parser.add_argument("--precision", default="32", choices=("32", "bf16-mixed"),
                        help="32 or bf16-mixed, both sides (default 32)")


def _output_opts(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--output", default=None, help=help)
    parser.add_argument("--docs", default=str(report.DOCS),
                        help="page regenerated with --output (default docs/benchmarks.md)")


def _config(args: argparse.Namespace, method: str, **extra: Any) -> RunConfig:
    batch = getattr(args, "batch", None) or SPECS[method].batch
    cfg = RunConfig(method=method, size=args.size, seq=args.seq, batch=batch,
                    threads=args.threads, workers=args.workers, device=args.device,
                    max_documents=args.max_documents, cache_dir=args.cache_dir)
    for key in ("steps", "warmup", "precision"):
        if hasattr(args, key):
            setattr(cfg, key, getattr(args, key))
    return replace(cfg, **extra)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_train(args: argparse.Namespace, methods: tuple[str, ...]) -> list[dict]:
    out = []
    for method in methods:
        _log(f"train {method}")
        out.append(harness.compare(_config(args, method, compile=args.compile), args.repeats,
                                   _log))
    return out


def run_variants(args: argparse.Namespace, method: str,
                 results_train: list[dict]) -> list[dict]:
    """``--model.compile true`` and bf16-mixed against eager float32, for one method."""
    variants = []
    for name, extra, sides in (
        ("compile", {"compile": True, "warmup": 3}, ("plmkit",)),
        ("bf16-mixed", {"precision": "bf16-mixed"}, ("plmkit", "baseline")),
    ):
        _log(f"variant {name} ({method})")
        result = harness.compare(_config(args, method, **extra), args.variant_repeats, _log,
                                 sides=sides)
        result["variant"] = name
        eager = [row for row in results_train if row["method"] == method]
        if eager:
            result["eager_tokens_per_sec"] = eager[0]["plmkit"]["tokens_per_sec"]
        variants.append(result)
    return variants


def run_data(args: argparse.Namespace, side: str, methods: tuple[str, ...]) -> list[dict]:
    out = []
    for method in methods:
        batch = 128 if side == "collators" else (getattr(args, "batch", None)
                                                 or SPECS[method].batch)
        _log(f"{side} {method}")
        out.append(harness.measure(_config(args, method, side=side, batch=batch),
                                   module="benchmarks.dataside"))
    return out


def run_scaling(args: argparse.Namespace) -> list[dict]:
    out = []
    for seq in args.seqs:
        for batch in args.batches:
            cfg = _config(args, args.method, seq=seq, batch=batch, steps=2, warmup=1,
                          side="plmkit")
            _log(f"scaling {args.method} seq {seq} batch {batch}")
            out.append(harness.measure(cfg))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="tokens/s of plmkit vs the transformers path")
    _common(train)
    _train_opts(train)
    train.add_argument("--method", choices=sorted(SPECS), action="append",
                       help="method (repeatable; default: all six)")
    train.add_argument("--compile", action="store_true",
                       help="plmkit side with --model.compile true")
    _output_opts(train, "add the rows to this results file (replacing rows of the same "
                        "method) and regenerate --docs from it")
    for name, helptext in (("collators", "examples/s of collators, batch 128, one process"),
                           ("loader", "tokens/s of plmkit's loader with no model")):
        p = sub.add_parser(name, help=helptext)
        _common(p)
        p.add_argument("--method", choices=sorted(SPECS), action="append",
                       help="method (repeatable; default: all)")
    scaling = sub.add_parser("scaling", help="plmkit tokens/s against seq length and batch")
    _common(scaling)
    scaling.add_argument("--method", default="bert", choices=sorted(SPECS),
                         help="method (default bert)")
    scaling.add_argument("--seqs", type=int, nargs="+", default=[128, 256, 512],
                         help="sequence lengths (default 128 256 512)")
    scaling.add_argument("--batches", type=int, nargs="+", default=[8, 16],
                         help="global batch sizes (default 8 16)")
    _output_opts(scaling, "replace the scaling section of this results file and "
                          "regenerate --docs from it")
    everything = sub.add_parser("all", help="every section; writes the results file and "
                                "docs/benchmarks.md")
    _common(everything)
    _train_opts(everything)
    everything.add_argument("--variant-repeats", type=int, default=2,
                            help="runs per side of the compile / bf16 variants (default 2)")
    everything.add_argument("--methods", nargs="+", default=list(TRAIN_METHODS),
                            choices=sorted(SPECS), help="methods trained (default: six)")
    everything.add_argument("--output", default=None,
                            help="results file (default benchmarks/results/<host>.json)")
    everything.add_argument("--docs", default=str(report.DOCS),
                            help="markdown page to regenerate (default docs/benchmarks.md)")
    everything.add_argument("--skip", nargs="*", default=[],
                            choices=("variants", "collators", "loader", "scaling"),
                            help="sections to leave out")
    data = sub.add_parser("data", help="tokenization MB/s, peak memory and time to first "
                          "step against corpus size (synthetic corpora)")
    data.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 4000],
                      help="corpus sizes in MB of text (default 100 1000 4000)")
    data.add_argument("--num-proc", type=int, default=None,
                      help="tokenizer processes (default: plmkit's, every core)")
    data.add_argument("--workdir", default="/tmp/plmkit-data-scale",
                      help="where corpora and caches are written, one size at a time")
    _output_opts(data, "replace the data section of this results file and regenerate "
                       "--docs from it")
    budget = sub.add_parser("budget", help="the table (and plot) of every objective against "
                            "random init at one budget, from compare/evaluate JSON files")
    budget.add_argument("folder", help="folder of RECIPE.compare.json and RECIPE.<task>.<mode>"
                        ".json files (see benchmarks/budget.py)")
    budget.add_argument("--plot", default=None, help="also draw the plot into this PNG")
    rep = sub.add_parser("report", help="regenerate docs/benchmarks.md from results files")
    rep.add_argument("results", nargs="*", help="results files (default benchmarks/results/*)")
    rep.add_argument("--docs", default=str(report.DOCS), help="page to write")
    args = parser.parse_args(argv)

    if args.command == "report":
        files = [Path(f) for f in args.results] or sorted(RESULTS.glob("*.json"))
        report.write(files, Path(args.docs))
        return 0
    if args.command == "budget":
        from benchmarks import budget as budget_table

        rows = budget_table.load(Path(args.folder))
        print("\n".join(budget_table.table(rows)))
        if args.plot:
            budget_table.plot(rows, Path(args.plot))
        return 0
    if args.command == "train":
        args.compile = bool(args.compile)
        result: Any = run_train(args, tuple(args.method or TRAIN_METHODS))
        if args.output:
            _merge(Path(args.output), result, Path(args.docs))
    elif args.command in ("collators", "loader"):
        result = run_data(args, args.command, tuple(args.method or COLLATOR_METHODS))
    elif args.command == "data":
        from benchmarks import data_scale

        result = data_scale.run(args.sizes, Path(args.workdir), args.num_proc)
        if args.output:
            _merge(Path(args.output), result, Path(args.docs), section="data_scale")
    elif args.command == "scaling":
        result = run_scaling(args)
        if args.output:
            _merge(Path(args.output), result, Path(args.docs), section="scaling")
    else:
        result = run_all(args, " ".join(["python -m benchmarks", *(argv or sys.argv[1:])]))
    print(json.dumps(result, indent=1))
    return 0


def _merge(path: Path, rows: list[dict], docs: Path, section: str = "train") -> None:
    """Put ``rows`` into a section of an existing results file: ``train`` rows replace
    those of the same method, ``data_scale`` rows those of the same corpus size, a new
    ``scaling`` replaces the old one."""
    results = json.loads(path.read_text())
    key = {"train": "method", "data_scale": "corpus_mb"}.get(section)
    if key:
        replaced = {row[key] for row in rows}
        kept = [row for row in results.get(section, []) if row[key] not in replaced]
        results[section] = kept + rows
        if section == "data_scale":
            results[section].sort(key=lambda row: row["corpus_mb"])
    else:
        results[section] = rows
    results.setdefault("extra_commands", []).append(
        " ".join(["python -m benchmarks", *sys.argv[1:]]))
    path.write_text(json.dumps(results, indent=1))
    report.write([path], docs)


def run_all(args: argparse.Namespace, command: str) -> dict:
    started = time.time()
    args.compile = False
    results: dict[str, Any] = {"environment": harness.environment(args.threads),
                               "command": command}
    output = Path(args.output) if args.output else RESULTS / f"{harness.host_kind()}.json"
    output.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        results["wall_seconds"] = time.time() - started
        output.write_text(json.dumps(results, indent=1))

    methods = tuple(args.methods)
    results["train"] = run_train(args, methods)
    save()
    if "variants" not in args.skip:
        results["variants"] = run_variants(args, methods[0], results["train"])
        save()
    if "collators" not in args.skip:
        results["collators"] = run_data(args, "collators", COLLATOR_METHODS)
        save()
    if "loader" not in args.skip:
        results["loader"] = run_data(args, "loader", methods)
        save()
    if "scaling" not in args.skip:
        args.method, args.seqs, args.batches = methods[0], [128, 256, 512], [8, 16]
        results["scaling"] = run_scaling(args)
    results["environment"]["load_average_end"] = list(harness.os.getloadavg())
    save()
    report.write([output], Path(args.docs))
    _log(f"wrote {output} and {args.docs} in {time.time() - started:.0f} s")
    return {"output": str(output), "docs": args.docs}


if __name__ == "__main__":
    sys.exit(main())
