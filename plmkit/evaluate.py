"""Downstream evaluation: fine-tune or linearly probe a pretrained encoder on text classification.

``plmkit evaluate MODEL --task NAME`` loads ``MODEL`` (a folder written by ``plmkit export`` or
a ``.ckpt`` written by ``plmkit fit``), puts a linear classifier on its pooled hidden states,
trains it on the task's training split and reports accuracy and macro-F1 (torchmetrics) on a
held-out split. ``--baseline random`` trains the same architecture from random initialization
with the same seed and data, so the gain from pretraining is printed beside the score.

How a model is turned into features is decided by an **adapter**, looked up by the model's
``config.json`` ``model_type``:

* encoders (BERT, RoBERTa, ALBERT, SpanBERT, StructBERT, ERNIE, ELECTRA, XLNet, ...):
  ``AutoModel``, mean pooling over the real tokens (``--pooling cls`` takes the first token;
  mean pooling scored higher on the WordNet task for small, briefly pretrained models, in
  both modes);
* GPT (``gpt2``): the base model's hidden states, last-token pooling (or ``--pooling mean``);
* T5: ``T5EncoderModel`` (the encoder only), mean pooling;
* ELMo (``plmkit-elmo``): ``plmkit.plugins.elmo.ElmoEmbedder``; its 2L+1 layers are combined
  by a learned scalar mix ``gamma * sum_j softmax(w)_j h_j`` and mean-pooled.

Third-party plugins add one with :func:`register_adapter`.

Everything is seeded (``--seed``): the classifier's initialization, dropout and the order of
the training examples, so two runs with the same arguments give the same numbers.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import json
import logging
import math
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from plmkit.errors import PlmkitError

log = logging.getLogger("plmkit")

Pooling = Literal["cls", "mean", "last"]
POOLINGS: tuple[str, ...] = ("cls", "mean", "last")

# ------------------------------------------------------------------------------------ tasks


@dataclass
class Task:
    """A labelled text-classification task: training and held-out examples, label names."""

    name: str
    labels: list[str]
    train: list[tuple[str, int]]
    eval: list[tuple[str, int]]
    eval_split: str


#: built-in tasks: name -> (description, loader(split) -> records with text/label)
BUILTIN_TASKS: dict[str, tuple[str, Callable[[str], list[dict]]]] = {}


def _wordnet(split: str) -> list[dict]:
    from plmkit.data.wordnet import load_eval

    return load_eval(split)


BUILTIN_TASKS["wordnet"] = (
    "WordNet gloss -> lexicographer category (37 classes, held out of the bundled corpus)",
    _wordnet,
)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    suffix = suffixes[-1] if suffixes else ""
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as handle:
            if suffix in (".csv", ".tsv"):
                return list(csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ","))
            if suffix in (".jsonl", ".json"):
                return [json.loads(line) for line in handle if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise PlmkitError(f"could not read task file {path}: {type(exc).__name__}: {exc}") from exc
    raise PlmkitError(f"task file {path} must be .csv, .tsv or .jsonl (optionally .gz)")


def load_task(
    name_or_path: str,
    eval_split: str = "test",
    text_column: str = "text",
    label_column: str = "label",
    holdout: float = 0.2,
    seed: int = 0,
) -> Task:
    """A built-in task by name, or a .csv / .tsv / .jsonl file with text and label columns.

    A file with a ``split`` column is split by it (``train`` and ``eval_split``); a file without
    one is shuffled with ``seed`` and its last ``holdout`` fraction is held out. Held-out
    examples whose label never occurs in training are dropped (with a warning).
    """
    path = Path(name_or_path).expanduser()
    if name_or_path in BUILTIN_TASKS:
        loader = BUILTIN_TASKS[name_or_path][1]
        try:
            train_rows, eval_rows = loader("train"), loader(eval_split)
        except ValueError as exc:
            raise PlmkitError(
                f"task {name_or_path}: {exc}; use --split validation or test"
            ) from exc
        name = name_or_path
    elif path.is_file():
        rows = _read_rows(path)
        if not rows:
            raise PlmkitError(f"task file {path} holds no rows; add text and label columns")
        columns = list(rows[0].keys())
        missing = [c for c in (text_column, label_column) if c not in columns]
        if missing:
            raise PlmkitError(
                f"task file {path} has no {' and no '.join(repr(c) for c in missing)} column "
                f"(it has: {', '.join(map(str, columns))}); name the columns text and label "
                "or pass --text-column / --label-column"
            )
        if "split" in columns:
            train_rows = [r for r in rows if r.get("split") == "train"]
            eval_rows = [r for r in rows if r.get("split") == eval_split]
            if not train_rows or not eval_rows:
                raise PlmkitError(
                    f"task file {path} has a split column but no rows with split 'train' "
                    f"and '{eval_split}'; fix the column or pass --split"
                )
        else:
            rows = list(rows)
            random.Random(seed).shuffle(rows)
            cut = max(1, min(len(rows) - 1, round(len(rows) * (1 - holdout))))
            train_rows, eval_rows = rows[:cut], rows[cut:]
            if not eval_rows:
                raise PlmkitError(f"task file {path} needs at least 2 rows")
        name = path.name
    else:
        close = difflib.get_close_matches(name_or_path, list(BUILTIN_TASKS), n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise PlmkitError(
            f"unknown task '{name_or_path}': {hint}pass a built-in task "
            f"({', '.join(BUILTIN_TASKS)}) or a .csv/.jsonl file with text and label columns"
        )
    labels = sorted({str(r[label_column]) for r in train_rows})
    if len(labels) < 2:
        raise PlmkitError(f"task {name} has fewer than 2 labels in its training split")
    index = {label: i for i, label in enumerate(labels)}

    def examples(rows: list[dict]) -> list[tuple[str, int]]:
        return [(str(r[text_column] or ""), index[str(r[label_column])]) for r in rows
                if str(r[label_column]) in index]

    train, held_out = examples(train_rows), examples(eval_rows)
    if len(held_out) < len(eval_rows):
        log.warning("task %s: %d held-out examples have labels unseen in training; dropped",
                    name, len(eval_rows) - len(held_out))
    if not held_out:
        raise PlmkitError(f"task {name}: no held-out example has a label seen in training")
    return Task(name, labels, train, held_out, eval_split)


# --------------------------------------------------------------------------------- adapters


class Encoder(nn.Module):
    """Wraps a backbone: ``forward(input_ids, attention_mask) -> (B, layers, T, H)``."""

    def __init__(self, backbone: nn.Module, hidden_size: int,
                 layers: Callable[[nn.Module, Tensor, Tensor], Tensor]) -> None:
        super().__init__()
        self.backbone = backbone
        self.hidden_size = hidden_size
        self._layers = layers

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self._layers(self.backbone, input_ids, attention_mask)


def _last_hidden(backbone: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    out = backbone(input_ids=input_ids, attention_mask=attention_mask)
    return out.last_hidden_state.unsqueeze(1)


@dataclass
class Adapter:
    """How to load one model type as an :class:`Encoder` (pretrained or randomly initialized).

    Args:
        load: ``load(folder, random_init) -> Encoder``.
        pooling: the default pooling (``cls``, ``mean`` or ``last``).
        description: shown in the docs and errors.
    """

    load: Callable[[Path, bool], Encoder]
    pooling: Pooling
    description: str


ADAPTERS: dict[str, Adapter] = {}


def register_adapter(model_type: str, adapter: Adapter) -> None:
    """Teach ``plmkit evaluate`` a model type (the ``model_type`` of its ``config.json``)."""
    ADAPTERS[model_type] = adapter


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide 'weights not used / newly initialized' notes (heads are dropped on purpose) and
    the save/load progress bars of transformers."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _hf_loader(model_class: str = "AutoModel") -> Callable[[Path, bool], Encoder]:
    def load(folder: Path, random_init: bool) -> Encoder:
        import transformers

        cls = getattr(transformers, model_class)
        with _quiet_transformers():
            if random_init:
                config = transformers.AutoConfig.from_pretrained(str(folder))
                model = cls.from_config(config) if model_class == "AutoModel" else cls(config)
            else:
                model = cls.from_pretrained(str(folder))
        config = model.config
        hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
        return Encoder(model, int(hidden), _last_hidden)

    return load


def _elmo_loader(folder: Path, random_init: bool) -> Encoder:
    try:
        from plmkit.plugins.elmo import ElmoBiLM, ElmoEmbedder
    except ImportError as exc:
        raise PlmkitError(
            f"{folder} is an ELMo model but plmkit.plugins.elmo is not available ({exc}); "
            "install the ELMo plugin"
        ) from exc
    with _quiet_transformers():  # its tokenizer load notes the unknown model type
        embedder = ElmoEmbedder.from_pretrained(str(folder), requires_grad=True)
    if random_init:  # same config and character table, fresh weights (the caller seeded torch)
        bilm = embedder.bilm
        embedder = ElmoEmbedder(ElmoBiLM(bilm.config, bilm.chars), requires_grad=True)
    embedder.scalar_mixes = nn.ModuleList()  # the evaluation head has its own scalar mix

    def layers(backbone: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        # (L + 1, B, T, 2P): the token layer and each biLSTM layer -> (B, L + 1, T, 2P)
        return backbone(input_ids, attention_mask)["layers"].transpose(0, 1)

    return Encoder(embedder, int(embedder.output_dim), layers)


_DEFAULT = Adapter(_hf_loader("AutoModel"), "mean", "AutoModel, mean pooling")
register_adapter("xlnet", Adapter(_hf_loader("AutoModel"), "mean", "AutoModel, mean pooling"))
register_adapter("gpt2", Adapter(_hf_loader("AutoModel"), "last",
                                 "the base GPT2Model's hidden states, last-token pooling"))
for _t5 in ("t5", "mt5", "umt5"):
    register_adapter(_t5, Adapter(_hf_loader("T5EncoderModel"), "mean",
                                  "T5EncoderModel (encoder only), mean pooling"))
register_adapter("plmkit-elmo", Adapter(_elmo_loader, "mean",
                                        "ElmoEmbedder, scalar mix of all layers, mean pooling"))


# ------------------------------------------------------------------------------ model files


def _model_type(folder: Path) -> str:
    config = folder / "config.json"
    if config.is_file():
        try:
            return str(json.loads(config.read_text(encoding="utf-8")).get("model_type", ""))
        except json.JSONDecodeError as exc:
            raise PlmkitError(f"{config} is not valid JSON: {exc}") from exc
    raise PlmkitError(
        f"{folder} is not a model folder (no config.json); pass a folder written by "
        "'plmkit export' or a .ckpt file written by 'plmkit fit'"
    )


def check_model(model: str | Path) -> Path:
    """``model`` as a path that exists (a model folder or a file); else a PlmkitError."""
    path = Path(model).expanduser()
    if not path.exists():
        raise PlmkitError(
            f"model {path} does not exist; pass a folder written by 'plmkit export' or a .ckpt "
            "file written by 'plmkit fit'"
        )
    if path.is_dir():
        _model_type(path)
    return path


@contextmanager
def model_folder(model: str | Path) -> Iterator[Path]:
    """An exported model folder for ``model``: the folder itself, or a checkpoint exported to
    a temporary folder (removed afterwards)."""
    path = check_model(model)
    if path.is_dir():
        yield path
        return
    from plmkit.export import objective_from_checkpoint

    objective = objective_from_checkpoint(path)
    with tempfile.TemporaryDirectory(prefix="plmkit-eval-") as tmp:
        with _quiet_transformers():
            objective.export(tmp)
        del objective
        yield Path(tmp)


def load_encoder(folder: Path, random_init: bool = False) -> tuple[Encoder, Any, str]:
    """``(encoder, tokenizer, model_type)`` of an exported model folder."""
    from plmkit.data.tokenizer import load_tokenizer

    model_type = _model_type(folder)
    adapter = ADAPTERS.get(model_type, _DEFAULT)
    tokenizer = load_tokenizer(folder)
    tokenizer.padding_side = "right"
    try:
        encoder = adapter.load(folder, random_init)
    except PlmkitError:
        raise
    except Exception as exc:
        raise PlmkitError(
            f"could not load {folder} as a '{model_type}' encoder: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    return encoder, tokenizer, model_type


# ---------------------------------------------------------------------------- classifier


class ScalarMix(nn.Module):
    """ELMo's ``gamma * sum_j softmax(w)_j * h_j`` over the layer dimension (dim 1)."""

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_layers))
        self.gamma = nn.Parameter(torch.ones(()))

    def forward(self, layers: Tensor) -> Tensor:  # (B, L, ...) -> (B, ...)
        w = torch.softmax(self.weights, dim=0).view(1, -1, *([1] * (layers.dim() - 2)))
        return self.gamma * (w * layers).sum(dim=1)


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


# ------------------------------------------------------------------------------- training


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

    @property
    def mode(self) -> str:
        return "probe" if self.probe else "finetune"


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


def _tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> dict[str, Tensor]:
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=True,
                    return_tensors="pt", return_token_type_ids=False)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def _batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(batch_size))


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


def _scores(preds: Tensor, target: Tensor, num_labels: int) -> tuple[float, float]:
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

    accuracy = multiclass_accuracy(preds, target, num_classes=num_labels, average="micro")
    f1 = multiclass_f1_score(preds, target, num_classes=num_labels, average="macro")
    return float(accuracy), float(f1)


def _subset(train: list[tuple[str, int]], cap: int | None, seed: int) -> list[tuple[str, int]]:
    if cap is None or cap >= len(train):
        return list(train)
    rng = random.Random(seed)
    return rng.sample(train, cap)


def _encode_all(encoder: Encoder, tokenizer: Any, texts: Sequence[str], cfg: EvalConfig,
                pooling: str, desc: str) -> Tensor:
    """Pooled features ``(N, L, H)`` of a frozen encoder."""
    chunks = []
    batches = _batches(len(texts), 64, None)
    with torch.no_grad(), _progress(len(batches), desc, cfg.progress) as bar:
        for idx in batches:
            batch = _tokenize(tokenizer, [texts[i] for i in idx.tolist()], cfg.max_length)
            chunks.append(pool(encoder(**batch), batch["attention_mask"], pooling).float())
            bar.update(1)
    return torch.cat(chunks)


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
    generator = torch.Generator().manual_seed(cfg.seed)
    train = _subset(task.train, cfg.max_train, cfg.seed)
    texts, labels = [t for t, _ in train], torch.tensor([y for _, y in train])
    eval_texts = [t for t, _ in task.eval]
    eval_labels = torch.tensor([y for _, y in task.eval])
    num_labels = len(task.labels)
    epochs = cfg.epochs if cfg.epochs is not None else (30 if cfg.probe else 3)
    lr = cfg.lr if cfg.lr is not None else (3e-3 if cfg.probe else 1e-3)
    batch_size = cfg.batch_size or (256 if cfg.probe else 32)
    tag = f"{cfg.mode} {name}"

    if cfg.probe:
        encoder.eval()
        features = _encode_all(encoder, tokenizer, texts, cfg, pooling, f"encode {name}")
        eval_features = _encode_all(encoder, tokenizer, eval_texts, cfg, pooling,
                                    f"encode {name} ({task.eval_split})")
        # standardize each feature with training statistics: one lr suits every model
        mean = features.mean(0, keepdim=True)
        std = features.std(0, keepdim=True).clamp(min=1e-6)
        features, eval_features = (features - mean) / std, (eval_features - mean) / std
        head = Head(features.shape[1], features.shape[2], num_labels, dropout=0.1)
        optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.01)
        steps = epochs * math.ceil(len(texts) / batch_size)
        head.train()
        with _progress(steps, tag, cfg.progress) as bar:
            for _ in range(epochs):
                for idx in _batches(len(texts), batch_size, generator):
                    loss = nn.functional.cross_entropy(head(features[idx]), labels[idx])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        head.eval()
        with torch.no_grad():
            preds = head(eval_features).argmax(-1)
    else:
        from transformers import get_scheduler

        with torch.no_grad():
            sample = _tokenize(tokenizer, texts[:2], cfg.max_length)
            num_layers = encoder(**sample).shape[1]
        head = Head(num_layers, encoder.hidden_size, num_labels, dropout=0.1)
        params = [p for p in [*encoder.parameters(), *head.parameters()] if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
        steps = epochs * math.ceil(len(texts) / batch_size)
        scheduler = get_scheduler("linear", optimizer, num_warmup_steps=max(1, steps // 10),
                                  num_training_steps=steps)
        encoder.train()
        head.train()
        with _progress(steps, tag, cfg.progress) as bar:
            for _ in range(epochs):
                for idx in _batches(len(texts), batch_size, generator):
                    batch = _tokenize(tokenizer, [texts[i] for i in idx.tolist()], cfg.max_length)
                    pooled = pool(encoder(**batch), batch["attention_mask"], pooling)
                    loss = nn.functional.cross_entropy(head(pooled), labels[idx])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    optimizer.step()
                    scheduler.step()
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        encoder.eval()
        head.eval()
        chunks = []
        with torch.no_grad():
            for idx in _batches(len(eval_texts), 64, None):
                batch = _tokenize(tokenizer, [eval_texts[i] for i in idx.tolist()],
                                  cfg.max_length)
                pooled = pool(encoder(**batch), batch["attention_mask"], pooling)
                chunks.append(head(pooled).argmax(-1))
        preds = torch.cat(chunks)
    accuracy, f1 = _scores(preds, eval_labels, num_labels)
    return EvalResult(task.name, name, cfg.mode, task.eval_split, accuracy, f1, len(train),
                      len(task.eval), time.perf_counter() - start)


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


def score_model(
    model: str | Path,
    task: str | Task = "wordnet",
    config: EvalConfig | None = None,
    name: str | None = None,
    random_init: bool = False,
) -> EvalResult:
    """The score of ``model`` on ``task`` or, with ``random_init``, of its architecture
    trained from random initialization (same seed, same data)."""
    cfg = config or EvalConfig()
    if cfg.pooling is not None and cfg.pooling not in POOLINGS:
        raise PlmkitError(f"unknown pooling '{cfg.pooling}': use {', '.join(POOLINGS)}")
    loaded = task if isinstance(task, Task) else load_task(task, seed=cfg.seed)
    name = name or ("random init" if random_init else str(model))
    with model_folder(model) as folder:
        model_type = _model_type(folder)
        pooling = cfg.pooling or ADAPTERS.get(model_type, _DEFAULT).pooling
        torch.manual_seed(cfg.seed)
        encoder, tokenizer, _ = load_encoder(folder, random_init=random_init)
        result = run_evaluation(encoder, tokenizer, loaded, cfg, pooling, name)
    result.random_init = random_init
    result.extra = {"model_type": model_type, "pooling": pooling}
    return result


def evaluate(
    model: str | Path,
    task: str | Task = "wordnet",
    baseline: str | None = None,
    config: EvalConfig | None = None,
    name: str | None = None,
) -> Evaluation:
    """Score ``model`` (an exported folder or a ``.ckpt``) on ``task``.

    Args:
        model: a folder written by ``plmkit export`` or a checkpoint written by ``plmkit fit``.
        task: a built-in task name (``wordnet``), a .csv/.jsonl path or a :class:`Task`.
        baseline: ``"random"`` also scores the same architecture from random initialization.
        config: the evaluation settings (:class:`EvalConfig`).
        name: how the model is called in the table (default: the path).
    """
    cfg = config or EvalConfig()
    if baseline not in (None, "random"):
        raise PlmkitError(f"unknown baseline '{baseline}': the only baseline is 'random'")
    loaded = task if isinstance(task, Task) else load_task(task, seed=cfg.seed)
    score = score_model(model, loaded, cfg, name)
    base = score_model(model, loaded, cfg, random_init=True) if baseline == "random" else None
    return Evaluation(score, base)
