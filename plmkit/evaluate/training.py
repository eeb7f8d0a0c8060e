"""Training the classifier: a linear head on pooled hidden states, either fine-tuned together
with the encoder or trained on the frozen encoder's features (a linear probe).

Both run on Lightning's ``Trainer``: a GPU when there is one (``accelerator="auto"``), with
the precision options of ``plmkit fit`` (default ``bf16-mixed`` on a GPU that supports it,
``32-true`` otherwise). Everything is seeded: the head's initialization, dropout and the order
of the training examples, so the same settings give the same numbers on the same machine.
"""

from __future__ import annotations

import logging
import random
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from torch.utils.data import DataLoader, StackDataset

from plmkit.errors import PlmkitError
from plmkit.evaluate.adapters import POOLINGS, Encoder
from plmkit.evaluate.report import EvalResult, scores
from plmkit.evaluate.tasks import Task


@dataclass
class EvalConfig:
    """Settings of one evaluation.

    Args:
        probe: freeze the encoder and train only the head on pooled features (fast);
            default: fine-tune the whole model.
        pooling: ``cls``, ``mean`` or ``last``; None: the adapter's default.
        max_length: tokens per text, special tokens included (longer texts are cut).
        max_train: use at most this many training examples (a seeded random subset).
        epochs: passes over the training examples; None: 3 (fine-tune) or 30 (probe).
        batch_size: examples per step; None: 32 (fine-tune) or 256 (probe).
        lr: peak learning rate; None: 1e-3 (fine-tune) or 3e-3 (probe). The fine-tuning
            default suits the small models plmkit trains on a CPU; use 2e-5 to 1e-4 for
            base-sized ones.
        seed: seeds the head, dropout, the training subset and the order of examples.
        progress: show a progress bar on stderr.
        accelerator: Lightning's accelerator (``auto``: a GPU when there is one, ``cpu``, ...).
        precision: Lightning's precision (``32-true``, ``bf16-mixed``, ``16-mixed`` ...);
            None: ``bf16-mixed`` on a GPU that supports it, ``32-true`` otherwise.
    """

    probe: bool = False
    pooling: str | None = None
    max_length: int = 64
    max_train: int | None = 2000
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    progress: bool = True
    accelerator: str = "auto"
    precision: str | None = None

    @property
    def mode(self) -> str:
        return "probe" if self.probe else "finetune"

    def resolved(self) -> EvalConfig:
        """A copy with the mode's defaults filled in for ``epochs``, ``lr`` and ``batch_size``."""
        return replace(
            self,
            epochs=self.epochs if self.epochs is not None else (30 if self.probe else 3),
            lr=self.lr if self.lr is not None else (3e-3 if self.probe else 1e-3),
            batch_size=self.batch_size or (256 if self.probe else 32),
        )


def default_precision(accelerator: str = "auto") -> str:
    """``bf16-mixed`` when ``accelerator`` runs on a CUDA GPU that supports it, else ``32-true``."""
    gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"


# ----------------------------------------------------------------------------- the model
def pool(hidden: Tensor, attention_mask: Tensor, pooling: str) -> Tensor:
    """``(B, L, T, H)`` hidden states -> ``(B, L, H)`` with ``cls``, ``mean`` or ``last``."""
    mask = attention_mask.to(hidden.dtype)[:, None, :, None]
    if pooling == "cls":
        return hidden[:, :, 0]
    if pooling == "mean":
        return (hidden * mask).sum(2) / mask.sum(2).clamp(min=1.0)
    if pooling == "last":
        last = (attention_mask.sum(1) - 1).clamp(min=0)
        index = last.view(-1, 1, 1, 1).expand(-1, hidden.shape[1], 1, hidden.shape[-1])
        return hidden.gather(2, index).squeeze(2)
    raise PlmkitError(f"unknown pooling '{pooling}': use {', '.join(POOLINGS)}")


class ScalarMix(nn.Module):
    """A learned ``gamma * sum_j softmax(w)_j * h_j`` over the layer dimension (dim 1)."""

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_layers))
        self.gamma = nn.Parameter(torch.ones(()))

    def forward(self, layers: Tensor) -> Tensor:  # (B, L, ...) -> (B, ...)
        w = torch.softmax(self.weights, dim=0).view(1, -1, *([1] * (layers.dim() - 2)))
        return self.gamma * (w * layers).sum(dim=1)


class Head(nn.Module):
    """Scalar mix (when there are several layers) -> dropout -> linear classifier."""

    def __init__(self, num_layers: int, hidden: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.mix = ScalarMix(num_layers) if num_layers > 1 else None
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden, num_labels)

    def forward(self, pooled: Tensor) -> Tensor:  # (B, L, H) -> (B, labels)
        x = self.mix(pooled) if self.mix is not None else pooled[:, 0]
        return self.linear(self.dropout(x))


class Features(pl.LightningModule):
    """``predict_step``: the frozen encoder's pooled features ``(B, L, H)``, float32 on the CPU."""

    def __init__(self, encoder: Encoder, pooling: str) -> None:
        super().__init__()
        self.encoder, self.pooling = encoder, pooling

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        hidden = self.encoder(batch["input_ids"], batch["attention_mask"])
        return pool(hidden, batch["attention_mask"], self.pooling).float().cpu()


class Classifier(pl.LightningModule):
    """Cross-entropy on a :class:`Head`, over an encoder's pooled states (fine-tuning: the
    encoder is trained too) or over precomputed ``features`` (probing, ``encoder=None``).

    AdamW (weight decay 0.01); with ``schedule`` the learning rate rises linearly over the
    first 10% of the steps and decays linearly to 0.
    """

    def __init__(self, head: Head, lr: float, encoder: Encoder | None = None,
                 pooling: str = "mean", schedule: bool = False) -> None:
        super().__init__()
        self.head, self.encoder = head, encoder
        self.lr, self.pooling, self.schedule = lr, pooling, schedule

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        if self.encoder is None:
            return self.head(batch["features"])
        hidden = self.encoder(batch["input_ids"], batch["attention_mask"])
        return self.head(pool(hidden, batch["attention_mask"], self.pooling))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = nn.functional.cross_entropy(self(batch).float(), batch["labels"])
        self.log("loss", loss, prog_bar=True)
        return loss

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self(batch).argmax(-1).cpu()

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.01)
        if not self.schedule:
            return optimizer
        from transformers import get_scheduler

        steps = int(self.trainer.estimated_stepping_batches)
        scheduler = get_scheduler("linear", optimizer, num_warmup_steps=max(1, steps // 10),
                                  num_training_steps=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler,
                                                         "interval": "step"}}


# ------------------------------------------------------------------------------ the runs
class _ProgressBar(TQDMProgressBar):
    """Lightning's bar on stderr (stdout carries only the scores), named, cleared when done."""

    def __init__(self, desc: str) -> None:
        super().__init__(leave=False)
        self.desc = desc

    def _bar(self) -> Tqdm:
        return Tqdm(desc=self.desc, disable=self.is_disabled, leave=False, dynamic_ncols=True,
                    file=sys.stderr, smoothing=0, bar_format=self.BAR_FORMAT)

    def init_train_tqdm(self) -> Tqdm:
        return self._bar()

    def init_predict_tqdm(self) -> Tqdm:
        return self._bar()

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(
            f"{self.desc} epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")

    def on_predict_batch_start(self, *args: Any, **kwargs: Any) -> None:
        super().on_predict_batch_start(*args, **kwargs)
        self.predict_progress_bar.set_description(f"{self.desc} (predict)")


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Hide Lightning's notes that say nothing about the evaluation (devices found, tips,
    few dataloader workers); its warnings and errors still show."""
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=PossibleUserWarning)
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
            yield
    finally:
        logger.setLevel(level)


def _trainer(cfg: EvalConfig, desc: str, epochs: int = 1, clip: float | None = None) -> pl.Trainer:
    precision = cfg.precision or default_precision(cfg.accelerator)
    try:
        return pl.Trainer(
            accelerator=cfg.accelerator, devices=1, precision=precision, max_epochs=epochs,
            logger=False, enable_checkpointing=False, enable_model_summary=False,
            enable_progress_bar=cfg.progress, callbacks=[_ProgressBar(desc)] if cfg.progress
            else None, gradient_clip_val=clip, num_sanity_val_steps=0,
        )
    except (ValueError, RuntimeError, MisconfigurationException) as exc:
        raise PlmkitError(
            f"cannot evaluate with accelerator '{cfg.accelerator}' and precision "
            f"'{precision}': {str(exc).splitlines()[0]}"
        ) from exc


class _Tokenize:
    """``collate_fn``: ``[(text, label), ...]`` -> ``input_ids``, ``attention_mask``, ``labels``."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, examples: Sequence[tuple[str, int]]) -> dict[str, Tensor]:
        enc = self.tokenizer([text for text, _ in examples], truncation=True,
                             max_length=self.max_length, padding=True, return_tensors="pt",
                             return_token_type_ids=False)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "labels": torch.tensor([label for _, label in examples])}


def _loader(data: Any, batch_size: int, seed: int | None = None, collate: Any = None
            ) -> DataLoader:
    """Batches of ``data`` in order, or shuffled with ``seed``."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(data, batch_size=batch_size, shuffle=seed is not None, generator=generator,
                      collate_fn=collate)


def _subset(train: list[tuple[str, int]], cap: int | None, seed: int) -> list[tuple[str, int]]:
    if cap is None or cap >= len(train):
        return list(train)
    return random.Random(seed).sample(train, cap)


def _probe(encoder: Encoder, tokenize: _Tokenize, train: list[tuple[str, int]],
           task: Task, cfg: EvalConfig, pooling: str, name: str) -> Tensor:
    """Predictions of a head trained on the frozen encoder's standardized features."""
    encoder.eval()
    extract = Features(encoder, pooling)
    trainer = _trainer(cfg, f"encode {name}")
    features = torch.cat(trainer.predict(extract, _loader(train, 64, collate=tokenize)))
    eval_features = torch.cat(trainer.predict(extract, _loader(task.eval, 64, collate=tokenize)))
    # standardize each feature with training statistics: one lr suits every model
    mean = features.mean(0, keepdim=True)
    std = features.std(0, keepdim=True).clamp(min=1e-6)
    features, eval_features = (features - mean) / std, (eval_features - mean) / std
    head = Head(features.shape[1], features.shape[2], len(task.labels), dropout=0.1)
    module = Classifier(head, cfg.lr)
    labels = torch.tensor([y for _, y in train])
    trainer = _trainer(cfg, f"probe {name}", cfg.epochs)
    trainer.fit(module, _loader(StackDataset(features=features, labels=labels), cfg.batch_size,
                                seed=cfg.seed))
    return torch.cat(trainer.predict(module, _loader(StackDataset(features=eval_features), 1024)))


def _finetune(encoder: Encoder, tokenize: _Tokenize, train: list[tuple[str, int]],
              task: Task, cfg: EvalConfig, pooling: str, name: str) -> Tensor:
    """Predictions of the encoder and a head trained together (gradients clipped at 1)."""
    with torch.no_grad():  # how many layers the head mixes
        sample = tokenize(train[:2])
        num_layers = encoder(sample["input_ids"], sample["attention_mask"]).shape[1]
    head = Head(num_layers, encoder.hidden_size, len(task.labels), dropout=0.1)
    module = Classifier(head, cfg.lr, encoder, pooling, schedule=True)
    trainer = _trainer(cfg, f"finetune {name}", cfg.epochs, clip=1.0)
    trainer.fit(module, _loader(train, cfg.batch_size, seed=cfg.seed, collate=tokenize))
    return torch.cat(trainer.predict(module, _loader(task.eval, 64, collate=tokenize)))


def run_evaluation(
    encoder: Encoder,
    tokenizer: Any,
    task: Task,
    cfg: EvalConfig,
    pooling: str,
    name: str,
) -> EvalResult:
    """Train a head (and, unless probing, the encoder) on ``task.train``; score ``task.eval``."""
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    train = _subset(task.train, cfg.max_train, cfg.seed)
    cfg = cfg.resolved()
    tokenize = _Tokenize(tokenizer, cfg.max_length)
    with _quiet_lightning():
        run = _probe if cfg.probe else _finetune
        preds = run(encoder, tokenize, train, task, cfg, pooling, name)
    accuracy, f1 = scores(preds, torch.tensor([y for _, y in task.eval]), len(task.labels))
    return EvalResult(task.name, name, cfg.mode, task.eval_split, accuracy, f1, len(train),
                      len(task.eval), time.perf_counter() - start)

