"""The ``plmkit`` command: fit / validate (LightningCLI) plus plugins, recipes and export.

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
"""

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
    return parser


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
            return run_lightning(argv)
        args = _top_parser().parse_args(argv)
        if args.command == "plugins":
            return cmd_plugins()
        if args.command == "recipes":
            return cmd_recipes()
        if args.command == "export":
            return cmd_export(args)
        _top_parser().print_help()
        return 0
    except PlmkitError as exc:
        print(f"plmkit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("plmkit: interrupted", file=sys.stderr)
        return 130


