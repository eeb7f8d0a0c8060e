"""Equal-compute comparison of recipes: pretrain each under one budget, evaluate, plot.

``plmkit compare --recipes electra_tiny bert_tiny --budget 2e13`` runs, for every recipe:

1. the compute model: the recipe's objective is built with the run's tokenizer and its
   training FLOPs per token at ``max_length`` are counted
   (:func:`plmkit.throughput.flops_per_token`); one optimizer step processes
   ``batch_size x max_length x accumulate_grad_batches x devices`` tokens;
2. pretraining (``plmkit fit``, in ``OUT/<recipe>``) under the budget:

   * a **FLOPs** budget (``2e13``) becomes ``max_steps = budget / (flops_per_token x tokens per
     step)``; a checkpoint is kept every ``max_steps / points`` steps, so the learning-rate
     schedule decays over the whole budget;
   * a **time** budget (``90s``, ``5min``, ``1h``) is training wall time
     (``--trainer.max_time``), run in ``points`` stages that resume one another, each ending
     with a checkpoint; ``max_steps`` is set so high that the schedule is constant after the
     warmup (pass ``--fit-args '--trainer.max_steps N'`` to change that);

3. downstream evaluation (:mod:`plmkit.evaluate`) of every kept checkpoint and, at compute 0,
   of the same architecture from random initialization.

It writes ``OUT/compare.md`` (a markdown table), ``OUT/compare.png`` (score against compute,
one line per recipe) and ``OUT/compare.json``; every point carries the FLOPs, the tokens seen
and the wall time of pretraining up to it. Validation during pretraining is off
(``--trainer.limit_val_batches 0``) so that it does not eat into a time budget.

A recipe's pretraining is reused when ``OUT/<recipe>/compare-run.json`` says it was made with
the same resolved config (recipe, ``--fit-args``, corpus path), budget and points and its
checkpoints are all there; ``retrain`` (``--retrain``) pretrains again.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from plmkit.errors import PlmkitError
from plmkit.evaluate import EvalConfig, EvalResult, Task, load_task, score_model

log = logging.getLogger("plmkit")

_MARKER = ".plmkit-compare"
_RUN_FILE = "compare-run.json"
_TIME_UNITS = {"s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1, "m": 60, "min": 60,
               "mins": 60, "minute": 60, "minutes": 60, "h": 3600, "hr": 3600, "hrs": 3600,
               "hour": 3600, "hours": 3600}


@dataclass(frozen=True)
class Budget:
    """A compute budget per recipe: ``kind`` ``"flops"`` (FLOPs) or ``"time"`` (seconds)."""

    kind: Literal["flops", "time"]
    value: float

    def __str__(self) -> str:
        if self.kind == "flops":
            return f"{self.value:.3g} FLOPs"
        return f"{self.value / 60:.3g} min of training"


def parse_budget(text: str) -> Budget:
    """``"2e13"`` / ``"2e13flops"`` -> FLOPs; ``"90s"``, ``"5min"``, ``"1.5h"`` -> wall time."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?(?:e[+-]?\d+)?)\s*([a-z]*)\s*", text.lower())
    if not match:
        raise PlmkitError(
            f"cannot read budget '{text}': write FLOPs (2e13) or time (90s, 5min, 1h)"
        )
    value, unit = float(match.group(1)), match.group(2)
    if value <= 0:
        raise PlmkitError(f"the budget must be positive, got '{text}'")
    if unit in ("", "flop", "flops"):
        if value < 1e6:
            raise PlmkitError(
                f"a budget of {value:g} FLOPs is far too small; for minutes write {value:g}min"
            )
        return Budget("flops", value)
    if unit in _TIME_UNITS:
        return Budget("time", value * _TIME_UNITS[unit])
    raise PlmkitError(f"unknown budget unit '{unit}': use flops, s, min or h")


# ------------------------------------------------------------------------------ compute


@dataclass
class CostModel:
    """What one optimizer step of a recipe costs."""

    objective: str
    flops_per_token: float
    tokens_per_step: int

    @property
    def flops_per_step(self) -> float:
        return self.flops_per_token * self.tokens_per_step


def resolved_config(recipe: str, fit_args: list[str]) -> dict[str, Any]:
    """The merged config ``plmkit fit --recipe RECIPE FIT_ARGS`` would train with."""
    from plmkit.lightning_cli import resolved_config as resolve

    return resolve(recipe, fit_args)


def cost_model(config: dict[str, Any]) -> CostModel:
    """Build the recipe's objective with its tokenizer and ask it what a step costs."""
    from plmkit.data.datamodule import PretrainDataModule
    from plmkit.registry import get_registry
    from plmkit.throughput import flops_per_token

    model = config["model"]
    spec = get_registry().objective_for_class_path(model["class_path"])
    if spec is None:
        raise PlmkitError(f"no installed plugin provides {model['class_path']}")
    objective = spec.cls(**(model.get("init_args") or {}))
    data_args = config.get("data") or {}
    data_args = data_args.get("init_args", data_args) if "class_path" in data_args else data_args
    data = PretrainDataModule(**data_args)
    tokenizer = data._resolve_tokenizer(objective.special_tokens())  # cached: fit reuses it
    objective.attach_tokenizer(tokenizer, data.max_length)
    objective.configure_model()
    trainer = config.get("trainer") or {}
    devices = trainer.get("devices")
    devices = devices if isinstance(devices, int) and devices > 0 else 1
    nodes = trainer.get("num_nodes") or 1
    accumulate = trainer.get("accumulate_grad_batches") or 1
    tokens = data.batch_size * data.max_length * accumulate * devices * nodes
    return CostModel(spec.name, flops_per_token(objective, data.max_length), tokens)


# ------------------------------------------------------------------------------ results


@dataclass
class Point:
    """One evaluated checkpoint (step 0: the architecture from random initialization).

    ``tokens`` and ``flops`` are counted up to the checkpoint; ``minutes`` is training time
    (time budgets only), ``wall_minutes`` the wall time from the start of pretraining (setup
    included) to the checkpoint. ``accuracy`` and ``macro_f1`` are means over the seeds.
    """

    recipe: str
    objective: str
    step: int
    flops: float
    minutes: float | None
    accuracy: float
    macro_f1: float
    checkpoint: str | None
    tokens: int = 0
    wall_minutes: float = 0.0
    accuracy_std: float = 0.0
    macro_f1_std: float = 0.0
    per_seed: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Report:
    """The comparison: its settings, every evaluated point, and where the files are."""

    budget: Budget
    task: str
    split: str
    config: EvalConfig
    command: str
    date: str
    points: list[Point] = field(default_factory=list)
    costs: dict[str, CostModel] = field(default_factory=dict)
    fit_seconds: dict[str, float] = field(default_factory=dict)
    reused: dict[str, bool] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)

    def final(self) -> list[Point]:
        """Each recipe's last point, best macro-F1 first."""
        last: dict[str, Point] = {}
        for point in self.points:
            if point.recipe not in last or point.step >= last[point.recipe].step:
                last[point.recipe] = point
        return sorted(last.values(), key=lambda p: (-p.macro_f1, -p.accuracy))

    def markdown(self) -> str:
        """The table, the settings and the ordering at the full budget, in markdown."""
        cfg = self.config
        lines = [
            f"Budget: {self.budget} per recipe. Task: {self.task} ({self.split} split), "
            f"{cfg.mode}, max_train {cfg.max_train or 'all'}, max_length {cfg.max_length}, "
            f"{_seeds_text(cfg)}. Date: {self.date}.",
            "",
            f"Command: `{self.command}`",
            "",
        ]
        timed = self.budget.kind == "time"
        lines += [
            "| recipe | objective | step | tokens | compute (FLOPs) | wall min |"
            + (" train min |" if timed else "") + " accuracy | macro-F1 |",
            "|---|---|---:|---:|---:|---:|" + ("---:|" if timed else "") + "---:|---:|",
        ]
        spread = self.config.seeds > 1
        for p in self.points:
            step = "0 (random init)" if p.checkpoint is None else str(p.step)
            minutes = f" {p.minutes or 0.0:.2f} |" if timed else ""
            accuracy = f"{p.accuracy:.4f}" + (f" ± {p.accuracy_std:.4f}" if spread else "")
            f1 = f"{p.macro_f1:.4f}" + (f" ± {p.macro_f1_std:.4f}" if spread else "")
            lines.append(f"| {p.recipe} | {p.objective} | {step} | {p.tokens:,} | "
                         f"{p.flops:.3g} | {p.wall_minutes:.2f} |{minutes} {accuracy} | {f1} |")
        lines.append("")
        for recipe, cost in self.costs.items():
            seconds = self.fit_seconds.get(recipe, 0.0)
            reused = ", reused from an earlier run" if self.reused.get(recipe) else ""
            lines.append(
                f"- {recipe}: {cost.flops_per_token:.3g} training FLOPs per token, "
                f"{cost.tokens_per_step} tokens per step, pretraining took {seconds / 60:.1f} "
                f"min of wall time (setup included){reused}."
            )
        final = self.final()
        if final:
            order = " > ".join(f"{p.recipe} ({p.macro_f1:.4f})" for p in final)
            lines += ["", f"At the full budget, by macro-F1: {order}."]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": asdict(self.budget), "task": self.task, "split": self.split,
            "config": asdict(self.config),
            "command": self.command, "date": self.date,
            "points": [asdict(p) for p in self.points],
            "costs": {k: asdict(v) for k, v in self.costs.items()},
            "fit_seconds": self.fit_seconds, "reused": self.reused,
        }


def _seeds_text(cfg: EvalConfig) -> str:
    if cfg.seeds == 1:
        return f"seed {cfg.seed}"
    return f"seeds {cfg.seed}-{cfg.seed + cfg.seeds - 1} (mean ± std)"


def plot(report: Report, path: Path) -> Path:
    """Downstream score against compute, one line per recipe (accuracy and macro-F1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    time_axis = report.budget.kind == "time"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for metric, ax in zip(("accuracy", "macro_f1"), axes):
        for recipe in dict.fromkeys(p.recipe for p in report.points):
            pts = sorted((p for p in report.points if p.recipe == recipe), key=lambda p: p.step)
            xs = [(p.minutes or 0.0) if time_axis else p.flops for p in pts]
            ys = [getattr(p, metric) for p in pts]
            ax.plot(xs, ys, marker="o", label=f"{recipe} ({pts[0].objective})")
        ax.set_xlabel("training wall time (min)" if time_axis else "pretraining FLOPs")
        ax.set_ylabel(metric.replace("_", "-"))
        ax.set_title(f"{report.task}: {metric.replace('_', '-')} vs compute")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"budget {report.budget} per recipe, {report.config.mode}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------- runs


def _prepare_run_dir(run_dir: Path) -> None:
    if run_dir.exists():
        if not (run_dir / _MARKER).exists():
            raise PlmkitError(f"{run_dir} exists and was not written by 'plmkit compare'; "
                              "choose another --out")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / _MARKER).write_text("written by plmkit compare; deleted by the next run\n")


def _fit(recipe: str, overrides: list[str]) -> None:
    from plmkit.lightning_cli import fit

    fit(recipe, overrides)


def _step_of(path: Path) -> int:
    match = re.search(r"step=(\d+)", path.name)
    if match:
        return int(match.group(1))
    from plmkit.export import read_checkpoint

    return int(read_checkpoint(path).get("global_step", 0))


def _hms(seconds: float) -> str:
    s = max(1, int(round(seconds)))
    return f"{s // 86400:02d}:{s % 86400 // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


#: a kept checkpoint: its path, step, training minutes (time budgets) and wall seconds since the
#: start of pretraining
Kept = tuple[Path, int, float | None, float]


def pretrain(
    recipe: str, budget: Budget, cost: CostModel, run_dir: Path, points: int,
    fit_args: list[str], progress: bool,
) -> list[Kept]:
    """Pretrain ``recipe`` under ``budget``; the checkpoints it kept, by step."""
    start, wall = time.perf_counter(), time.time()
    base = ["--trainer.default_root_dir", str(run_dir),
            "--trainer.limit_val_batches", "0",
            "--trainer.enable_progress_bar", str(progress).lower()]
    if budget.kind == "flops":
        steps = max(points, round(budget.value / cost.flops_per_step))
        every = max(1, steps // points)
        steps = every * points
        _fit(recipe, [*base, *fit_args, "--trainer.max_steps", str(steps),
              "--checkpoint.every_n_train_steps", str(every),
              "--checkpoint.save_top_k", "-1"])
        found = [p for p in (run_dir / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
        by_step = {_step_of(p): p for p in found}
        return [(by_step[s], s, None, max(0.0, by_step[s].stat().st_mtime - wall))
                for s in sorted(by_step) if s > 0]
    kept = []
    for k in range(1, points + 1):
        seconds = budget.value * k / points
        resume = ["--ckpt_path", "last"] if k > 1 else []
        _fit(recipe, [*base, "--trainer.max_steps", str(10**7), *fit_args,
              "--trainer.max_time", _hms(seconds), *resume])
        last = run_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise PlmkitError(f"pretraining {recipe} wrote no checkpoint in {last.parent}")
        stage = run_dir / "points" / f"stage{k}.ckpt"
        stage.parent.mkdir(exist_ok=True)
        shutil.copyfile(last, stage)
        kept.append((stage, _step_of(stage), seconds / 60, time.perf_counter() - start))
    return kept


def _run_key(name: str, config: dict[str, Any], budget: Budget, points: int) -> dict[str, Any]:
    """What makes two pretraining runs the same, as JSON would read it back."""
    key = {"recipe": name, "budget": asdict(budget), "points": points, "config": config}
    return json.loads(json.dumps(key, sort_keys=True, default=str))


def _saved_run(run_dir: Path, key: dict[str, Any]) -> tuple[list[Kept], float] | None:
    """The checkpoints and wall seconds of an earlier pretraining with ``key``, if all there."""
    try:
        saved = json.loads((run_dir / _RUN_FILE).read_text(encoding="utf-8"))
        if saved["key"] != key:
            return None
        kept = [(run_dir / k["checkpoint"], int(k["step"]), k["minutes"],
                 float(k["wall_seconds"])) for k in saved["kept"]]
        seconds = float(saved["fit_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (kept, seconds) if kept and all(k[0].is_file() for k in kept) else None


def _save_run(run_dir: Path, key: dict[str, Any], kept: list[Kept], seconds: float) -> None:
    kept_json = [{"checkpoint": str(path.relative_to(run_dir)), "step": step,
                  "minutes": minutes, "wall_seconds": wall} for path, step, minutes, wall in kept]
    (run_dir / _RUN_FILE).write_text(json.dumps(
        {"key": key, "kept": kept_json, "fit_seconds": seconds}, indent=2) + "\n")


def _point(name: str, cost: CostModel, step: int, result: EvalResult, minutes: float | None,
           wall_seconds: float, checkpoint: Path | None) -> Point:
    spread = result.spread
    return Point(name, cost.objective, step, step * cost.flops_per_step, minutes,
                 result.accuracy, result.macro_f1, str(checkpoint) if checkpoint else None,
                 tokens=step * cost.tokens_per_step, wall_minutes=wall_seconds / 60,
                 accuracy_std=spread["accuracy"]["std"], macro_f1_std=spread["macro_f1"]["std"],
                 per_seed=[{"seed": r.seed, "accuracy": r.accuracy, "macro_f1": r.macro_f1,
                            "epoch": r.epoch} for r in result.runs])


def compare(
    recipes: list[str],
    budget: Budget,
    out: str | Path,
    points: int = 3,
    task: str | Task = "wordnet",
    config: EvalConfig | None = None,
    fit_args: list[str] | None = None,
    random_init: bool = True,
    retrain: bool = False,
) -> Report:
    """Pretrain every recipe under ``budget`` (or reuse the pretraining an earlier call made
    with the same settings, unless ``retrain``), evaluate ``points`` checkpoints of each (and
    the random-init architecture at compute 0), write ``compare.md/.png/.json`` into ``out``."""
    from plmkit.lightning_cli import resolve_recipe

    cfg = config or EvalConfig()
    cfg.check()  # before any pretraining
    fit_args = list(fit_args or [])
    if not recipes:
        raise PlmkitError("no recipes to compare: pass --recipes NAME [NAME ...]")
    names = [resolve_recipe(r)[0] for r in recipes]  # fail early on unknown recipes
    if len(set(names)) != len(names):
        raise PlmkitError(f"a recipe is listed twice: {' '.join(recipes)}")
    loaded = task if isinstance(task, Task) else load_task(task, seed=cfg.seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    command = "plmkit " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["compare"] else ""
    command = command or (f"plmkit compare --recipes {' '.join(recipes)} --budget "
                          f"{_budget_text(budget)} --points {points}")
    report = Report(budget, loaded.name, loaded.eval_split, cfg, command,
                    datetime.date.today().isoformat())
    for recipe, name in zip(recipes, names):
        config_dict = resolved_config(recipe, fit_args)
        cost = cost_model(config_dict)
        report.costs[name] = cost
        run_dir = out / name
        key = _run_key(name, config_dict, budget, points)
        saved = None if retrain else _saved_run(run_dir, key)
        if saved:
            kept, report.fit_seconds[name] = saved
            log.info("%s: reusing the pretraining in %s (same recipe, fit args, budget and "
                     "points); pass --retrain to pretrain again", name, run_dir)
        else:
            _prepare_run_dir(run_dir)
            start = time.perf_counter()
            kept = pretrain(recipe, budget, cost, run_dir, points, fit_args, cfg.progress)
            report.fit_seconds[name] = time.perf_counter() - start
            if not kept:
                raise PlmkitError(f"pretraining {name} kept no checkpoint in {run_dir}")
            _save_run(run_dir, key, kept, report.fit_seconds[name])
        report.reused[name] = bool(saved)
        if random_init:
            result = score_model(kept[0][0], loaded, cfg, f"{name} random init", True)
            report.points.append(_point(name, cost, 0, result, 0.0 if budget.kind == "time"
                                        else None, 0.0, None))
        for path, step, minutes, wall in kept:
            result = score_model(path, loaded, cfg, f"{name}@{step}")
            report.points.append(_point(name, cost, step, result, minutes, wall, path))
    report.paths = {"markdown": str(out / "compare.md"), "plot": str(out / "compare.png"),
                    "json": str(out / "compare.json")}
    Path(report.paths["markdown"]).write_text(report.markdown(), encoding="utf-8")
    plot(report, Path(report.paths["plot"]))
    Path(report.paths["json"]).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def _budget_text(budget: Budget) -> str:
    if budget.kind == "flops":
        return f"{budget.value:g}"
    return f"{budget.value:g}s" if budget.value < 60 or budget.value % 60 else (
        f"{budget.value / 60:g}min")


__all__ = ["Budget", "CostModel", "Kept", "Point", "Report", "compare", "cost_model",
           "parse_budget", "plot", "pretrain", "resolved_config"]

