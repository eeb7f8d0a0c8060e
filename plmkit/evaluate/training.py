"""Training the classifier: a linear head on pooled hidden states, either fine-tuned together
with the encoder or trained on the frozen encoder's features (a linear probe).

Both run on Lightning's ``Trainer``: a GPU when there is one (``accelerator="auto"``), with
the precision options of ``plmkit fit`` (default ``bf16-mixed`` on a GPU that supports it,
``32-true`` otherwise). Everything is seeded: the head's initialization, dropout and the order
of the training examples, so the same settings give the same numbers on the same machine.

A seeded ``val_fraction`` of the training examples is held out (never the scored split): the
model is validated after every epoch and Lightning's ``ModelCheckpoint`` keeps the epoch with
the best validation accuracy (of equals, the one with the lowest validation loss), whose
weights are the ones scored.
"""

from __future__ import annotations

import logging
import random
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from torch.utils.data import DataLoader, StackDataset

from plmkit.distributed import default_precision
from plmkit.errors import PlmkitError
from plmkit.evaluate.adapters import POOLINGS, Encoder
from plmkit.evaluate.report import EvalResult, SeedRun, scores
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
        lr: peak learning rate; None: 3e-3 for a probe, and for fine-tuning one that falls
            with the encoder's width (:func:`default_finetune_lr`: 1e-3 at hidden size 128,
            3e-4 at 256, 1e-4 up to 768, 5e-5 above).
        seed: seeds the training subset and the validation split and, with ``seeds``, the
            first of the training runs (head, dropout, order of examples).
        seeds: train this many times, with seeds ``seed``, ``seed + 1``, ...; the score is
            the mean, and each run is kept (the data are the same for all of them).
        val_fraction: hold out this seeded fraction of the training examples to choose the
            epoch with the best validation accuracy; 0: score the last epoch.
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
    seeds: int = 1
    val_fraction: float = 0.1
    progress: bool = True
    accelerator: str = "auto"
    precision: str | None = None

    @property
    def mode(self) -> str:
        return "probe" if self.probe else "finetune"

    def check(self) -> None:
        """A PlmkitError for settings no run can use."""
        if self.seeds < 1:
            raise PlmkitError(f"--seeds must be at least 1, got {self.seeds}")
        if not 0 <= self.val_fraction < 1:
            raise PlmkitError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")

    def resolved(self, hidden_size: int | None = None) -> EvalConfig:
        """A copy with the mode's defaults filled in for ``epochs``, ``lr`` and ``batch_size``
        (the fine-tuning ``lr`` for an encoder of ``hidden_size``)."""
        lr = 3e-3 if self.probe else default_finetune_lr(hidden_size)
        return replace(
            self,
            epochs=self.epochs if self.epochs is not None else (30 if self.probe else 3),
            lr=self.lr if self.lr is not None else lr,
            batch_size=self.batch_size or (256 if self.probe else 32),
        )


def default_finetune_lr(hidden_size: int | None) -> float:
    """The default fine-tuning learning rate of an encoder ``hidden_size`` wide.

    Wider encoders take smaller steps, as in the ELECTRA paper (3e-4 Small, 1e-4 Base, 5e-5
    Large) and BERT's 2e-5 to 5e-5 for Base and Large; the 2 x 128 models plmkit trains on a
    CPU need 1e-3 to move from the majority class in 3 short epochs.
    """
    width = hidden_size or 128
    return 1e-3 if width <= 128 else 3e-4 if width <= 256 else 1e-4 if width <= 768 else 5e-5


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

    Validation logs, over the whole validation set, ``val_accuracy``, ``val_loss`` and
    ``val_score``: the accuracy less ``loss / (1 + loss)`` divided by twice the number of
    examples, under half an example's worth of accuracy, so that it ranks epochs by accuracy
    and equal accuracies by loss.
    """

    def __init__(self, head: Head, lr: float, encoder: Encoder | None = None,
                 pooling: str = "mean", schedule: bool = False) -> None:
        super().__init__()
        self.head, self.encoder = head, encoder
        self.lr, self.pooling, self.schedule = lr, pooling, schedule
        self.val_history: list[float] = []
        self.val_losses: list[float] = []
        self._val: list[tuple[Tensor, Tensor]] = []

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

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        logits = self(batch).float()
        self._val.append((logits.argmax(-1) == batch["labels"],
                          nn.functional.cross_entropy(logits, batch["labels"], reduction="none")))

    def on_validation_epoch_end(self) -> None:
        correct, losses = (torch.cat(t).double() for t in zip(*self._val))
        self._val.clear()
        accuracy, loss = float(correct.mean()), float(losses.mean())
        self.val_history.append(accuracy)
        self.val_losses.append(loss)
        self.log("val_accuracy", accuracy, prog_bar=True)
        self.log("val_loss", loss)
        self.log("val_score", accuracy - loss / (1 + loss) / (2 * len(correct)))

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

    def init_validation_tqdm(self) -> Tqdm:
        return Tqdm(desc=f"{self.desc} (validate)", position=1, disable=self.is_disabled,
                    leave=False, dynamic_ncols=True, file=sys.stderr, bar_format=self.BAR_FORMAT)

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(
            f"{self.desc} epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")

    def on_validation_batch_start(self, *args: Any, **kwargs: Any) -> None:
        super().on_validation_batch_start(*args, **kwargs)
        self.val_progress_bar.set_description(f"{self.desc} (validate)")

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


def _trainer(cfg: EvalConfig, desc: str, epochs: int = 1, clip: float | None = None,
             best: ModelCheckpoint | None = None) -> pl.Trainer:
    precision = cfg.precision or default_precision(cfg.accelerator)
    callbacks = [*([_ProgressBar(desc)] if cfg.progress else []), *([best] if best else [])]
    try:
        return pl.Trainer(
            accelerator=cfg.accelerator, devices=1, precision=precision, max_epochs=epochs,
            logger=False, enable_checkpointing=best is not None, enable_model_summary=False,
            enable_progress_bar=cfg.progress, callbacks=callbacks, gradient_clip_val=clip,
            num_sanity_val_steps=0,
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


def split_train(examples: Sequence[tuple[str, int]], val_fraction: float, cap: int | None,
                seed: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """``(train, validation)``: a seeded ``val_fraction`` of ``examples`` held out (at least
    one example when the fraction is above 0) and at most ``cap`` of the rest."""
    order = list(examples)
    random.Random(seed).shuffle(order)
    n_val = 0
    if val_fraction > 0 and len(order) > 1:
        n_val = min(len(order) - 1, max(1, round(len(order) * val_fraction)))
    rest = order[n_val:]
    return (rest if cap is None else rest[:cap]), order[:n_val]


#: predictions on the scored split, and the run (its scores not filled in yet)
Fitted = tuple[Tensor, SeedRun]


def _fit_best(cfg: EvalConfig, desc: str, module: Classifier, train: DataLoader,
              val: DataLoader | None, val_labels: Tensor, scored: DataLoader,
              clip: float | None = None) -> Fitted:
    """Train ``module`` for ``cfg.epochs`` and predict ``scored`` with the weights of the epoch
    with the best ``val_score``, or of the last epoch without ``val``."""
    epochs = int(cfg.epochs or 0)
    with tempfile.TemporaryDirectory(prefix="plmkit-eval-") as tmp:
        best = None if val is None else ModelCheckpoint(
            dirpath=tmp, filename="best-{epoch}", monitor="val_score", mode="max",
            save_top_k=1, save_weights_only=True)
        trainer = _trainer(cfg, desc, epochs, clip, best)
        trainer.fit(module, train, val)
        if best is None:
            return torch.cat(trainer.predict(module, scored)), SeedRun(cfg.seed, 0, 0, epochs)
        preds = torch.cat(trainer.predict(module, scored, ckpt_path="best"))
        val_preds = torch.cat(trainer.predict(module, val, ckpt_path="best"))
        match = re.search(r"epoch=(\d+)", Path(best.best_model_path).name)
        epoch = int(match.group(1)) + 1 if match else epochs
    # recomputed with the weights scored: it must be the best of val_history
    val_accuracy = float((val_preds == val_labels).double().mean())
    return preds, SeedRun(cfg.seed, 0, 0, epoch, val_accuracy, list(module.val_history),
                          list(module.val_losses))


def _labels(examples: Sequence[tuple[str, int]]) -> Tensor:
    return torch.tensor([y for _, y in examples], dtype=torch.long)


def _probe(encoder: Encoder, tokenize: _Tokenize, train: list[tuple[str, int]],
           val: list[tuple[str, int]], task: Task, cfg: EvalConfig, pooling: str,
           name: str) -> Fitted:
    """A head trained on the frozen encoder's standardized features."""
    encoder.eval()
    extract = Features(encoder, pooling)
    trainer = _trainer(cfg, f"encode {name}")

    def encode(examples: list[tuple[str, int]]) -> Tensor:
        return torch.cat(trainer.predict(extract, _loader(examples, 64, collate=tokenize)))

    features = encode(train)
    # standardize each feature with training statistics: one lr suits every model
    mean = features.mean(0, keepdim=True)
    std = features.std(0, keepdim=True).clamp(min=1e-6)

    def data(examples: list[tuple[str, int]], x: Tensor | None = None) -> StackDataset:
        x = encode(examples) if x is None else x
        return StackDataset(features=(x - mean) / std, labels=_labels(examples))

    head = Head(features.shape[1], features.shape[2], len(task.labels), dropout=0.1)
    return _fit_best(cfg, f"probe {name}", Classifier(head, cfg.lr),
                     _loader(data(train, features), cfg.batch_size, seed=cfg.seed),
                     _loader(data(val), 1024) if val else None, _labels(val),
                     _loader(data(task.eval), 1024))


def _finetune(encoder: Encoder, tokenize: _Tokenize, train: list[tuple[str, int]],
              val: list[tuple[str, int]], task: Task, cfg: EvalConfig, pooling: str,
              name: str) -> Fitted:
    """The encoder and a head trained together (gradients clipped at 1)."""
    with torch.no_grad():  # how many layers the head mixes
        sample = tokenize(train[:2])
        num_layers = encoder(sample["input_ids"], sample["attention_mask"]).shape[1]
    head = Head(num_layers, encoder.hidden_size, len(task.labels), dropout=0.1)
    module = Classifier(head, cfg.lr, encoder, pooling, schedule=True)
    return _fit_best(cfg, f"finetune {name}", module,
                     _loader(train, cfg.batch_size, seed=cfg.seed, collate=tokenize),
                     _loader(val, 64, collate=tokenize) if val else None, _labels(val),
                     _loader(task.eval, 64, collate=tokenize), clip=1.0)


def run_evaluation(
    encoder: Encoder,
    tokenizer: Any,
    task: Task,
    cfg: EvalConfig,
    pooling: str,
    name: str,
    seed: int | None = None,
) -> EvalResult:
    """Train a head (and, unless probing, the encoder) on ``task.train`` less a validation
    split; score ``task.eval`` at the epoch with the best validation accuracy.

    The training subset and the validation split follow ``cfg.seed``; this run's training
    (head, dropout, order of examples) follows ``seed`` (default ``cfg.seed``).
    """
    start = time.perf_counter()
    cfg.check()
    train, val = split_train(task.train, cfg.val_fraction, cfg.max_train, cfg.seed)
    cfg = replace(cfg.resolved(encoder.hidden_size), seed=cfg.seed if seed is None else seed)
    torch.manual_seed(cfg.seed)
    tokenize = _Tokenize(tokenizer, cfg.max_length)
    with _quiet_lightning():
        run = _probe if cfg.probe else _finetune
        preds, seed_run = run(encoder, tokenize, train, val, task, cfg, pooling, name)
    accuracy, f1 = scores(preds, _labels(task.eval), len(task.labels))
    return EvalResult(task.name, name, cfg.mode, task.eval_split, accuracy, f1, len(train),
                      len(task.eval), time.perf_counter() - start, num_val=len(val),
                      epochs=int(cfg.epochs or 0), lr=float(cfg.lr or 0.0),
                      runs=[replace(seed_run, accuracy=accuracy, macro_f1=f1)])
