"""LightningCLI subclass behind ``plmkit fit`` and ``plmkit validate``.

It adds ``--recipe`` (resolved by :mod:`plmkit.cli`), a checkpoint callback exposed as
``--checkpoint.*``, and one stable run folder (``runs/<recipe>`` unless
``--trainer.default_root_dir`` says otherwise, so ``--ckpt_path last`` finds the run)::

    <run dir>/config.yaml        the resolved config
    <run dir>/tokenizer/         the run's tokenizer
    <run dir>/checkpoints/       every-N-steps checkpoints and last.ckpt
    <run dir>/logs/version_K/    TensorBoard events and metrics.csv, one folder per attempt

Checkpoints are written atomically (:mod:`plmkit.checkpoint_io`), strategies are picked with one
flag (:mod:`plmkit.distributed`, docs/distributed.md), and a resume is checked before anything
is written: the checkpoint's objective and tokenizer must match the command line.

It also turns argument errors into one-line PlmkitErrors.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentError
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from plmkit.checkpoint_io import AtomicCheckpointIO, PlmkitModelCheckpoint
from plmkit.data.datamodule import PretrainDataModule
from plmkit.data.tokenizer import (
    add_special_tokens,
    load_tokenizer,
    tokenizer_digest,
    tokenizer_from_state,
)
from plmkit.distributed import resolve_strategy  # also registers --trainer.strategy fsdp2
from plmkit.errors import PlmkitError
from plmkit.export import read_checkpoint
from plmkit.objective import Objective
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


class PlmkitCLI(LightningCLI):
    """``plmkit fit|validate``: LightningCLI with recipes, a stable run folder and resume."""

    recipe: str | None = None

    @classmethod
    def run(cls, recipe: str | None) -> PlmkitCLI:
        """Parse ``sys.argv`` and run the subcommand."""
        get_registry()  # load plugins first so recipe class paths resolve
        cls.recipe = recipe
        try:
            return cls(
                Objective,
                PretrainDataModule,
                subclass_mode_model=True,
                save_config_callback=SaveRunConfig,
                save_config_kwargs={"save_to_log_dir": False},
                parser_kwargs={
                    name: {"exit_on_error": False, "description": desc}
                    for name, desc in (("fit", "Pretrain a language model."),
                                       ("validate", "Validate a checkpoint."))
                } | {"exit_on_error": False},
                seed_everything_default=0,
                trainer_defaults={"max_steps": 1000, "log_every_n_steps": 10},
            )
        except ArgumentError as exc:
            raise PlmkitError(_one_line(str(exc))) from exc

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {
            "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
            "validate": {"model", "dataloaders", "datamodule"},
        }

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--recipe", type=str | None, default=None,
            help="recipe name ('plmkit recipes') or .yaml path, applied before other flags",
        )
        parser.add_argument(
            "--overwrite", type=bool, default=False,
            help="start a new run in a run folder that already holds checkpoints",
        )
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
        name = self.recipe or getattr(self.model, "objective_name", None) or "run"
        return Path("runs") / name

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Any:
        run_dir = self._run_dir(config)
        config["default_root_dir"] = str(run_dir)
        if config.get("logger") in (None, True):
            # one version folder per attempt (a resume adds one), shared by both loggers
            versions = list((run_dir / "logs").glob("version_*"))
            version = f"version_{len(versions)}"
            config["logger"] = [
                TensorBoardLogger(str(run_dir), name="logs", version=version),
                CSVLogger(str(run_dir), name="logs", version=version),
            ]
        for callback in callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = str(run_dir / "checkpoints")
        callbacks = [*callbacks, SaveTokenizer()]
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
        overwrite = self.config_init[self.subcommand].get("overwrite")
        existing = sorted(self._checkpoint_dir().glob("*.ckpt"))
        if ckpt is None and existing and not overwrite:
            raise PlmkitError(
                f"{self.trainer.default_root_dir} already holds a run ({existing[0].name}); "
                "resume it with --ckpt_path last, start over with --overwrite true, or choose "
                "another --trainer.default_root_dir"
            )

    def before_validate(self) -> None:
        self._resolve_ckpt()

    def after_fit(self) -> None:
        last = self._checkpoint_dir() / "last.ckpt"
        if self.trainer.is_global_zero and last.exists():
            print(f"checkpoints: {self._checkpoint_dir()}", file=sys.stderr)
            print(f"export with: plmkit export {last} <out_dir>", file=sys.stderr)


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


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _one_line(message: str) -> str:
    """jsonargparse's nested, multi-line error -> ``invalid value for a.b: <innermost reason>``."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    keys = [m.group(1) for line in lines if (m := re.match(r'Parser key "([^"]+)"', line))]
    last_key = max((i for i, ln in enumerate(lines) if ln.startswith("Parser key")), default=-1)
    detail = lines[last_key + 1] if 0 <= last_key < len(lines) - 1 else ""
    if keys:
        key = ".".join(dict.fromkeys(k for k in keys))
        inline = lines[last_key].split(":", 1)[1].strip() if ":" in lines[last_key] else ""
        text = f"invalid value for {key}: {inline or detail}"
    else:
        text = lines[0] if lines else "invalid arguments"
    return f"{text}; run 'plmkit fit --help'"
