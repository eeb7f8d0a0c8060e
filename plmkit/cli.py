"""The ``plmkit`` command: fit / validate (LightningCLI) plus plugins, recipes, export,
evaluate, compare and tokenizer.

Every command is a jsonargparse parser, so each takes ``--config FILE`` and ``--print_config``.
``fit`` and ``validate`` go to the LightningCLI in :mod:`plmkit.lightning_cli` (whose
``--recipe NAME`` is a config file found through the registry); the others are subcommands of
the parser built by :func:`_top_parser`. Argument errors become one line,
``plmkit: error: ...``, with exit status 2.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from argparse import _SubParsersAction
from pathlib import Path
from typing import Any, Literal, NoReturn

from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter

from plmkit import __version__
from plmkit.errors import PlmkitError, argument_error
from plmkit.registry import get_registry

log = logging.getLogger("plmkit")

EXAMPLES = """examples:
  plmkit recipes                                   list the recipes
  plmkit fit --recipe bert_tiny                    pretrain BERT-Tiny on the bundled corpus
  plmkit fit --recipe bert_tiny --trainer.max_steps 50 --data.corpus 'my/*.txt'
  plmkit fit --recipe bert_tiny --ckpt_path last   resume the run in runs/bert_tiny
  plmkit fit --recipe bert_tiny --ckpt_path auto   resume it if it exists, else start it
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
'wordnet' (gloss -> lexicographer category, held out of the bundled corpus), 'fortunes'
(fortune cookie -> category, a second task held out of all recipe tuning) or a .csv / .tsv /
.jsonl file with text and label columns (and optionally a split column: train / test)."""

COMPARE_HELP = """examples:
  plmkit compare --recipes electra_tiny bert_tiny --budget 2e13
  plmkit compare --recipes electra_tiny bert_tiny --budget 5min --probe
  plmkit compare --recipes electra_tiny bert_tiny --budget 1e13 --fit-args '--data.batch_size 16'

BUDGET is FLOPs (2e13, 2e13flops: steps = budget / (counted FLOPs per token x tokens per step)) or
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


class _Help(DefaultHelpFormatter):
    """jsonargparse's help, with descriptions and examples kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


class _Parser(ArgumentParser):
    """A jsonargparse parser whose errors are one line: ``plmkit: error: ...`` (exit 2)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Help)
        kwargs.setdefault("exit_on_error", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        names = _names(self)
        flags = {key: flag for key, (flag, _) in names.items()}
        # the top parser reports a subcommand's missing arguments (compare.budget): name the
        # subcommand, as its --help lists them
        progs = [prog for key, (_, prog) in names.items() if "." in key and key in message]
        command = max(progs, key=len, default=self.prog)
        raise argument_error(message, command.replace(" [options]", ""), flags) from ex


def _names(parser: ArgumentParser, prefix: str = "") -> dict[str, tuple[str, str]]:
    """Each key of ``parser`` and of its subcommands (``compare.budget``) -> what a user types
    for it (``--budget``; a positional argument's name) and the command it belongs to."""
    names: dict[str, tuple[str, str]] = {}
    for action in parser._actions:
        if isinstance(action, _SubParsersAction):
            for name, subparser in action.choices.items():
                names |= _names(subparser, f"{prefix}{name}.")
        elif action.option_strings:
            names[prefix + action.dest] = (action.option_strings[-1], parser.prog)
        else:
            names[prefix + action.dest] = (str(action.metavar or action.dest), parser.prog)
    return names


def _command(sub: Any, name: str, help: str, config: bool = True, **kwargs: Any) -> _Parser:
    """A subcommand parser with ``--config`` (and so ``--print_config``)."""
    parser = _Parser(prog=f"plmkit {name}", **kwargs)
    if config:
        parser.add_argument("--config", action=ActionConfigFile,
                            help="a YAML file with this command's options (see --print_config)")
    sub.add_subcommand(name, parser, help=help)
    parser.prog = f"{sub.parent_parser.prog} {name}"  # jsonargparse's: 'plmkit [options] NAME'
    return parser


def _top_parser(plugin_options: bool = False) -> _Parser:
    """The command line; ``plugin_options`` loads the plugins to add their export options.

    ``fit`` and ``validate`` are listed here for ``--help``; :func:`main` hands them to the
    LightningCLI (:mod:`plmkit.lightning_cli`), which has its own jsonargparse parser.
    """
    parser = _Parser(
        prog="plmkit",
        description="Pretrain language models with PyTorch Lightning, one plugin per method.",
        epilog=EXAMPLES,
    )
    parser.add_argument("--version", action="version", version=f"plmkit {__version__}")
    sub = parser.add_subcommands(dest="command", required=False, metavar="COMMAND")
    _command(sub, "fit", "pretrain (LightningCLI; 'plmkit fit --help' for all options)",
             config=False, description=FIT_HELP)
    _command(sub, "validate", "validate a checkpoint (LightningCLI)", config=False,
             description=VALIDATE_HELP)
    _command(
        sub, "plugins", "list the loaded plugins and their objectives",
        description="List each objective: name, plugin, distribution and version, description.",
        epilog="example: plmkit plugins",
    )
    _command(
        sub, "recipes", "list every recipe with its objective and description",
        description="List the recipes every plugin contributes, built-in ones included.",
        epilog="example: plmkit recipes",
    )
    export = _command(
        sub, "export", "write a checkpoint in Hugging Face format",
        description="Write model, config and tokenizer so AutoModel.from_pretrained loads them.",
        epilog="example: plmkit export runs/bert_tiny/checkpoints/last.ckpt out/bert_tiny\n\n"
        "Plugins add options for their own objectives: see 'options from plugins' above\n"
        "(each with the objectives it applies to in brackets).",
    )
    export.add_argument("checkpoint", type=str, help="a .ckpt file written by 'plmkit fit'")
    export.add_argument("out_dir", type=str, help="folder to write (created if missing)")
    if plugin_options:
        _add_export_options(export)
    _add_evaluate(sub)
    _add_compare(sub)
    _add_tokenizer(sub)
    return parser


def _add_export_options(parser: ArgumentParser) -> None:
    """The options plugins declare through the ``plmkit_export_options`` hook."""
    from plmkit.export import export_options

    group = parser.add_argument_group("options from plugins")
    for option in export_options().values():
        text = f"{option.help} [{', '.join(option.objectives)}]"
        if option.type is bool:
            group.add_argument(option.flag, dest=option.name, action="store_true", help=text)
        else:
            group.add_argument(option.flag, dest=option.name, type=option.type | None,
                               default=None, metavar=option.type.__name__.upper(), help=text)


def _add_evaluation_options(parser: ArgumentParser) -> None:
    parser.add_argument("--task", type=str, default="wordnet",
                        help="built-in task (wordnet, fortunes) or a .csv/.tsv/.jsonl file")
    parser.add_argument("--probe", action="store_true",
                        help="freeze the encoder and train a linear head on pooled features (fast)"
                        "; default: fine-tune the whole model")
    parser.add_argument("--max-train", type=int, default=2000, metavar="N",
                        help="use at most N training examples, 0 for all")
    parser.add_argument("--max-length", type=int, default=64, metavar="N",
                        help="tokens per text, longer ones are cut")
    parser.add_argument("--epochs", type=int | None, default=None,
                        help="passes over the training examples (default: 3, probe: 30)")
    parser.add_argument("--lr", type=float | None, default=None,
                        help="peak learning rate (default, fine-tuning: by the encoder's width, "
                        "1e-3 at hidden size 128, 3e-4 at 256, 1e-4 up to 768, 5e-5 above; "
                        "probe: 3e-3)")
    parser.add_argument("--batch-size", type=int | None, default=None,
                        help="examples per step (default: 32, probe: 256)")
    parser.add_argument("--pooling", type=Literal["cls", "mean", "last"] | None, default=None,
                        help="how a text's token states become one vector (default: the one "
                        "the model type's plugin chooses, else mean; cls: the first token, "
                        "last: the last real token)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--seeds", type=int, default=1, metavar="N",
                        help="train N times (seeds SEED, SEED+1, ...) and report the mean, the "
                        "standard deviation and min-max of the scores")
    parser.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                        help="hold out this seeded fraction of the training examples and score "
                        "the epoch with the best validation accuracy; 0: the last epoch")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--accelerator", type=str, default="auto",
                        help="where to train: auto (a GPU when there is one), cpu, gpu ...")
    parser.add_argument("--precision", type=str | None, default=None,
                        help="Lightning precision, as for 'plmkit fit' (32-true, bf16-mixed, "
                        "16-mixed ...; default: bf16-mixed on a GPU that supports it, else "
                        "32-true)")


def _add_evaluate(sub: Any) -> None:
    parser = _command(
        sub, "evaluate", "fine-tune or probe a pretrained model on a classification task",
        description="Fine-tune (or linearly probe) an exported or checkpointed model on a "
        "labelled text-classification task; report accuracy and macro-F1 on a held-out split.",
        epilog=EVALUATE_HELP,
    )
    parser.add_argument("model", type=str,
                        help="a folder from 'plmkit export' or a .ckpt from 'plmkit fit'")
    _add_evaluation_options(parser)
    parser.add_argument("--split", type=str, default="test",
                        help="the held-out split")
    parser.add_argument("--text-column", type=str, default="text",
                        help="task files: the text column")
    parser.add_argument("--label-column", type=str, default="label",
                        help="task files: the label column")
    parser.add_argument("--baseline", type=Literal["random"] | None, default=None,
                        help="also train the same architecture from random initialization and "
                        "print the gain from pretraining")
    parser.add_argument("--json", type=str | None, metavar="PATH", default=None,
                        help="also write the scores here")


def _add_compare(sub: Any) -> None:
    parser = _command(
        sub, "compare", "pretrain recipes under one compute budget and compare their scores",
        description="Pretrain each recipe under the same compute budget, evaluate intermediate "
        "checkpoints downstream and write a markdown table and a PNG plot.",
        epilog=COMPARE_HELP,
    )
    parser.add_argument("--recipes", type=str, nargs="+", required=True, metavar="RECIPE",
                        help="recipe names or .yaml paths ('plmkit recipes')")
    parser.add_argument("--budget", type=str, required=True,
                        help="FLOPs per recipe (2e13) or training wall time (90s, 5min, 1h)")
    parser.add_argument("--points", type=int, default=3,
                        help="checkpoints evaluated per recipe, evenly spaced")
    parser.add_argument("--out", type=str, default="runs/compare",
                        help="output folder")
    parser.add_argument("--fit-args", type=str, default="", metavar="FLAGS",
                        help="extra 'plmkit fit' flags for every recipe, one quoted string")
    parser.add_argument("--no-random-init", action="store_true",
                        help="skip the compute-0 point (the architecture from random init)")
    parser.add_argument("--retrain", action="store_true",
                        help="pretrain again even where OUT/RECIPE holds checkpoints of the same "
                        "recipe, fit args, budget and points (by default they are reused)")
    _add_evaluation_options(parser)


def _add_tokenizer(sub: Any) -> None:
    parser = _command(sub, "tokenizer", "tokenizer tools ('plmkit tokenizer train --help')",
                      config=False, description="Tokenizer tools.", epilog=TOKENIZER_HELP)
    tok_sub = parser.add_subcommands(dest="command", required=False, metavar="COMMAND")
    train = _command(
        tok_sub, "train", "train a WordPiece, BPE or Unigram tokenizer on a corpus",
        description="Train a tokenizer on a corpus (the same readers as --data.corpus) and save "
        "it as a Hugging Face tokenizer folder, usable as --data.tokenizer DIR.",
        epilog=TOKENIZER_HELP,
    )
    train.add_argument("corpus", type=str, nargs="+", metavar="CORPUS",
                       help="'bundled', .txt/.jsonl/.parquet files (gz allowed), folders or globs")
    train.add_argument("--type", type=Literal["wordpiece", "bpe", "unigram"],
                       default="wordpiece", help="tokenizer model")
    train.add_argument("--vocab-size", type=int, default=8192, metavar="N",
                       help="vocabulary size")
    train.add_argument("--out", type=str, required=True, metavar="DIR", help="folder to write")
    train.add_argument("--no-lowercase", action="store_true", help="keep the case of the text")
    train.add_argument("--line-per-document", action="store_true",
                       help=".txt: every line is a document (default: blank-line separated)")
    train.add_argument("--text-field", type=str, default="text",
                       help=".jsonl/.parquet: the text column")
    train.add_argument("--max-documents", type=int | None, default=None, metavar="N",
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


def cmd_export(args: Any) -> int:
    from plmkit.export import export_checkpoint, export_options

    options = {name: args.get(name) for name in export_options()
               if args.get(name) not in (None, False)}  # a bool option: only when given
    out = export_checkpoint(args.checkpoint, args.out_dir, **options)
    print(f"exported to {out} (load it with transformers.AutoModel.from_pretrained('{out}'))")
    return 0


def _eval_config(args: Any):
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
        accelerator=args.accelerator, precision=args.precision, seeds=args.seeds,
        val_fraction=args.val_fraction,
    )


def cmd_evaluate(args: Any) -> int:
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


def cmd_compare(args: Any) -> int:
    import shlex

    from plmkit.compare import compare, parse_budget

    budget = parse_budget(args.budget)
    if args.points < 1:
        raise PlmkitError("--points must be at least 1")
    report = compare(
        args.recipes, budget, args.out, points=args.points, task=args.task,
        config=_eval_config(args), fit_args=shlex.split(args.fit_args),
        random_init=not args.no_random_init, retrain=args.retrain,
    )
    print(report.markdown())
    print(f"wrote {report.paths['markdown']}, {report.paths['plot']} and "
          f"{report.paths['json']}", file=sys.stderr)
    return 0


def cmd_tokenizer(args: Any) -> int:
    if args.get("command") != "train":
        _top_parser().parse_args(["tokenizer", "--help"])
        return 0
    args = args.train
    from plmkit.data.corpus import read_documents
    from plmkit.data.tokenizer import train_tokenizer

    if args.vocab_size < 16:
        raise PlmkitError(f"--vocab-size must be at least 16, got {args.vocab_size}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise PlmkitError(f"--out {out} is a file; pass a folder")
    corpus = args.corpus[0] if len(args.corpus) == 1 else args.corpus
    docs = read_documents(corpus, args.text_field, args.line_per_document)
    docs = itertools.islice(docs, args.max_documents)
    print(f"training a {args.type} tokenizer (vocab {args.vocab_size})", file=sys.stderr)
    tokenizer = train_tokenizer((text for text, _ in docs), args.type, args.vocab_size,
                                lowercase=not args.no_lowercase, show_progress=True)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    print(f"saved a {args.type} tokenizer with {len(tokenizer)} entries to {out}; "
          f"train with it: plmkit fit --recipe bert_tiny --data.tokenizer {out}")
    return 0


# --------------------------------------------------------------------------- fit / validate
def run_lightning(argv: list[str]) -> int:
    from plmkit.lightning_cli import run

    run(argv)
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
        parsed = _top_parser(plugin_options=argv[:1] == ["export"]).parse_args(argv)
        command = parsed.get("command")
        if command is None:
            _top_parser().print_help()
            return 0
        args = parsed[command]
        if command == "plugins":
            return cmd_plugins()
        if command == "recipes":
            return cmd_recipes()
        if command == "export":
            return cmd_export(args)
        if command == "evaluate":
            return cmd_evaluate(args)
        if command == "compare":
            return cmd_compare(args)
        return cmd_tokenizer(args)
    except PlmkitError as exc:
        print(f"plmkit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("plmkit: interrupted", file=sys.stderr)
        return 130


