"""Every objective against random init at one pretraining budget: the table and the plot.

Reads, per recipe, what these commands wrote into one folder (``RECIPE`` the recipe, ``CKPT``
its last compare checkpoint)::

    plmkit compare --recipes RECIPE --budget 20min --points 2 --probe --seeds 3  # compare.json
    plmkit evaluate CKPT --task fortunes --split test --probe --seeds 3 --baseline random \\
        --json RECIPE.fortunes.probe.json
    plmkit evaluate CKPT --task wordnet --split test --lr 1e-3 --epochs 6 --seeds 3 \\
        --baseline random --json RECIPE.wordnet.ft.json                # encoders only
    (the same with --task fortunes: RECIPE.fortunes.ft.json)

(``compare.json`` saved as ``RECIPE.compare.json``.) A gain is *clear* when the seed ranges
do not overlap: the worst pretrained seed beats the best random-init seed.

    python -m benchmarks budget benchmarks/results/compare/budget20 --plot docs/assets/budget20.png
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: (column title, file suffix or None for the compare run's probe on WordNet)
SETTINGS = (("WordNet, fine-tuned", "wordnet.ft"), ("WordNet, probe", None),
            ("fortunes, fine-tuned", "fortunes.ft"), ("fortunes, probe", "fortunes.probe"))


def _side(seeds: list[float]) -> dict[str, float]:
    mean = sum(seeds) / len(seeds)
    std = (sum((s - mean) ** 2 for s in seeds) / max(len(seeds) - 1, 1)) ** 0.5
    return {"mean": mean, "std": std, "min": min(seeds), "max": max(seeds), "n": len(seeds)}


def _compare_probe(data: dict[str, Any]) -> tuple[dict, dict, dict]:
    """(pretrained, random init, last point) of a compare run's accuracies."""
    points = sorted(data["points"], key=lambda p: p["step"])
    first, last = points[0], points[-1]

    def seeds(point: dict) -> list[float]:
        return [s["accuracy"] for s in point.get("per_seed") or [point]]

    return _side(seeds(last)), _side(seeds(first)), last


def _evaluate(data: dict[str, Any]) -> tuple[dict, dict]:
    def seeds(score: dict) -> list[float]:
        return [r["accuracy"] for r in score.get("runs") or [score]]

    return _side(seeds(data["score"])), _side(seeds(data["baseline"]))


def load(folder: Path) -> list[dict[str, Any]]:
    """One row per recipe with a ``.compare.json`` in ``folder``."""
    rows = []
    for path in sorted(folder.glob("*.compare.json")):
        recipe = path.name.removesuffix(".compare.json")
        pre, rand, last = _compare_probe(json.loads(path.read_text()))
        row: dict[str, Any] = {"recipe": recipe, "objective": last["objective"],
                               "step": last["step"], "tokens": last.get("tokens"),
                               "minutes": last.get("wall_minutes"), "settings": {}}
        for title, suffix in SETTINGS:
            if suffix is None:
                row["settings"][title] = (pre, rand)
                continue
            result = folder / f"{recipe}.{suffix}.json"
            if result.exists():
                row["settings"][title] = _evaluate(json.loads(result.read_text()))
        rows.append(row)
    return rows


def _cell(pre: dict, rand: dict) -> str:
    gain = pre["mean"] - rand["mean"]
    clear = pre["min"] > rand["max"]
    mark = "**" if clear else ""
    return (f"{pre['mean']:.3f} ± {pre['std']:.3f} / {rand['mean']:.3f} ± {rand['std']:.3f}"
            f" / {mark}{gain:+.3f}{mark}")


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown: per recipe and setting, pretrained / random init / gain (accuracy, mean ±
    standard deviation over the seeds; the gain in bold when the seed ranges are apart)."""
    head = "| recipe | steps | tokens | " + " | ".join(t for t, _ in SETTINGS) + " |"
    lines = [head, "|---|---:|---:|" + "---|" * len(SETTINGS)]
    for row in rows:
        cells = [_cell(*row["settings"][t]) if t in row["settings"] else "—"
                 for t, _ in SETTINGS]
        tokens = f"{row['tokens'] / 1e6:.1f}M" if row["tokens"] else ""
        lines.append(f"| {row['recipe']} | {row['step']:,} | {tokens} | "
                     + " | ".join(cells) + " |")
    return lines


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """One panel per setting: pretrained and random-init accuracy per recipe, bars at the
    mean and whiskers from the worst to the best seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SETTINGS), figsize=(4 * len(SETTINGS), 3.6), sharey=True)
    for ax, (title, _) in zip(axes, SETTINGS):
        shown = [r for r in rows if title in r["settings"]]
        for offset, side, label in ((-0.2, 0, "pretrained"), (0.2, 1, "random init")):
            values = [r["settings"][title][side] for r in shown]
            x = [i + offset for i in range(len(shown))]
            means = [v["mean"] for v in values]
            errors = [[m - v["min"] for m, v in zip(means, values)],
                      [v["max"] - m for m, v in zip(means, values)]]
            ax.bar(x, means, width=0.4, yerr=errors, capsize=2, label=label)
        ax.set_xticks(range(len(shown)), [r["recipe"] for r in shown], rotation=45, ha="right")
        ax.set_title(title)
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
