"""The scores of an evaluation: per-seed and combined results, the gain over a random-init
baseline, the printed table and the JSON form."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from torch import Tensor

METRICS = ("accuracy", "macro_f1")


@dataclass
class SeedRun:
    """One training run: its seed, its scores and the epoch whose weights were scored."""

    seed: int
    accuracy: float
    macro_f1: float
    epoch: int  # from 1
    val_accuracy: float | None = None  # of the scored weights; None without validation
    val_history: list[float] = field(default_factory=list)  # accuracy after each epoch
    val_loss: list[float] = field(default_factory=list)  # loss after each epoch


@dataclass
class EvalResult:
    """The score of one model on one task: with several seeds, the mean over ``runs``."""

    task: str
    model: str
    mode: str
    split: str
    accuracy: float
    macro_f1: float
    num_train: int
    num_eval: int
    seconds: float
    random_init: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    num_val: int = 0
    epochs: int = 0
    lr: float = 0.0
    runs: list[SeedRun] = field(default_factory=list)

    @property
    def spread(self) -> dict[str, dict[str, float]]:
        """Per metric: the sample standard deviation over the seeds (0 for one), min and max."""
        out = {}
        for metric in METRICS:
            values = [getattr(r, metric) for r in self.runs] or [getattr(self, metric)]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            out[metric] = {"std": std, "min": min(values), "max": max(values)}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "spread": self.spread}


def combine(results: list[EvalResult]) -> EvalResult:
    """One result for several seeds: the mean scores, every run, the total time."""
    runs = [run for result in results for run in result.runs]
    return replace(results[0], runs=runs, seconds=sum(r.seconds for r in results),
                   accuracy=statistics.fmean(r.accuracy for r in results),
                   macro_f1=statistics.fmean(r.macro_f1 for r in results))


def scores(preds: Tensor, target: Tensor, num_labels: int) -> tuple[float, float]:
    """``(accuracy, macro-F1)`` of predicted against true labels (torchmetrics)."""
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

    accuracy = multiclass_accuracy(preds, target, num_classes=num_labels, average="micro")
    f1 = multiclass_f1_score(preds, target, num_classes=num_labels, average="macro")
    return float(accuracy), float(f1)


@dataclass
class Evaluation:
    """A model's score and, with a baseline, the same architecture's random-init score."""

    score: EvalResult
    baseline: EvalResult | None = None

    @property
    def gain(self) -> dict[str, float] | None:
        """Pretrained minus random-init, per metric (None without a baseline)."""
        if self.baseline is None:
            return None
        return {"accuracy": self.score.accuracy - self.baseline.accuracy,
                "macro_f1": self.score.macro_f1 - self.baseline.macro_f1}

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score.to_dict(),
                "baseline": self.baseline.to_dict() if self.baseline else None,
                "gain": self.gain}

    def table(self) -> str:
        """The scores as an aligned text table (with the gain when there is a baseline).
        With several seeds a score reads ``mean ± std (min-max)``."""
        header = ("TASK", "MODEL", "MODE", "SPLIT", "EPOCH", "ACCURACY", "MACRO_F1")
        rows = [_row(self.score)]
        if self.baseline is not None:
            rows.append(_row(self.baseline))
            gain = self.gain or {}
            rows.append(("", "gain from pretraining", "", "", "",
                         f"{gain['accuracy']:+.4f}", f"{gain['macro_f1']:+.4f}"))
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                         for r in [header, *rows])


def _row(result: EvalResult) -> tuple[str, ...]:
    """The scored epoch(s) of ``epochs``, and each metric with its spread over the seeds."""
    epochs = ",".join(str(r.epoch) for r in result.runs) + f"/{result.epochs}"
    cells = []
    for metric, spread in result.spread.items():
        cell = f"{getattr(result, metric):.4f}"
        if len(result.runs) > 1:
            cell += f" ± {spread['std']:.4f} ({spread['min']:.4f}-{spread['max']:.4f})"
        cells.append(cell)
    return (result.task, result.model, result.mode, result.split, epochs, *cells)
