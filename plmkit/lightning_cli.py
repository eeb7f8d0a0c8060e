"""LightningCLI subclass behind ``plmkit fit`` and ``plmkit validate``.

It adds ``--recipe`` (a default config file: :class:`RecipeAction` resolves a recipe name or
path through the registry and loads it like ``--config``, before every other flag), a
checkpoint callback exposed as ``--checkpoint.*``, a default precision (bf16 on GPUs that have
it, :func:`default_precision`), and one stable run folder (``runs/<recipe>`` unless
``--trainer.default_root_dir`` says otherwise, so ``--ckpt_path last`` finds the run)::

    <run dir>/config.yaml        the resolved config
    <run dir>/tokenizer/         the run's tokenizer
    <run dir>/checkpoints/       every-N-steps checkpoints and last.ckpt
    <run dir>/logs/version_K/    TensorBoard events and metrics.csv, one folder per attempt
                                 (loggers given as --trainer.logger write under logs/ too)

Checkpoints are written atomically (:mod:`plmkit.checkpoint_io`), strategies are picked with one
flag (:mod:`plmkit.distributed`, docs/distributed.md), and a resume is checked before anything
is written: the checkpoint's objective and tokenizer must match the command line.

It also turns argument errors into one-line PlmkitErrors.

Python callers use :func:`resolved_config` (the merged config a command line would train with)
and :func:`fit` (train, return the run folder) instead of going through the ``plmkit`` command.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import sys
import warnings
from argparse import Action
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ActionConfigFile, ArgumentError, Namespace, set_parsing_settings
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from plmkit.callbacks import display, monitors
from plmkit.checkpoint_io import AtomicCheckpointIO, PlmkitModelCheckpoint
from plmkit.data.datamodule import PretrainDataModule
from plmkit.data.tokenizer import (
    add_special_tokens,
    load_tokenizer,
    tokenizer_digest,
    tokenizer_from_state,
)
from plmkit.distributed import (  # also registers --trainer.strategy fsdp2
    default_precision,
    resolve_strategy,
)
from plmkit.errors import PlmkitError, argument_error
from plmkit.export import read_checkpoint
from plmkit.objective import Objective
from plmkit.pretrained import use_init_from
from plmkit.registry import get_registry


class SaveTokenizer(Callback):
    """Writes the run's tokenizer to ``<run dir>/tokenizer`` when training starts."""

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero and pl_module.tokenizer is not None:
            path = Path(trainer.default_root_dir) / "tokenizer"
            pl_module.tokenizer.save_pretrained(str(path))


class SaveRunConfig(SaveConfigCallback):
    """Writes the resolved config to ``<run dir>/config.yaml``, beside ``checkpoints/``."""

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / self.config_filename
            path.parent.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, str(path), skip_none=False, overwrite=True,
                             multifile=False)


class _RunParser(LightningArgumentParser):
    """LightningCLI's parser, where a logger's ``save_dir`` (required by TensorBoard's and CSV's)
    may be left out: :meth:`PlmkitCLI._place_loggers` sets it to the run folder."""

    def validate(self, namespace: Namespace, *args: Any, **kwargs: Any) -> None:
        namespace = namespace.clone()
        for key in ("trainer.logger", *(f"{sub}.trainer.logger" for sub in ("fit", "validate"))):
            given = namespace.get(key)
            for logger in given if isinstance(given, list) else [given]:
                args_ = logger.get("init_args") if isinstance(logger, Namespace) else None
                if isinstance(args_, Namespace) and "save_dir" in args_ and args_.save_dir is None:
                    args_.save_dir = "."  # in this copy only, to pass the check
        super().validate(namespace, *args, **kwargs)


class PlmkitCLI(LightningCLI):
    """``plmkit fit|validate``: LightningCLI with recipes, a stable run folder and resume."""

    def __init__(self, args: Sequence[str] | None = None, parse_only: bool = False) -> None:
        """Parse ``args`` (default: ``sys.argv``) and run the subcommand; ``parse_only`` stops
        after parsing (``self.config``), instantiating nothing."""
        get_registry()  # load plugins first so recipe class paths resolve
        # the attribute docstrings of the typed config blocks (plmkit.config) become --help
        set_parsing_settings(docstring_parse_attribute_docstrings=True)
        self._parse_only = parse_only
        argv = _recipe_first(sys.argv[1:] if args is None else list(args))
        command = f"plmkit {argv[0] if argv[:1] == ['validate'] else 'fit'}"
        try:
            super().__init__(
                Objective,
                PretrainDataModule,
                subclass_mode_model=True,
                save_config_callback=SaveRunConfig,
                save_config_kwargs={"save_to_log_dir": False},
                parser_class=_RunParser,
                parser_kwargs={
                    name: {"exit_on_error": False, "description": desc}
                    for name, desc in (("fit", "Pretrain a language model."),
                                       ("validate", "Validate a checkpoint."))
                } | {"exit_on_error": False, "prog": "plmkit"},
                seed_everything_default=0,
                trainer_defaults={"max_steps": 1000, "log_every_n_steps": 10},
                args=argv,
            )
        except ArgumentError as exc:
            flags = {f"{name}.{action.dest}": action.option_strings[-1]
                     for name, parser in getattr(self, "_subcommand_parsers", {}).items()
                     for action in parser._actions if action.option_strings}
            flags |= {f"{name}.model": "--recipe (or --model)" for name in self.subcommands()}
            raise argument_error(str(exc), command, flags) from exc

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        super()._add_subcommands(parser, **kwargs)
        for name, subparser in self._subcommand_parsers.items():
            subparser.prog = f"plmkit {name}"  # jsonargparse's would be 'plmkit [options] fit'

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # no warning about args beside sys.argv: plmkit passes its own argv in-process
        self.config = parser.parse_args(args)
        trainer = self.config[self.config["subcommand"]]["trainer"]
        if trainer.get("precision") is None:  # recorded in config.yaml as it ran
            trainer["precision"] = default_precision(trainer.get("accelerator") or "auto")

    def _set_seed(self) -> None:
        if not self._parse_only:
            super()._set_seed()

    def instantiate_classes(self) -> None:
        if self._parse_only:
            return
        self._place_loggers(self.config[self.subcommand]["trainer"])
        try:
            super().instantiate_classes()
        except ValueError as exc:
            # jsonargparse wraps an objective's own one-line error (a bad encoder size...)
            cause = _plmkit_cause(exc)
            if cause is not None:
                raise cause from None
            missing = _plmkit_cause(exc, ModuleNotFoundError)  # W&B's logger without wandb
            if missing is None:
                raise
            raise PlmkitError(f"a class given on the command line needs a package that is not "
                              f"installed: {_first_line(missing)}") from None

    def _run_subcommand(self, subcommand: str) -> None:
        if not self._parse_only:
            super()._run_subcommand(subcommand)

    @property
    def recipe(self) -> str | None:
        """The ``--recipe`` name of the parsed command, if any."""
        return self.config[self.config["subcommand"]].get("recipe")

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {
            "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
            "validate": {"model", "dataloaders", "datamodule"},
        }

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--recipe", action=RecipeAction, default=None,
            help="recipe name ('plmkit recipes') or .yaml path: a config file loaded first, "
            "wherever it stands, so every other flag (--config too) overrides it",
        )
        parser.add_argument(
            "--overwrite", type=bool, default=False,
            help="start a new run in a run folder that already holds checkpoints",
        )
        parser._option_string_actions["--trainer.precision"].help = (  # not Lightning's 32-true
            "32-true, bf16-mixed, 16-mixed, 64-true ...; default: bf16-mixed on a CUDA GPU with "
            "bf16 arithmetic (Ampere or newer), else 32-true")
        parser.add_lightning_class_args(PlmkitModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.every_n_train_steps": 500,
            "checkpoint.save_last": True,
            "checkpoint.save_top_k": 1,
            # always last.ckpt, never last-v1.ckpt: a run folder that was moved or copied
            # would otherwise resume into a new name and '--ckpt_path last' find the old one
            "checkpoint.enable_version_counter": False,
        })

    def _parse_ckpt_path(self) -> None:
        # Lightning would apply the checkpoint's hyperparameters over the recipe; plmkit
        # instead checks in before_fit that the checkpoint matches the configured objective.
        return

    def _run_dir(self, config: dict[str, Any]) -> Path:
        root = config.get("default_root_dir")
        if root:
            return Path(root)
        model = self.config[self.subcommand].get("model")  # before it is instantiated, too
        spec = get_registry().objective_for_class_path(getattr(model, "class_path", "") or "")
        return Path("runs") / (self.recipe or (spec.name if spec else None) or "run")

    def _place_loggers(self, trainer: Namespace) -> None:
        """Points the loggers given as ``--trainer.logger`` at the run folder, where the
        arguments that place their files are left at their defaults: TensorBoard and CSV write
        to ``<run dir>/logs/version_K``, others (W&B, MLflow ...) under ``<run dir>/logs``."""
        given = trainer.get("logger")
        loggers = [g for g in (given if isinstance(given, list) else [given])
                   if isinstance(g, Namespace) and g.get("class_path")]
        if not loggers:
            return
        run_dir = self._run_dir(trainer)
        version = _next_version(run_dir)
        placed_csv = []
        for logger in loggers:
            module, _, name = logger.class_path.rpartition(".")
            cls = getattr(importlib.import_module(module), name)
            args = logger.get("init_args") or Namespace()
            defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
            if "save_dir" not in defaults or args.get("save_dir") not in (None,
                                                                         defaults["save_dir"]):
                continue
            if issubclass(cls, (TensorBoardLogger, CSVLogger)):
                args["save_dir"] = str(run_dir)
                if args.get("name") == defaults.get("name"):
                    args["name"] = "logs"
                if args.get("version") is None:
                    args["version"] = version
                if issubclass(cls, CSVLogger):
                    placed_csv.append(logger)
            else:  # './mlruns' -> <run dir>/logs/mlruns, W&B's '.' -> <run dir>/logs
                args["save_dir"] = str(run_dir / "logs" / Path(str(defaults["save_dir"])).name)
            logger["init_args"] = args
        if isinstance(given, list):  # CSV first, as for the default loggers
            given.sort(key=lambda logger: not any(logger is csv for csv in placed_csv))

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Any:
        run_dir = self._run_dir(config)
        config["default_root_dir"] = str(run_dir)
        if config.get("logger") in (None, True):
            # one version folder per attempt (a resume adds one), shared by both loggers; CSV
            # first: it warns about a folder that TensorBoard has already written to
            version = _next_version(run_dir)
            config["logger"] = [
                CSVLogger(str(run_dir), name="logs", version=version),
                TensorBoardLogger(str(run_dir), name="logs", version=version),
            ]
        for callback in callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = str(run_dir / "checkpoints")
        logging = config.get("logger") not in (None, False, [])
        given = config.get("callbacks")  # --trainer.callbacks
        given = given if isinstance(given, list) else [given] if given else []
        callbacks = [*callbacks, SaveTokenizer(), *monitors([*given, *callbacks], logging),
                     *display([*given, *callbacks], config.get("enable_progress_bar") is not False,
                              config.get("enable_model_summary") is not False)]
        config["strategy"] = resolve_strategy(config.get("strategy", "auto"))
        config["plugins"] = _with_atomic_checkpoint_io(config.get("plugins"),
                                                       config.get("strategy"))
        try:
            return super()._instantiate_trainer(config, callbacks)
        # e.g. FSDPStrategy on CPU, an unknown strategy name, devices that do not exist
        except (MisconfigurationException, ValueError) as exc:
            hint = ("; on CPU use --trainer.strategy fsdp2 or ddp"
                    if "fsdp" in str(exc).lower() else "")
            raise PlmkitError(f"invalid trainer settings: {_first_line(exc)}{hint}") from exc

    def _checkpoint_dir(self) -> Path:
        callback = self.trainer.checkpoint_callback
        if callback is not None and callback.dirpath:
            return Path(callback.dirpath)
        return Path(self.trainer.default_root_dir) / "checkpoints"

    def _resolve_ckpt(self) -> str | None:
        sub = self.config_init[self.subcommand]
        ckpt_path = sub.get("ckpt_path")
        if ckpt_path in (None, ""):
            return None
        if ckpt_path == "auto":  # job schedulers re-submit one command: resume if there is a run
            if not (self._checkpoint_dir() / "last.ckpt").is_file():
                sub["ckpt_path"] = None
                return None
            ckpt_path = "last"
        if ckpt_path == "last":
            path = self._checkpoint_dir() / "last.ckpt"
            if not path.is_file():
                raise PlmkitError(
                    f"no checkpoint to resume: {path} does not exist; start the run without "
                    "--ckpt_path or point --trainer.default_root_dir at the run folder"
                )
        else:
            path = Path(ckpt_path)
        ckpt = read_checkpoint(path)
        meta = ckpt["plmkit"]
        if meta.get("objective") != self.model.objective_name:
            raise PlmkitError(
                f"checkpoint {path} was trained with objective '{meta.get('objective')}', not "
                f"'{self.model.objective_name}'; resume it with its own recipe"
            )
        stored = tokenizer_from_state(meta)
        self._check_tokenizer(stored, path)
        self.datamodule.use_tokenizer(stored)
        sub["ckpt_path"] = str(path)
        return str(path)

    def _check_tokenizer(self, stored: Any, path: Path) -> None:
        """A resume trains with the checkpoint's tokenizer; an explicit ``--data.tokenizer``
        must be that same tokenizer (after the objective's special tokens are added)."""
        given_path = getattr(self.datamodule, "tokenizer_path", None)
        if not given_path:
            return
        given = load_tokenizer(given_path)
        add_special_tokens(given, self.model.special_tokens())
        if tokenizer_digest(given) != tokenizer_digest(stored):
            raise PlmkitError(
                f"--data.tokenizer {given_path} ({len(given)} entries) is not the tokenizer "
                f"checkpoint {path} was trained with ({len(stored)} entries); resume without "
                "--data.tokenizer (the checkpoint's tokenizer is used) or start a new run"
            )

    def before_fit(self) -> None:
        self.datamodule.check_max_length(self.model)  # before anything is written
        ckpt = self._resolve_ckpt()
        use_init_from(self.model, self.datamodule, resuming=ckpt is not None)
        overwrite = self.config_init[self.subcommand].get("overwrite")
        existing = sorted(self._checkpoint_dir().glob("*.ckpt"))
        if ckpt is None and existing and not overwrite:
            raise PlmkitError(
                f"{self.trainer.default_root_dir} already holds a run ({existing[0].name}); "
                "resume it with --ckpt_path last, start over with --overwrite true, or choose "
                "another --trainer.default_root_dir"
            )

    def before_validate(self) -> None:
        ckpt = self._resolve_ckpt()
        use_init_from(self.model, self.datamodule, resuming=ckpt is not None)

    def after_fit(self) -> None:
        last = self._checkpoint_dir() / "last.ckpt"
        if self.trainer.is_global_zero and last.exists():
            print(f"checkpoints: {self._checkpoint_dir()}", file=sys.stderr)
            print(f"export with: plmkit export {last} <out_dir>", file=sys.stderr)


def _next_version(run_dir: Path) -> int:
    """The log version of a new attempt in ``run_dir``: ``logs/version_K`` for K attempts."""
    return len(list((run_dir / "logs").glob("version_*")))


def _recipe_first(argv: list[str]) -> list[str]:
    """``argv`` with ``--recipe`` moved right after the subcommand: the recipe is the base that
    every other flag (``--config`` too) overrides, wherever it stands on the command line."""
    at = next((i for i, arg in enumerate(argv) if arg in ("fit", "validate")), None)
    if at is None:
        return argv
    recipe: list[str] = []
    rest: list[str] = []
    i = at + 1
    while i < len(argv):
        if argv[i] == "--recipe" and i + 1 < len(argv):
            recipe += argv[i:i + 2]
            i += 2
            continue
        (recipe if str(argv[i]).startswith("--recipe=") else rest).append(argv[i])
        i += 1
    return [*argv[:at + 1], *recipe, *rest]


def resolve_recipe(name_or_path: str) -> tuple[str, Path]:
    """Find a recipe by name (from a plugin) or path; check its YAML and objective."""
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


class RecipeAction(Action):
    """``--recipe NAME|PATH``: a config file found through the registry.

    It loads the recipe like ``--config`` and records the recipe's name under ``recipe``,
    which names the run folder. :class:`PlmkitCLI` moves it to the front of the command line
    (:func:`_recipe_first`), so every other flag overrides it, before or after it.
    In a config file, ``recipe:`` is only that name (the file already holds the values).
    """

    def __call__(self, parser: Any, cfg: Any, values: Any, option_string: str | None = None):
        name, path = resolve_recipe(str(values))
        ActionConfigFile.apply_config(parser, cfg, self.dest, str(path))
        cfg[self.dest] = name


@contextlib.contextmanager
def _argv(args: list[str]) -> Iterator[None]:
    # Lightning's DDP launcher re-runs sys.argv in every process: make it this command
    saved = sys.argv
    sys.argv = [saved[0] if saved else "plmkit", *args]
    try:
        yield
    finally:
        sys.argv = saved


def resolved_config(recipe: str | None, overrides: Sequence[str] = (),
                    subcommand: str = "fit") -> dict[str, Any]:
    """The merged config ``plmkit fit --recipe RECIPE OVERRIDES`` would train with, as the
    plain dict ``--print_config`` shows (``model: {class_path, init_args}``, ``trainer``, ...)."""
    args = [subcommand, *(["--recipe", recipe] if recipe else []), *overrides]
    cli = PlmkitCLI(args, parse_only=True)
    parser = cli._subcommand_parsers[subcommand]
    return yaml.safe_load(parser.dump(cli.config[subcommand], skip_none=False))


def fit(recipe: str | None, overrides: Sequence[str] = ()) -> Path:
    """Train like ``plmkit fit --recipe RECIPE OVERRIDES``; returns the run folder."""
    args = ["fit", *(["--recipe", recipe] if recipe else []), *overrides]
    with _argv(args), quiet():
        cli = PlmkitCLI(args)
    return Path(cli.trainer.default_root_dir)


def run(args: Sequence[str]) -> None:
    """``plmkit fit|validate ARGS`` (``args`` starts with the subcommand)."""
    with _argv(list(args)), quiet():
        PlmkitCLI()


class _LightningNotes(logging.Filter):
    """Drops Lightning's notes that a plmkit user cannot act on."""

    NOTES = (
        "💡 Tip:",  # Lightning's cloud products (LitLogger, litmodels)
        "Trainer already configured with model summary callbacks",  # plmkit's own summary
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOTES)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """While training from the command line, leave out what the user cannot act on: the
    notes :class:`_LightningNotes` drops and the FutureWarning torch (2.10 and later) raises
    for Lightning's own pytree code (``LeafSpec``)."""
    notes = _LightningNotes()
    # every rank_zero_info of Lightning goes through these loggers
    loggers = [logging.getLogger(f"lightning.{package}.utilities.rank_zero")
               for package in ("pytorch", "fabric")]
    for logger in loggers:
        logger.addFilter(notes)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`",
                                    category=FutureWarning, module=r"lightning\.")
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(notes)


def _with_atomic_checkpoint_io(plugins: Any, strategy: Any) -> list[Any]:
    """The trainer's plugins plus :class:`AtomicCheckpointIO`, unless a CheckpointIO is set."""
    if plugins is None:
        plugins = []
    elif not isinstance(plugins, list):
        plugins = [plugins]
    if any(isinstance(p, CheckpointIO) for p in plugins):
        return plugins
    if getattr(strategy, "_checkpoint_io", None) is not None:  # a strategy object with its own
        return plugins
    return [*plugins, AtomicCheckpointIO()]


def _plmkit_cause(exc: BaseException, kind: type[BaseException] = PlmkitError) -> Any:
    """The first exception of type ``kind`` in the chain of causes of ``exc``, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
