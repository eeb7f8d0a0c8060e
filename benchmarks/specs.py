"""What each benchmarked method is: its recipe, the overrides that make both sides comparable,
and how one run is configured. Both sides build the objective from here, so they share the
model configuration, the tokenizer and the tokenized corpus.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import yaml

#: model sizes the harness knows; ``small`` is what the issue's targets are about
SIZES = ("tiny", "small", "base")

# XLNet has only tiny/base recipes: its benchmark "small" is the ELECTRA paper's Small encoder
# (12 x 256, 4 heads, FFN 1024) on the tiny recipe's data settings; both sides get it.
_XLNET_SMALL = {"hidden_size": 256, "num_layers": 12, "num_heads": 4, "intermediate_size": 1024}


@dataclass(frozen=True)
class MethodSpec:
    """One benchmarked method.

    Args:
        name: benchmark name (``bert``, ``bert_wwm`` ...).
        objective: plmkit objective the recipe builds (also the recipe prefix).
        baseline: one line: what the transformers-path side runs.
        model: init-arg overrides of the recipe (both sides), per size.
        data: data overrides of the recipe (both sides).
        batch: default global batch of ``benchmarks all`` at size small on CPU.
    """

    name: str
    objective: str
    baseline: str
    model: dict[str, dict[str, Any]] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    batch: int = 16


_MLM = {"nsp": False, "packing": "stream", "short_seq_prob": 0.0}
SPECS: dict[str, MethodSpec] = {s.name: s for s in (
    MethodSpec("bert", "bert", "BertForPreTraining, MLM loss over all positions (as the "
               "class computes it) + DataCollatorForLanguageModeling on group_texts blocks",
               model={"tiny": _MLM, "small": _MLM}),
    MethodSpec("bert_wwm", "bert", "as bert, DataCollatorForLanguageModeling("
               "whole_word_mask=True) with offset_mapping",
               model={"tiny": {**_MLM, "masking": {"whole_word": True}},
                      "small": {**_MLM, "masking": {"whole_word": True}}}),
    MethodSpec("bert_30k", "bert", "as bert, with the papers' 30522-entry WordPiece "
               "vocabulary size (trained on the bundled corpus) instead of the recipe's 8192",
               model={"tiny": _MLM, "small": _MLM}, data={"vocab_size": 30522}),
    MethodSpec("electra_30k", "electra", "as electra, with the paper's 30522-entry WordPiece "
               "vocabulary size (trained on the bundled corpus) instead of the recipe's 8192",
               data={"vocab_size": 30522}),
    MethodSpec("roberta", "roberta", "RobertaForMaskedLM(**batch).loss + "
               "DataCollatorForLanguageModeling on group_texts blocks"),
    MethodSpec("electra", "electra", "ElectraForMaskedLM (logits and loss on every position) "
               "+ ElectraForPreTraining, shared embeddings, DataCollatorForLanguageModeling "
               "(85% [MASK], 15% kept)"),
    MethodSpec("xlnet", "xlnet", "XLNetLMHeadModel(**batch).loss + "
               "DataCollatorForPermutationLanguageModeling (K = 6, spans <= 5)",
               model={"small": _XLNET_SMALL}),
    MethodSpec("gpt", "gpt", "GPT2LMHeadModel(**batch).loss + "
               "DataCollatorForLanguageModeling(mlm=False) on group_texts blocks",
               data={"vocab_size": 8192}, batch=8),
    MethodSpec("t5", "t5", "T5ForConditionalGeneration(**batch).loss + a port of "
               "FlaxDataCollatorForT5MLM (run_t5_mlm_flax.py) on group_texts blocks",
               model={"tiny": {"optimizer": "adamw"}, "small": {"optimizer": "adamw"}},
               data={"vocab_size": 8192}, batch=16),
)}


@dataclass
class RunConfig:
    """One measurement; serialised to the worker subprocess as JSON."""

    method: str
    side: str = "plmkit"  # "plmkit" or "baseline"
    size: str = "small"
    seq: int = 128
    batch: int = 32
    steps: int = 5
    warmup: int = 2
    precision: str = "32"  # "32" or "bf16-mixed"
    compile: bool = False
    device: str = "cpu"
    threads: int = 0  # 0: torch's default
    workers: int = 1
    max_documents: int | None = None
    cache_dir: str | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def recipe_name(spec: MethodSpec, size: str) -> str:
    if spec.objective == "xlnet" and size == "small":
        return "xlnet_tiny"  # sizes come from _XLNET_SMALL
    return f"{spec.objective}_{size}"


def load_recipe(name: str) -> dict[str, Any]:
    from plmkit.registry import get_registry

    return yaml.safe_load(get_registry().recipe(name).path.read_text())


def build(cfg: RunConfig) -> tuple[Any, Any]:
    """The objective and the ``PretrainDataModule`` of one run (tokenizer not yet resolved)."""
    from plmkit.data.datamodule import PretrainDataModule

    spec = SPECS[cfg.method]
    recipe = load_recipe(recipe_name(spec, cfg.size))
    module, cls = recipe["model"]["class_path"].rsplit(".", 1)
    args = dict(recipe["model"].get("init_args", {}))
    for overrides in (spec.model.get(cfg.size, {}), cfg.model_overrides):
        for key, value in overrides.items():  # a typed block (masking: ...) is merged
            both = isinstance(value, dict) and isinstance(args.get(key), dict)
            args[key] = {**args[key], **value} if both else value
    # a short run: warm up for one step (the schedule costs the same on both sides)
    args["optim"] = {**args.get("optim", {}), "warmup_steps": 1}
    args["compile"] = cfg.compile
    objective = getattr(importlib.import_module(module), cls)(**args)
    data = {k: v for k, v in recipe.get("data", {}).items()}
    data.update(spec.data)
    data.update(max_length=cfg.seq, batch_size=cfg.batch, num_workers=cfg.workers,
                max_documents=cfg.max_documents, cache_dir=cfg.cache_dir, corpus="bundled")
    return objective, PretrainDataModule(**data)


def model_configs(model: Any) -> dict[str, dict[str, Any]]:
    """The Hugging Face config(s) of a model, for the "same configuration" check."""
    towers = {"model": model}
    if hasattr(model, "discriminator") and hasattr(model, "generator"):
        towers = {"discriminator": model.discriminator, "generator": model.generator}
    out = {}
    for name, tower in towers.items():
        config = tower.config.to_dict()
        for key in ("transformers_version", "_attn_implementation_autoset", "architectures",
                    "dtype", "torch_dtype", "use_cache"):
            config.pop(key, None)
        out[name] = config
    return out


def train_documents(dm: Any, corpus: Any) -> np.ndarray:
    """The training documents (the validation split held out, as the DataModule does)."""
    return np.flatnonzero(dm.split_documents(corpus.num_documents)[0])


def token_stream(corpus: Any, docs: np.ndarray, before: list[int], after: list[int]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ``before + doc + after`` for every document: the transformers path's
    tokenized dataset before ``group_texts``. Returns the ids and a word-start flag per token
    (special tokens start their own word)."""
    starts, ends = corpus.doc_token_bounds()
    pieces, words = [], []
    pre = np.asarray(before, dtype=np.int64)
    post = np.asarray(after, dtype=np.int64)
    ones_pre, ones_post = np.ones(len(pre), bool), np.ones(len(post), bool)
    for d in docs:
        s, e = int(starts[d]), int(ends[d])
        if e <= s:
            continue
        tokens = corpus.read(s, e)  # a document lies in one shard of the cache
        pieces += [pre, tokens["ids"], post]
        words += [ones_pre, tokens["word_start"], ones_post]
    return np.concatenate(pieces), np.concatenate(words)


def group_texts(stream: np.ndarray, block: int) -> np.ndarray:
    """``run_mlm.py``/``run_clm.py``'s ``group_texts``: consecutive blocks, remainder dropped."""
    n = len(stream) // block * block
    return stream[:n].reshape(-1, block)
