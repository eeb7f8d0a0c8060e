"""One training measurement in a fresh process: ``python -m benchmarks.worker '<RunConfig json>'``.

Side ``plmkit`` trains through the real user path: ``lightning.Trainer.fit`` with the
objective and plmkit's ``PretrainDataModule`` (resumable loader, worker processes), timed by a
callback at the end of every training batch. Side ``baseline`` runs a plain PyTorch loop over
a ``torch.utils.data.DataLoader`` with the transformers collator. Both time from the end of
one optimizer step to the end of the next (data loading included), skip ``warmup`` steps,
synchronise on the loss every step, and count real (non-padding) input tokens. The result is
one JSON line on stdout.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import warnings
from typing import Any

import torch

from benchmarks.specs import RunConfig, build, model_configs, train_documents
from plmkit.callbacks import monitors
from plmkit.throughput import flops_per_token


def _peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _summary(cfg: RunConfig, times: list[float], tokens: list[int], flops_per_token: float,
             configs: dict[str, Any]) -> dict[str, Any]:
    times, tokens = times[cfg.warmup:], tokens[cfg.warmup:]
    seconds = sum(times)
    tps = sum(tokens) / seconds if seconds > 0 else 0.0
    return {
        "config": cfg.to_dict(),
        "tokens_per_sec": tps,
        "step_seconds": seconds / max(len(times), 1),
        "tokens_per_step": sum(tokens) / max(len(tokens), 1),
        "peak_memory_mb": _peak_memory_mb(cfg.device),
        "flops_per_token": flops_per_token,
        "achieved_flops": tps * flops_per_token,
        "model_configs": configs,
        "threads": torch.get_num_threads(),
    }


def run_plmkit(cfg: RunConfig) -> dict[str, Any]:
    import lightning as L

    objective, dm = build(cfg)
    times: list[float] = []
    tokens: list[int] = []

    class StepTimer(L.Callback):
        last = 0.0

        def on_train_start(self, trainer: Any, module: Any) -> None:
            self.last = time.perf_counter()

        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, idx: int) -> None:
            tokens.append(int(batch.get("_num_tokens", 0)))

        def on_train_batch_end(self, trainer: Any, module: Any, out: Any, batch: Any,
                               idx: int) -> None:
            _sync(cfg.device)
            now = time.perf_counter()
            times.append(now - self.last)
            self.last = now

    trainer = L.Trainer(
        accelerator=cfg.device, devices=1, precision=cfg.precision,
        max_steps=cfg.warmup + cfg.steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0, callbacks=[*monitors([], logging=False), StepTimer()],
    )
    trainer.fit(objective, datamodule=dm)
    flops = flops_per_token(objective, cfg.seq)
    model = objective.model
    model = getattr(model, "_orig_mod", model)
    return _summary(cfg, times, tokens, flops, model_configs(model))


def run_baseline(cfg: RunConfig) -> dict[str, Any]:
    from torch.utils.data import DataLoader
    from transformers import get_scheduler

    from benchmarks.baselines import (
        baseline_collator,
        baseline_dataset,
        baseline_loss,
        baseline_model,
    )

    objective, dm = build(cfg)
    corpus = dm.prepare(objective)
    tokenizer = dm.tokenizer
    objective.attach_tokenizer(tokenizer, cfg.seq)
    torch.manual_seed(0)
    reference = objective.build_model()
    flops = _reference_flops(objective, reference, cfg.seq)
    model = baseline_model(cfg.method, reference).to(cfg.device)
    model.train()
    dataset = baseline_dataset(cfg.method, tokenizer, corpus, train_documents(dm, corpus),
                               cfg.seq)
    loader = DataLoader(
        dataset, batch_size=cfg.batch, shuffle=True, drop_last=True,
        collate_fn=baseline_collator(cfg.method, tokenizer, objective, cfg.seq),
        num_workers=cfg.workers, pin_memory=cfg.device == "cuda",
        generator=torch.Generator().manual_seed(0),
    )
    # the same AdamW settings and parameter groups as plmkit's Objective.configure_optimizers
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n.lower()]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and
                                                               "norm" not in n.lower())]
    optim = objective.optim
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": optim.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
        fused=True,  # transformers.Trainer's default optimizer (adamw_torch_fused)
    )
    total = cfg.warmup + cfg.steps
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=1, num_training_steps=total)
    bf16 = cfg.precision.startswith("bf16")
    times: list[float] = []
    tokens: list[int] = []
    batches = iter(loader)
    last = time.perf_counter()
    for _ in range(total):
        batch = {k: v.to(cfg.device, non_blocking=True) for k, v in next(batches).items()}
        mask = batch.get("attention_mask")
        tokens.append(int(mask.sum()) if mask is not None else batch["input_ids"].numel())
        with torch.autocast(cfg.device, dtype=torch.bfloat16, enabled=bf16):
            loss = baseline_loss(cfg.method, model, batch)
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        _sync(cfg.device)
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return _summary(cfg, times, tokens, flops, model_configs(model))


def _reference_flops(objective: Any, model: Any, seq: int) -> float:
    """plmkit's FLOPs per token for the same model (counts the work plmkit does; used for
    MFU on both sides, so MFU compares like tokens/s)."""
    objective.model = model
    try:
        return flops_per_token(objective, seq)
    finally:
        objective.model = None


def configure(argv: list[str] | None = None) -> RunConfig:
    """The run's config from the command line (one JSON argument), with threads and warnings
    set up the same way for every worker process."""
    cfg = RunConfig(**json.loads((argv or sys.argv[1:])[0]))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    return cfg


def main(argv: list[str] | None = None) -> int:
    cfg = configure(argv)
    torch.manual_seed(0)
    result = run_plmkit(cfg) if cfg.side == "plmkit" else run_baseline(cfg)
    print("BENCHMARK_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
