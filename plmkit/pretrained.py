"""Continue pretraining from a Hugging Face folder: ``plmkit fit --model.init_from PATH``.

PATH is a local folder in ``save_pretrained`` format, e.g. one that ``plmkit export`` wrote.
The run uses the folder's tokenizer and starts from its weights; the objective builds its model
from the recipe as usual, so the checkpoint rebuilds from its saved hyperparameters alone (the
folder is not needed after the first step). The recipe's sizes must therefore be the folder's:
a config.json field that fixes a shape (the objective's ``shape_fields``) and disagrees is a
one-line error naming the field and the option that sets it.

Which modules are loaded from where is the objective's :meth:`~plmkit.objective.Objective.\
pretrained_modules`: by default the module that ``plmkit export`` writes, from the folder
itself; ELECTRA adds its generator from ``generator/``. Parameters the folder has no weights
for (an NSP head, a generator) keep the objective's fresh initialisation, and a log line
names them. Nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel
from transformers.utils import logging as hf_logging

from plmkit.data.tokenizer import add_special_tokens, load_tokenizer, tokenizer_digest
from plmkit.errors import PlmkitError

log = logging.getLogger("plmkit")

#: config fields that are not the architecture: bookkeeping, token ids (from the tokenizer),
#: inference settings and training hyperparameters (the recipe's are used)
_NOT_COMPARED = frozenset({
    "_name_or_path", "architectures", "transformers_version", "dtype", "torch_dtype",
    "use_cache", "id2label", "label2id", "problem_type", "return_dict", "output_attentions",
    "output_hidden_states", "chunk_size_feed_forward", "is_decoder", "add_cross_attention",
    "is_encoder_decoder", "initializer_range", "initializer_factor", "pad_token_id",
    "bos_token_id", "eos_token_id", "sep_token_id", "decoder_start_token_id", "mem_len",
    "reuse_len", "use_mems_eval", "use_mems_train", "start_n_top", "end_n_top", "n_ctx",
    "task_specific_params", "tokenizer_class", "prefix", "gradient_checkpointing",
})
#: different names of one function
_SAME = [{"gelu_new", "gelu_pytorch_tanh", "gelu_fast"}]


def pretrained_folder(init_from: str | Path) -> Path:
    """The folder of ``--model.init_from``; anything but a local Hugging Face folder is a
    one-line error (nothing is downloaded)."""
    path = Path(init_from).expanduser()
    if not path.is_dir():
        raise PlmkitError(
            f"--model.init_from {init_from} is not a local folder: init_from takes a folder in "
            "Hugging Face format (save_pretrained, or 'plmkit export'); nothing is downloaded"
        )
    if not (path / "config.json").is_file():
        raise PlmkitError(f"--model.init_from {path} has no config.json; pass a folder written "
                          "by save_pretrained or 'plmkit export'")
    return path


def pretrained_tokenizer(objective: Any) -> Any:
    """The tokenizer of ``objective.init_from``, with the objective's special tokens added:
    the tokenizer the run must train with."""
    with _quiet_transformers():  # AutoTokenizer reads config.json, e.g. of a model it lacks
        tokenizer = load_tokenizer(pretrained_folder(objective.init_from))
    add_special_tokens(tokenizer, objective.special_tokens())
    return tokenizer


def use_init_from(objective: Any, datamodule: Any, resuming: bool) -> None:
    """Before ``fit``/``validate``: give ``datamodule`` the folder's tokenizer and check the
    recipe's sizes against the folder, before anything is written. A resumed run keeps its
    checkpoint's weights and tokenizer, so the folder is not read."""
    if getattr(objective, "init_from", None) is None:
        return
    if resuming:
        log.info("resuming a checkpoint: its weights are used, not --model.init_from %s",
                 objective.init_from)
        objective.init_from = None
        return
    tokenizer = pretrained_tokenizer(objective)
    given = getattr(datamodule, "tokenizer_path", None)
    if given:
        other = load_tokenizer(given)
        add_special_tokens(other, objective.special_tokens())
        if tokenizer_digest(other) != tokenizer_digest(tokenizer):
            raise PlmkitError(
                f"--data.tokenizer {given} is not the tokenizer of --model.init_from "
                f"{objective.init_from}; leave --data.tokenizer unset (the folder's is used)"
            )
    datamodule.use_tokenizer(tokenizer)
    objective.attach_tokenizer(tokenizer, datamodule.max_length)
    with torch.device("meta"):  # the shapes only: nothing is allocated
        model = objective.build_model()
    for sub, module in _modules(objective, model).items():
        folder = _subfolder(objective, sub, report=False)
        if folder is not None:
            check_config(objective, module, folder, report=False)


def check_config(objective: Any, module: nn.Module, folder: Path, report: bool = True) -> None:
    """A one-line error unless ``module`` (built from the recipe) has the architecture of
    ``folder/config.json``; differences that keep the shapes are logged (``report``)."""
    theirs = _read_config(folder)
    ours: PretrainedConfig = module.config  # type: ignore[assignment]
    where = f"--model.init_from {folder}"
    if theirs.model_type != ours.model_type:
        raise PlmkitError(
            f"{where} holds a '{theirs.model_type}' model, the {objective.objective_name} "
            f"objective trains a '{ours.model_type}' model; use a recipe of the folder's method"
        )
    shapes = objective.shape_fields
    a, b = ours.to_dict(), theirs.to_dict()
    for field in sorted(set(a) & set(b) - _NOT_COMPARED):
        if "dropout" in field or "pdrop" in field or field.startswith("summary_"):
            continue
        mine, found = _normalised(ours, field), _normalised(theirs, field)
        if mine == found or any({mine, found} <= names for names in _SAME):
            continue
        if shapes is not None and field not in shapes:
            if report:
                log.warning("%s: config.json has %s %r, plmkit's %s model %r; training uses %r",
                            where, field, found, objective.objective_name, mine, mine)
            continue
        raise PlmkitError(_mismatch(objective, folder, field, found, mine,
                                    (shapes or {}).get(field)))


def load_pretrained(objective: Any) -> None:
    """Load the weights of ``objective.init_from`` into ``objective.model`` (just built).

    Each of :meth:`pretrained_modules` is read with its class's ``from_pretrained`` (which maps
    a base model's or another head's weights onto it); the weights it found are copied in, the
    rest keep the objective's initialisation. A tensor two modules share (ELECTRA's
    embeddings) comes from the first module that has it.
    """
    tokenizer = pretrained_tokenizer(objective)
    if objective.tokenizer is None or (
            tokenizer_digest(objective.tokenizer) != tokenizer_digest(tokenizer)):
        raise PlmkitError(
            f"the run's tokenizer is not the tokenizer of --model.init_from "
            f"{objective.init_from}; train with the folder's tokenizer "
            "(datamodule.use_tokenizer(plmkit.pretrained.pretrained_tokenizer(objective)))"
        )
    loaded: set[int] = set()
    for sub, module in _modules(objective, objective.model).items():
        folder = _subfolder(objective, sub)
        if folder is None:
            continue
        check_config(objective, module, folder)
        targets = module.state_dict(keep_vars=True)
        weights = {key: value for key, value in _read_weights(module, folder).items()
                   if key in targets and id(targets[key]) not in loaded}
        module.load_state_dict(weights, strict=False)
        loaded.update(id(targets[key]) for key in weights)
        log.info("init_from: %d tensors of %s from %s", len(weights), type(module).__name__,
                 folder)
    fresh = _fresh(objective.model, loaded)
    if fresh:
        count = sum(p.numel() for p in objective.model.parameters() if id(p) not in loaded)
        shown = ", ".join(fresh[:6]) + (f" and {len(fresh) - 6} more" if len(fresh) > 6 else "")
        log.info("init_from: %s has no weights for %s: freshly initialised (%s parameters)",
                 objective.init_from, shown, f"{count:,}")


# ---------------------------------------------------------------------------------- helpers
def _modules(objective: Any, model: nn.Module | None) -> dict[str, nn.Module]:
    """``objective.pretrained_modules()`` for ``model`` (the objective's, or a meta copy)."""
    saved = objective.model
    objective.model = model
    try:
        modules = objective.pretrained_modules()
    finally:
        objective.model = saved
    for module in modules.values():
        if not isinstance(module, PreTrainedModel):
            raise PlmkitError(
                f"--model.init_from: the {objective.objective_name} objective's model is not a "
                "transformers model, so it cannot start from a Hugging Face folder; train it "
                "from scratch (without --model.init_from)"
            )
    return modules


def _read_weights(module: nn.Module, folder: Path) -> dict[str, torch.Tensor]:
    """The weights ``folder`` holds for ``module``, by ``module``'s state-dict keys.

    ``from_pretrained`` of the module's class maps the folder's keys onto it (a base model's,
    another head's); a tensor whose shape the method changed after building the class (a
    3-way StructBERT head) is read from the folder's safetensors as it is, when the shapes
    agree.
    """
    with _quiet_transformers():
        try:
            source, info = type(module).from_pretrained(
                str(folder), config=copy.deepcopy(module.config), output_loading_info=True,
                local_files_only=True, ignore_mismatched_sizes=True,
            )
        except (OSError, RuntimeError, ValueError) as exc:
            first = next((ln for ln in str(exc).splitlines() if ln.strip()), "")
            raise PlmkitError(f"--model.init_from {folder}: cannot load its weights "
                              f"({type(exc).__name__}: {first})") from exc
    mismatched = {key: shape for key, shape, _ in info.get("mismatched_keys", ())}
    skipped = set(info["missing_keys"]) | set(mismatched)
    weights = {k: v for k, v in source.state_dict().items() if k not in skipped}
    if mismatched:
        ours = module.state_dict()
        for key, shape in mismatched.items():
            tensor = _safetensor(folder, key)
            expected = list(ours[key].shape) if key in ours else None
            if tensor is None or list(tensor.shape) != expected:
                raise PlmkitError(
                    f"--model.init_from {folder}: its weight {key} has shape {list(shape)}, "
                    f"the recipe's model {expected}; use a recipe of the folder's architecture"
                )
            weights[key] = tensor
    return weights


def _safetensor(folder: Path, key: str) -> torch.Tensor | None:
    from safetensors import safe_open

    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            if key in f.keys():
                return f.get_tensor(key)
    return None


def _subfolder(objective: Any, sub: str, report: bool = True) -> Path | None:
    """``init_from/sub``; None (and a log line) for a missing optional subfolder."""
    root = pretrained_folder(objective.init_from)
    if not sub:
        return root
    if (root / sub / "config.json").is_file():
        return root / sub
    if report:
        log.info("init_from: %s has no %s/ folder: the %s starts fresh", root, sub, sub)
    return None


def _read_config(folder: Path) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), "")
        raise PlmkitError(f"--model.init_from {folder}: config.json is not a transformers "
                          f"config ({type(exc).__name__}: {first})") from exc


def _normalised(config: PretrainedConfig, field: str) -> Any:
    value = getattr(config, field, None)
    if field == "n_inner" and value is None:  # GPT-2's default: 4 x width
        return 4 * config.n_embd
    return value


def _mismatch(objective: Any, folder: Path, field: str, found: Any, mine: Any,
              option: str | None) -> str:
    where = f"--model.init_from {folder}: its config.json has {field} {found!r}"
    if field == "vocab_size":
        return (f"{where} but its tokenizer (with the {objective.objective_name} objective's "
                f"special tokens) has {mine} entries; pass a folder whose tokenizer matches its "
                "model")
    if option is None:
        return (f"{where}, plmkit's {objective.objective_name} model has {mine!r}; this "
                f"folder cannot be continued with the {objective.objective_name} objective")
    sub = folder.name if folder != pretrained_folder(objective.init_from) else ""
    if sub and option.startswith("encoder."):  # ELECTRA's generator/: the generator block
        option = f"{sub}.{option.removeprefix('encoder.')}"
    value = found
    current = _option_value(objective, option)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in (found, mine, current)):
        value = found - (mine - current)  # an offset the model adds (RoBERTa's positions)
    return (f"{where} but the recipe builds {mine!r}; pass --model.{option} {value} (the "
            "folder's size) or start from a folder of the recipe's size")


def _option_value(objective: Any, option: str) -> Any:
    value = objective
    for part in option.split("."):
        value = getattr(value, part, None)
    return value


def _fresh(model: nn.Module, loaded: set[int]) -> list[str]:
    """The outermost modules (or single parameters) of ``model`` that got no weights."""
    out: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        params = list(module.parameters())
        if params and all(id(p) not in loaded for p in params):
            out.append(prefix or "the whole model")
            return
        for name, param in module.named_parameters(recurse=False):
            if id(param) not in loaded:
                out.append(f"{prefix}.{name}" if prefix else name)
        for name, child in module.named_children():
            visit(f"{prefix}.{name}" if prefix else name, child)

    visit("", model)
    return out


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' loading report and progress bar off: plmkit logs what was loaded."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
