"""The scores of an evaluation: per-run results, the gain over a random-init baseline, the
printed table and the JSON form."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class EvalResult:
    """The score of one model on one task."""

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
        return {"score": asdict(self.score),
                "baseline": asdict(self.baseline) if self.baseline else None,
                "gain": self.gain}

    def table(self) -> str:
        """The scores as an aligned text table (with the gain when there is a baseline)."""
        header = ("TASK", "MODEL", "MODE", "SPLIT", "ACCURACY", "MACRO_F1")
        rows = [_row(self.score)]
        if self.baseline is not None:
            rows.append(_row(self.baseline))
            gain = self.gain or {}
            rows.append(("", "gain from pretraining", "", "",
                         f"{gain['accuracy']:+.4f}", f"{gain['macro_f1']:+.4f}"))
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                         for r in [header, *rows])


def _row(result: EvalResult) -> tuple[str, ...]:
    return (result.task, result.model, result.mode, result.split, f"{result.accuracy:.4f}",
            f"{result.macro_f1:.4f}")
