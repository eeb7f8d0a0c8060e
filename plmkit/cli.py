"""The ``plmkit`` command: fit / validate (LightningCLI) plus plugins, recipes, export,
evaluate, compare and tokenizer.

``--recipe NAME`` is rewritten into ``--config <recipe file>`` placed right after the
subcommand, so the recipe is applied first and every later flag overrides it (jsonargparse
allows only one config argument per parser, hence the rewrite). Plugins are loaded before
LightningCLI is built so that recipe class paths resolve.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import yaml

from plmkit import __version__
from plmkit.errors import PlmkitError
from plmkit.registry import get_registry

log = logging.getLogger("plmkit")

EXAMPLES = """examples:
  plmkit recipes                                   list the recipes
  plmkit fit --recipe bert_tiny                    pretrain BERT-Tiny on the bundled corpus
  plmkit fit --recipe bert_tiny --trainer.max_steps 50 --data.corpus 'my/*.txt'
  plmkit fit --recipe bert_tiny --ckpt_path last   resume the run in runs/bert_tiny
  plmkit export runs/bert_tiny/checkpoints/last.ckpt out/bert   Hugging Face format
  plmkit evaluate out/bert --task wordnet --baseline random     downstream score and gain
  plmkit compare --recipes electra_tiny bert_tiny --budget 2e13 equal-compute comparison
  plmkit tokenizer train bundled --type bpe --vocab-size 8000 --out tok/
"""

VALIDATE_HELP = """validate a checkpoint on the run's held-out documents, e.g.
  plmkit validate --recipe bert_tiny --ckpt_path last
  plmkit validate --recipe bert_tiny --ckpt_path runs/bert_tiny/checkpoints/last.ckpt"""

EVALUATE_HELP = """examples:
  plmkit evaluate out/bert_tiny --task wordnet
  plmkit evaluate runs/bert_tiny/checkpoints/last.ckpt --task wordnet --baseline random
  plmkit evaluate out/gpt_tiny --task my_task.csv --probe --pooling mean

MODEL is a folder written by 'plmkit export' or a .ckpt written by 'plmkit fit'. A task is
'wordnet' (gloss -> lexicographer category, held out of the bundled corpus) or a .csv / .tsv /
.jsonl file with text and label columns (and optionally a split column: train / test)."""

COMPARE_HELP = """examples:
  plmkit compare --recipes electra_tiny bert_tiny --budget 2e13
  plmkit compare --recipes electra_tiny bert_tiny --budget 5min --probe
  plmkit compare --recipes electra_tiny bert_tiny --budget 1e13 --fit-args '--data.batch_size 16'

BUDGET is FLOPs (2e13, 2e13flops: steps = budget / (flops_per_token x tokens per step)) or
wall time of training (90s, 5min, 1h: --trainer.max_time). Writes OUT/compare.md (table),
OUT/compare.png (score against compute, one line per recipe) and OUT/compare.json."""

TOKENIZER_HELP = """examples:
  plmkit tokenizer train bundled --type wordpiece --vocab-size 8192 --out tok/wordnet
  plmkit tokenizer train 'my/*.txt' --type bpe --vocab-size 16000 --out tok/mine
  plmkit fit --recipe bert_tiny --data.tokenizer tok/mine          train with it"""


FIT_HELP = """pretrain with a recipe; any recipe value can be overridden, e.g.
  plmkit fit --recipe bert_tiny --trainer.max_steps 100 --data.batch_size 16
  plmkit fit --recipe bert_tiny --print_config        show the merged config
  plmkit fit --recipe bert_tiny --ckpt_path last      resume from runs/bert_tiny"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        raise PlmkitError(f"{message}; run '{self.prog} --help'")


def _top_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="plmkit",
        description="Pretrain language models with PyTorch Lightning, one plugin per method.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"plmkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.add_parser("fit", help="pretrain (LightningCLI; 'plmkit fit --help' for all options)",
                   add_help=False)
    sub.add_parser("validate", help="validate a checkpoint (LightningCLI)", add_help=False)
    sub.add_parser(
        "plugins", help="list the loaded plugins and their objectives",
        description="List each objective: name, plugin, distribution and version, description.",
        epilog="example: plmkit plugins",
    )
    sub.add_parser(
        "recipes", help="list every recipe with its objective and description",
        description="List the packaged and plugin-contributed recipes.",
        epilog="example: plmkit recipes",
    )
    export = sub.add_parser(
        "export", help="write a checkpoint in Hugging Face format",
        description="Write model, config and tokenizer so AutoModel.from_pretrained loads them.",
        epilog="example: plmkit export runs/bert_tiny/checkpoints/last.ckpt out/bert_tiny",
    )
    export.add_argument("checkpoint", help="a .ckpt file written by 'plmkit fit'")
    export.add_argument("out_dir", help="folder to write (created if missing)")
    export.add_argument("--generator", action="store_true",
                        help="ELECTRA: also export the generator (to OUT_DIR/generator)")
    _add_evaluate(sub)
    _add_compare(sub)
    _add_tokenizer(sub)
    return parser


def _add_evaluation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="wordnet",
                        help="built-in task (wordnet) or a .csv/.tsv/.jsonl file "
                        "(default: wordnet)")
    parser.add_argument("--probe", action="store_true",
                        help="freeze the encoder and train a linear head on pooled features (fast)"
                        "; default: fine-tune the whole model")
    parser.add_argument("--max-train", type=int, default=2000, metavar="N",
                        help="use at most N training examples, 0 for all (default: 2000)")
    parser.add_argument("--max-length", type=int, default=64, metavar="N",
                        help="tokens per text, longer ones are cut (default: 64)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="passes over the training examples (default: 3, probe: 30)")
    parser.add_argument("--lr", type=float, default=None,
                        help="peak learning rate (default: 1e-3, probe: 3e-3; base-sized "
                        "models fine-tune better with 2e-5 to 1e-4)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="examples per step (default: 32, probe: 256)")
    parser.add_argument("--pooling", choices=("cls", "mean", "last"), default=None,
                        help="how a text's token states become one vector (default: per model: "
                        "last for GPT, mean for the others; cls: the first token)")
    parser.add_argument("--seed", type=int, default=0, help="default: 0")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "evaluate", help="fine-tune or probe a pretrained model on a classification task",
        description="Fine-tune (or linearly probe) an exported or checkpointed model on a "
        "labelled text-classification task; report accuracy and macro-F1 on a held-out split.",
        epilog=EVALUATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="a folder from 'plmkit export' or a .ckpt from 'plmkit fit'")
    _add_evaluation_options(parser)
    parser.add_argument("--split", default="test", help="the held-out split (default: test)")
    parser.add_argument("--text-column", default="text", help="task files: the text column")
    parser.add_argument("--label-column", default="label", help="task files: the label column")
    parser.add_argument("--baseline", choices=("random",), default=None,
                        help="also train the same architecture from random initialization and "
                        "print the gain from pretraining")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the scores here")


def _add_compare(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "compare", help="pretrain recipes under one compute budget and compare their scores",
        description="Pretrain each recipe under the same compute budget, evaluate intermediate "
        "checkpoints downstream and write a markdown table and a PNG plot.",
        epilog=COMPARE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--recipes", nargs="+", required=True, metavar="RECIPE",
                        help="recipe names or .yaml paths ('plmkit recipes')")
    parser.add_argument("--budget", required=True,
                        help="FLOPs per recipe (2e13) or training wall time (90s, 5min, 1h)")
    parser.add_argument("--points", type=int, default=3,
                        help="checkpoints evaluated per recipe, evenly spaced (default: 3)")
    parser.add_argument("--out", default="runs/compare",
                        help="output folder (default: %(default)s)")
    parser.add_argument("--fit-args", default="", metavar="FLAGS",
                        help="extra 'plmkit fit' flags for every recipe, one quoted string")
    parser.add_argument("--no-random-init", action="store_true",
                        help="skip the compute-0 point (the architecture from random init)")
    _add_evaluation_options(parser)


def _add_tokenizer(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "tokenizer", help="tokenizer tools ('plmkit tokenizer train --help')",
        description="Tokenizer tools.", epilog=TOKENIZER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tok_sub = parser.add_subparsers(dest="tokenizer_command", metavar="COMMAND",
                                    parser_class=_Parser)
    train = tok_sub.add_parser(
        "train", help="train a WordPiece, BPE or Unigram tokenizer on a corpus",
        description="Train a tokenizer on a corpus (the same readers as --data.corpus) and save "
        "it as a Hugging Face tokenizer folder, usable as --data.tokenizer DIR.",
        epilog=TOKENIZER_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("corpus", nargs="+",
                       help="'bundled', .txt/.jsonl/.parquet files (gz allowed), folders or globs")
    train.add_argument("--type", choices=("wordpiece", "bpe", "unigram"), default="wordpiece",
                       help="tokenizer model (default: wordpiece)")
    train.add_argument("--vocab-size", type=int, default=8192, metavar="N",
                       help="vocabulary size (default: 8192)")
    train.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    train.add_argument("--no-lowercase", action="store_true", help="keep the case of the text")
    train.add_argument("--line-per-document", action="store_true",
                       help=".txt: every line is a document (default: blank-line separated)")
    train.add_argument("--text-field", default="text",
                       help=".jsonl/.parquet: the text column (default: text)")
    train.add_argument("--max-documents", type=int, default=None, metavar="N",
                       help="use only the first N documents")


def _print_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


def cmd_plugins() -> int:
    registry = get_registry()
    rows = [
        (spec.name, spec.plugin.name, f"{spec.plugin.distribution} {spec.plugin.version}",
         spec.description)
        for spec in sorted(registry.objectives.values(), key=lambda s: s.name)
    ]
    _print_table(rows, ("OBJECTIVE", "PLUGIN", "DISTRIBUTION", "DESCRIPTION"))
    for info, error in registry.failed:
        print(f"failed: {info}: {error}")
    return 0


def cmd_recipes() -> int:
    registry = get_registry()
    rows = []
    for recipe in registry.recipes.values():
        spec = registry.objective_for_class_path(recipe.class_path)
        rows.append((recipe.name, spec.name if spec else f"? ({recipe.class_path})",
                     recipe.description))
    _print_table(rows, ("RECIPE", "OBJECTIVE", "DESCRIPTION"))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from plmkit.export import export_checkpoint

    options = {"generator": True} if args.generator else {}
    out = export_checkpoint(args.checkpoint, args.out_dir, **options)
    print(f"exported to {out} (load it with transformers.AutoModel.from_pretrained('{out}'))")
    return 0


def _eval_config(args: argparse.Namespace):
    from plmkit.evaluate import EvalConfig

    for flag in ("max_length", "batch_size"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise PlmkitError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.max_train < 0:
        raise PlmkitError("--max-train must be 0 (all) or a positive number")
    return EvalConfig(
        probe=args.probe, pooling=args.pooling, max_length=args.max_length,
        max_train=args.max_train or None, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, progress=not args.no_progress,
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from plmkit.evaluate import check_model, evaluate, load_task

    config = _eval_config(args)
    check_model(args.model)  # before the task is read
    task = load_task(args.task, eval_split=args.split, text_column=args.text_column,
                     label_column=args.label_column, seed=args.seed)
    result = evaluate(args.model, task, baseline=args.baseline, config=config)
    print(result.table())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import shlex

    from plmkit.compare import compare, parse_budget

    budget = parse_budget(args.budget)
    if args.points < 1:
        raise PlmkitError("--points must be at least 1")
    report = compare(
        args.recipes, budget, args.out, points=args.points, task=args.task,
        config=_eval_config(args), fit_args=shlex.split(args.fit_args),
        random_init=not args.no_random_init,
    )
    print(report.markdown())
    print(f"wrote {report.paths['markdown']}, {report.paths['plot']} and "
          f"{report.paths['json']}", file=sys.stderr)
    return 0


def cmd_tokenizer(args: argparse.Namespace) -> int:
    if args.tokenizer_command != "train":
        _top_parser().parse_args(["tokenizer", "--help"])
        return 0
    from plmkit.data.corpus import load_documents
    from plmkit.data.tokenizer import train_tokenizer

    if args.vocab_size < 16:
        raise PlmkitError(f"--vocab-size must be at least 16, got {args.vocab_size}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise PlmkitError(f"--out {out} is a file; pass a folder")
    corpus = args.corpus[0] if len(args.corpus) == 1 else args.corpus
    docs = load_documents(corpus, args.text_field, args.line_per_document)
    if args.max_documents is not None:
        docs = docs.select(range(min(args.max_documents, len(docs))))
    print(f"training a {args.type} tokenizer (vocab {args.vocab_size}) on {len(docs)} documents",
          file=sys.stderr)
    tokenizer = train_tokenizer(iter(docs["text"]), args.type, args.vocab_size,
                                lowercase=not args.no_lowercase, length=len(docs),
                                show_progress=True)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    print(f"saved a {args.type} tokenizer with {len(tokenizer)} entries to {out}; "
          f"train with it: plmkit fit --recipe bert_tiny --data.tokenizer {out}")
    return 0


# --------------------------------------------------------------------------- fit / validate
def resolve_recipe(name_or_path: str) -> tuple[str, Path]:
    """Find a recipe by name (packaged or from a plugin) or path; check its YAML and objective."""
    registry = get_registry()
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise PlmkitError(f"recipe file {path} does not exist; run 'plmkit recipes'")
        name = path.stem
    else:
        spec = registry.recipe(name_or_path)
        name, path = spec.name, spec.path
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise PlmkitError(
            f"recipe {path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}; fix the file"
        ) from exc
    if not isinstance(config, dict):
        raise PlmkitError(f"recipe {path} must be a mapping with model/data/trainer sections")
    model = config.get("model")
    class_path = model.get("class_path") if isinstance(model, dict) else None
    if class_path and registry.objective_for_class_path(class_path) is None:
        module = class_path.rsplit(".", 1)[0]
        raise PlmkitError(
            f"recipe '{name}' trains {class_path}, which no installed plugin provides; install "
            f"the plugin that provides module '{module}' (see 'plmkit plugins')"
        )
    return name, path


def _rewrite_recipe(argv: list[str]) -> tuple[list[str], str | None]:
    """``fit ... --recipe X ...`` -> ``fit --config <X.yaml> ... --recipe X ...``.

    Idempotent: DDP re-executes the (already rewritten) command line in each process.
    """
    if len(argv) > 2 and argv[1] == "--config" and "--recipe" in argv:
        return argv, argv[argv.index("--recipe") + 1]
    for i, arg in enumerate(argv):
        value = None
        if arg == "--recipe" and i + 1 < len(argv):
            value, rest = argv[i + 1], argv[:i] + argv[i + 2 :]
        elif arg.startswith("--recipe="):
            value, rest = arg.split("=", 1)[1], argv[:i] + argv[i + 1 :]
        if value is not None:
            name, path = resolve_recipe(value)
            return [rest[0], "--config", str(path), *rest[1:], "--recipe", name], name
    return argv, None


def run_lightning(argv: list[str]) -> int:
    from plmkit.lightning_cli import PlmkitCLI

    argv, recipe = _rewrite_recipe(argv)
    # LightningCLI reads sys.argv, and Lightning's DDP launcher re-runs it in every process.
    saved = sys.argv
    sys.argv = [saved[0] if saved else "plmkit", *argv]
    try:
        PlmkitCLI.run(recipe)
    finally:
        sys.argv = saved
    return 0


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the message."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _configure_logging() -> None:
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("plmkit: %(levelname)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(os.environ.get("PLMKIT_LOG_LEVEL", "INFO").upper())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``plmkit`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not log.handlers:
        _configure_logging()
    try:
        if argv and argv[0] in ("fit", "validate"):
            if "-h" in argv or "--help" in argv:
                try:
                    return run_lightning(argv)
                finally:  # LightningCLI's help has no examples: add them after it
                    print("\n" + (FIT_HELP if argv[0] == "fit" else VALIDATE_HELP))
            return run_lightning(argv)
        args = _top_parser().parse_args(argv)
        if args.command == "plugins":
            return cmd_plugins()
        if args.command == "recipes":
            return cmd_recipes()
        if args.command == "export":
            return cmd_export(args)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "compare":
            return cmd_compare(args)
        if args.command == "tokenizer":
            return cmd_tokenizer(args)
        _top_parser().print_help()
        return 0
    except PlmkitError as exc:
        print(f"plmkit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("plmkit: interrupted", file=sys.stderr)
        return 130


