"""Turn results files (``benchmarks/results/*.json``) into ``docs/benchmarks.md``.

The prose of the page lives in ``benchmarks/page_intro.md`` (how the numbers are made) and
``benchmarks/page_notes.md`` (what they show); the tables are generated here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.specs import SPECS

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs" / "benchmarks.md"
TARGETS = {"bert": 1.5, "bert_30k": 1.5, "roberta": 1.5, "electra": 1.5, "electra_30k": 1.5}
COLLATOR_TARGETS = {"bert_wwm": 5.0, "xlnet": 5.0}


def _peak(env: dict[str, Any], precision: str) -> float | None:
    """FLOP/s the MFU is measured against: the GPU's datasheet peak, or on CPU the measured
    float32 matmul rate (bf16 autocast on a CPU without bf16 units is not faster)."""
    if env.get("gpu"):
        key = "bf16" if precision.startswith("bf16") else "float32"
        value = env.get("gpu_peak_flops", {}).get(key)
        return float(value) if value else None
    gflops = env.get("matmul_peak_gflops", {}).get("float32")
    return gflops * 1e9 if gflops else None


def _mfu(side: dict[str, Any], env: dict[str, Any], precision: str) -> str:
    peak = _peak(env, precision)
    if not peak or not side.get("achieved_flops"):
        return "-"
    return f"{100 * side['achieved_flops'] / peak:.0f}%"


def _mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


def train_table(results: dict[str, Any]) -> list[str]:
    env = results["environment"]
    lines = [
        "| method | batch x seq | plmkit tokens/s | baseline tokens/s | ratio | target | "
        "plmkit peak MB | baseline peak MB | MFU plmkit / baseline | same config | load |",
        "|---|---|---:|---:|---:|---|---:|---:|---|---|---|",
    ]
    for row in results.get("train", []):
        cfg, a, b = row["config"], row["plmkit"], row["baseline"]
        target = TARGETS.get(row["method"], 1.0)
        loads = a.get("load", []) + b.get("load", [])
        lines.append(
            f"| {row['method']} | {cfg['batch']} x {cfg['seq']} | {a['tokens_per_sec']:,.0f} "
            f"| {b['tokens_per_sec']:,.0f} | {row['ratio']:.2f}x | >= {target}x: "
            f"{_mark(row['ratio'] >= target)} | {a['peak_memory_mb']:,.0f} | "
            f"{b['peak_memory_mb']:,.0f} | {_mfu(a, env, cfg['precision'])} / "
            f"{_mfu(b, env, cfg['precision'])} | {'yes' if row['same_model_config'] else 'NO'} "
            f"| {min(loads):.1f}-{max(loads):.1f} |"
        )
    return lines


def variant_table(results: dict[str, Any]) -> list[str]:
    train = {row["method"]: row for row in results.get("train", [])}
    lines = ["| variant | method | plmkit tokens/s | vs plmkit eager fp32 (same pass) | "
             "baseline tokens/s | plmkit / baseline | load |", "|---|---|---:|---:|---:|---:|---|"]
    for row in results.get("variants", []):
        # the eager row measured in the same pass as the variant, else the current one
        eager = row.get("eager_tokens_per_sec") or train.get(row["method"], {}).get(
            "plmkit", {}).get("tokens_per_sec")
        a = row["plmkit"]["tokens_per_sec"]
        rel = f"{a / eager:.2f}x" if eager else "-"
        b = row.get("baseline", {}).get("tokens_per_sec")
        loads = row["plmkit"].get("load", []) + row.get("baseline", {}).get("load", [])
        lines.append(f"| {row['variant']} | {row['method']} | {a:,.0f} | {rel} | "
                     f"{f'{b:,.0f}' if b else '-'} | "
                     f"{f'{a / b:.2f}x' if b else '-'} | {min(loads):.1f}-{max(loads):.1f} |")
    return lines


def collator_table(results: dict[str, Any]) -> list[str]:
    lines = ["| collator | plmkit examples/s | transformers examples/s | ratio | target |",
             "|---|---:|---:|---:|---|"]
    for row in results.get("collators", []):
        method = row["config"]["method"]
        target = COLLATOR_TARGETS.get(method, 1.0)
        lines.append(f"| {method} | {row['plmkit']['examples_per_sec']:,.0f} | "
                     f"{row['baseline']['examples_per_sec']:,.0f} | {row['ratio']:.1f}x | "
                     f">= {target}x: {_mark(row['ratio'] >= target)} |")
    return lines


def loader_table(results: dict[str, Any]) -> list[str]:
    train = {row["method"]: row for row in results.get("train", [])}
    lines = ["| method | batch x seq | workers | loader tokens/s | training tokens/s | "
             "loader / training | target |", "|---|---|---:|---:|---:|---:|---|"]
    for row in results.get("loader", []):
        cfg = row["config"]
        step = train.get(cfg["method"], {}).get("plmkit", {}).get("tokens_per_sec")
        ratio = row["tokens_per_sec"] / step if step else None
        lines.append(f"| {cfg['method']} | {cfg['batch']} x {cfg['seq']} | {row['workers']} | "
                     f"{row['tokens_per_sec']:,.0f} | {f'{step:,.0f}' if step else '-'} | "
                     f"{f'{ratio:.0f}x' if ratio else '-'} | "
                     f"{'>= 5x: ' + _mark(ratio >= 5) if ratio else '-'} |")
    return lines


def scaling_table(results: dict[str, Any]) -> list[str]:
    rows = results.get("scaling", [])
    if not rows:
        return []
    seqs = sorted({r["config"]["seq"] for r in rows})
    batches = sorted({r["config"]["batch"] for r in rows})
    cell = {(r["config"]["seq"], r["config"]["batch"]): r for r in rows}
    head = "| seq \\ batch | " + " | ".join(f"{b}" for b in batches) + " |"
    lines = [f"plmkit `{rows[0]['config']['method']}` ({rows[0]['config']['size']}), tokens/s "
             "(peak MB):", "", head, "|---|" + "---:|" * len(batches)]
    for seq in seqs:
        cells = []
        for b in batches:
            r = cell.get((seq, b))
            cells.append(f"{r['tokens_per_sec']:,.0f} ({r['peak_memory_mb']:,.0f})" if r else "-")
        lines.append(f"| {seq} | " + " | ".join(cells) + " |")
    return lines


def data_scale_table(results: dict[str, Any]) -> list[str]:
    from benchmarks.data_scale import table

    return table(results.get("data_scale", []))


def environment_lines(results: dict[str, Any]) -> list[str]:
    env = results["environment"]
    peak = env.get("matmul_peak_gflops", {}).get("float32")
    load_end = env.get("load_average_end")
    return [
        f"- host: `{env['host_kind']}`, {env['cpu']} ({env['cpu_count']} cores)"
        + (f", GPU {env['gpu']}" if env.get("gpu") else ", no GPU"),
        f"- python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, "
        f"lightning {env['lightning']}; torch threads per side: {env['torch_threads']}",
        f"- measured float32 matmul rate at that thread count (the CPU MFU denominator): "
        f"{peak:.0f} GFLOP/s" if peak else "- matmul rate: not measured",
        f"- load average at the start {', '.join(f'{x:.2f}' for x in env['load_average'])}"
        + (f"; at the end {', '.join(f'{x:.2f}' for x in load_end)}" if load_end else "")
        + " (the machine is shared: each row gives the 1-minute load seen by its runs)",
        f"- date {env['date']}; wall time {results.get('wall_seconds', 0) / 60:.0f} min",
        f"- command: `{results.get('command', '')}`",
        *(f"- then: `{command}` (replaces those rows)"
          for command in results.get("extra_commands", [])),
    ]


def render(all_results: list[dict[str, Any]]) -> str:
    out = [(HERE / "page_intro.md").read_text().rstrip(), ""]
    out += ["## Baselines", "", "| method | transformers path |", "|---|---|"]
    out += [f"| {s.name} | {s.baseline} |" for s in SPECS.values()]
    for results in all_results:
        env = results["environment"]
        title = env["gpu"] or "CPU"
        out += ["", f"## Results: {title} (`{env['host_kind']}`)", ""]
        out += environment_lines(results)
        sections = (("Training throughput", train_table),
                    ("torch.compile and bf16 autocast", variant_table),
                    ("Collators alone (batch 128, seq 128, one process)", collator_table),
                    ("Loader against the training step", loader_table),
                    ("Scaling", scaling_table),
                    ("Data at scale", data_scale_table))
        for name, fn in sections:
            table = fn(results)
            if len(table) > 2:
                out += ["", f"### {name}", "", *table]
    if not any(r["environment"].get("gpu") for r in all_results):
        out += ["", "## Results: GPU", "", "Pending: no GPU was available when these numbers "
                "were taken. On a CUDA machine `python -m benchmarks all --device cuda "
                "--precision bf16-mixed --threads 0` writes `benchmarks/results/cuda-*.json` "
                "(peak memory from `torch.cuda.max_memory_allocated`, MFU against "
                "`lightning.fabric.utilities.throughput.get_available_flops`); the MFU of "
                "`bert_base` and `electra_base` at seq 128 and 512 is then "
                "`python -m benchmarks train --device cuda --precision bf16-mixed --size base "
                "--method bert --method electra --seq 512 --batch 32` (target: 40% on an "
                "H100)."]
    out += ["", (HERE / "page_notes.md").read_text().rstrip(), ""]
    return "\n".join(out)


def write(files: list[Path], docs: Path) -> None:
    """Render every results file into one page."""
    results = [json.loads(Path(f).read_text()) for f in files]
    docs.write_text(render(results))
