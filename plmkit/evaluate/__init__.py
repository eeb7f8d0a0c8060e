"""Downstream evaluation: fine-tune or linearly probe a pretrained encoder on text classification.

``plmkit evaluate MODEL --task NAME`` loads ``MODEL`` (a folder written by ``plmkit export`` or
a ``.ckpt`` written by ``plmkit fit``), puts a linear classifier on its pooled hidden states,
trains it on the task's training split (less a seeded validation split that picks the epoch)
and reports accuracy and macro-F1 (torchmetrics) on a held-out split; ``--seeds N`` repeats the
training with N seeds and reports the mean and the spread. ``--baseline random`` trains the
same architecture from random initialization with the same seeds and data, so the gain from
pretraining is printed beside the score.

The parts, one module each:

* :mod:`~plmkit.evaluate.tasks`: the built-in ``wordnet`` task and task files;
* :mod:`~plmkit.evaluate.adapters`: how a model folder becomes an encoder of hidden states.
  Transformers encoders are loaded with ``AutoModel`` and mean-pooled (``--pooling cls`` takes
  the first token; mean pooling scored higher on the WordNet task for small, briefly
  pretrained models, in both modes). Plugins adapt their own model types through the
  ``plmkit_evaluation_adapters`` hook (another pooling, an encoder alone, all layers);
* :mod:`~plmkit.evaluate.training`: the classifier, trained by Lightning's ``Trainer``;
* :mod:`~plmkit.evaluate.report`: the scores, the gain and the table.
"""

from __future__ import annotations

from pathlib import Path

import torch

from plmkit.errors import PlmkitError
from plmkit.evaluate.adapters import (
    DEFAULT_ADAPTER,
    POOLINGS,
    Adapter,
    Encoder,
    adapter_for,
    check_model,
    hf_adapter,
    load_encoder,
    model_folder,
    model_type_of,
    quiet_transformers,
    registered_adapters,
)
from plmkit.evaluate.report import EvalResult, Evaluation, SeedRun, combine
from plmkit.evaluate.tasks import BUILTIN_TASKS, Task, load_task
from plmkit.evaluate.training import (
    EvalConfig,
    Head,
    ScalarMix,
    default_finetune_lr,
    pool,
    run_evaluation,
    split_train,
)

__all__ = [
    "BUILTIN_TASKS", "DEFAULT_ADAPTER", "POOLINGS", "Adapter", "Encoder", "EvalConfig",
    "EvalResult", "Evaluation", "Head", "ScalarMix", "SeedRun", "Task", "adapter_for",
    "check_model", "combine", "default_finetune_lr", "evaluate", "hf_adapter", "load_encoder",
    "load_task", "model_folder", "model_type_of", "pool", "quiet_transformers",
    "registered_adapters", "run_evaluation", "score_model", "split_train",
]


def score_model(
    model: str | Path,
    task: str | Task = "wordnet",
    config: EvalConfig | None = None,
    name: str | None = None,
    random_init: bool = False,
) -> EvalResult:
    """The score of ``model`` on ``task`` or, with ``random_init``, of its architecture
    trained from random initialization (same seeds, same data): the mean over ``cfg.seeds``
    runs, each from a freshly loaded (or initialized) encoder."""
    cfg = config or EvalConfig()
    cfg.check()
    if cfg.pooling is not None and cfg.pooling not in POOLINGS:
        raise PlmkitError(f"unknown pooling '{cfg.pooling}': use {', '.join(POOLINGS)}")
    loaded = task if isinstance(task, Task) else load_task(task, seed=cfg.seed)
    name = name or ("random init" if random_init else str(model))
    results = []
    with model_folder(model) as folder:
        model_type = model_type_of(folder)
        pooling = cfg.pooling or adapter_for(model_type).pooling
        for seed in range(cfg.seed, cfg.seed + cfg.seeds):
            torch.manual_seed(seed)
            encoder, tokenizer, _ = load_encoder(folder, random_init=random_init)
            results.append(run_evaluation(encoder, tokenizer, loaded, cfg, pooling, name, seed))
            del encoder
    result = combine(results)
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
