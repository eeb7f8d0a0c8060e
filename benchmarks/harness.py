"""Run measurements in fresh subprocesses, alternate plmkit (A) and baseline (B), take medians.

Each call of :func:`measure` starts ``python -m benchmarks.worker`` with one
:class:`~benchmarks.specs.RunConfig`, so every number comes from a clean process (its own
peak RSS, no warm caches or allocator state carried over from the other side).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.specs import RunConfig

ROOT = Path(__file__).resolve().parent.parent
RESULT_PREFIX = "BENCHMARK_RESULT "


def measure(cfg: RunConfig, module: str = "benchmarks.worker", timeout: float = 1800) -> dict:
    """Run one measurement in a fresh subprocess and return its result dict."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TOKENIZERS_PARALLELISM="false")
    load = os.getloadavg()[0]
    proc = subprocess.run([sys.executable, "-m", module, json.dumps(cfg.to_dict())],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
            result["load_before"] = load
            result["load_after"] = os.getloadavg()[0]
            return result
    raise RuntimeError(f"benchmark worker failed ({cfg.method}, {cfg.side}):\n"
                       f"{proc.stderr[-3000:]}")


def _median_result(runs: list[dict]) -> dict:
    """The median tokens/s over the runs, with the other fields of the median run."""
    ordered = sorted(runs, key=lambda r: r["tokens_per_sec"])
    middle = dict(ordered[len(ordered) // 2])
    middle["tokens_per_sec"] = statistics.median(r["tokens_per_sec"] for r in runs)
    middle["runs_tokens_per_sec"] = [r["tokens_per_sec"] for r in runs]
    middle["peak_memory_mb"] = statistics.median(r["peak_memory_mb"] for r in runs)
    middle["load"] = [r["load_before"] for r in runs]
    return middle


def compare(cfg: RunConfig, repeats: int = 3, log: Any = print,
            sides: tuple[str, ...] = ("plmkit", "baseline")) -> dict:
    """Alternate the sides ``repeats`` times (A B A B ...) and summarise medians and ratio."""
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for r in range(repeats):
        for side in (sides if r % 2 == 0 else tuple(reversed(sides))):
            result = measure(replace(cfg, side=side))
            runs[side].append(result)
            log(f"  {cfg.method:9s} {side:8s} run {r + 1}/{repeats}: "
                f"{result['tokens_per_sec']:8.0f} tokens/s  load {result['load_before']:.2f}")
    out: dict[str, Any] = {"method": cfg.method, "config": cfg.to_dict()}
    for side, side_runs in runs.items():
        out[side] = _median_result(side_runs)
    if "plmkit" in out and "baseline" in out:
        out["ratio"] = out["plmkit"]["tokens_per_sec"] / out["baseline"]["tokens_per_sec"]
        out["same_model_config"] = (out["plmkit"]["model_configs"]
                                    == out["baseline"]["model_configs"])
    return out


def environment(threads: int) -> dict[str, Any]:
    """Hardware, versions, thread count and load: printed with every table."""
    import lightning
    import torch
    import transformers

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    gpu_peak = {}
    if gpu:
        from lightning.fabric.utilities.throughput import get_available_flops

        device = torch.device("cuda", 0)
        gpu_peak = {"bf16": get_available_flops(device, torch.bfloat16),
                    "float32": get_available_flops(device, torch.float32)}
    return {
        "host_kind": host_kind(),
        "hostname": socket.gethostname(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
        "gpu_peak_flops": gpu_peak,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lightning": lightning.__version__,
        "torch_threads": threads or torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
        "matmul_peak_gflops": {} if gpu else matmul_peak(threads),
    }


def host_kind() -> str:
    """``cpu-<cores>c`` or ``cuda-<gpu name>``: the name of the results file."""
    import torch

    if torch.cuda.is_available():
        return "cuda-" + torch.cuda.get_device_name(0).lower().replace(" ", "-")
    return f"cpu-{os.cpu_count()}c"


def matmul_peak(threads: int = 0, size: int = 1024) -> dict[str, float]:
    """Measured float32 matrix-multiply GFLOP/s on the CPU (the MFU denominator there)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return {"float32": 2 * size**3 / best / 1e9}
