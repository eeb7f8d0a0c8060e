"""Continued pretraining from a Hugging Face folder (``--model.init_from``): the weights and the
tokenizer arrive (the first step's loss is the exported model's on the same batch), training
goes on, the result exports again; wrong folders and sizes are one-line errors. The commands of
docs/continue_pretraining.md are the ones run here."""

from __future__ import annotations

import copy
import importlib
import re
import shlex
import shutil
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import yaml
from conftest import metric_series
from lightning.pytorch.callbacks import Callback

from plmkit.errors import PlmkitError
from plmkit.export import objective_from_checkpoint
from plmkit.objective import _model_inputs
from plmkit.registry import get_registry

PAGE = Path(__file__).resolve().parent.parent / "docs" / "continue_pretraining.md"
#: appended to every ``plmkit fit`` of a test: a tiny, quick run
TINY = ["--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.num_sanity_val_steps", "0",
        "--trainer.limit_val_batches", "0", "--data.max_documents", "300",
        "--data.num_workers", "0", "--data.max_length", "64", "--data.batch_size", "8",
        "--data.vocab_size", "2000", "--trainer.callbacks+=test_init_from.FirstBatch"]
FIRST_STEPS, MORE_STEPS = 5, 30

# one intra-op thread: these models are tiny, and a busy 2-core machine runs them ~4x faster so
pytestmark = pytest.mark.usefixtures("one_thread")


class FirstBatch(Callback):
    """Keeps each run's first training batch and the random state its step starts from."""

    seen: ClassVar[dict[Path, tuple[dict[str, Any], torch.Tensor]]] = {}

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step == 0:
            FirstBatch.seen[Path(trainer.default_root_dir).resolve()] = (
                copy.deepcopy(batch), torch.get_rng_state())


def _tiny_objective(name: str, **overrides: Any):
    recipe = yaml.safe_load(get_registry().recipe(f"{name}_tiny").path.read_text())
    module, cls_name = recipe["model"]["class_path"].rsplit(".", 1)
    cls = getattr(importlib.import_module(module), cls_name)
    return cls(**{**recipe["model"].get("init_args", {}), **overrides})


def _exported(name: str, tokenizer, out: Path, **options: Any):
    """A freshly built tiny ``name`` objective, exported to ``out`` (no training)."""
    from plmkit.data.tokenizer import add_special_tokens

    objective = _tiny_objective(name)
    tok = copy.deepcopy(tokenizer)
    add_special_tokens(tok, objective.special_tokens())
    objective.attach_tokenizer(tok, 64)
    objective.configure_model()
    objective.export(out, **options)
    return objective


def _continued(name: str, folder: Path, **overrides: Any):
    """A tiny ``name`` objective that starts from ``folder``, built as ``plmkit fit`` does."""
    from plmkit.pretrained import pretrained_tokenizer

    objective = _tiny_objective(name, init_from=str(folder), **overrides)
    objective.attach_tokenizer(pretrained_tokenizer(objective), 64)
    objective.configure_model()
    return objective


def _first_step(run_dir: Path, load_export) -> tuple[float, float]:
    """(the run's logged first-step loss, the exported model's loss on that batch)."""
    batch, rng = FirstBatch.seen[run_dir.resolve()]
    reference = objective_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    load_export(reference)  # the trained weights replaced by the export's, via transformers
    reference.train()
    torch.set_rng_state(rng)  # the same dropout masks and ELECTRA samples
    loss, _ = reference.compute_loss(_model_inputs(batch))
    return metric_series(run_dir, "train/loss")[0], loss.item()


def _check_continued(run_dir: Path, load_export, name: str) -> None:
    logged, exported = _first_step(run_dir, load_export)
    print(f"{name}: first-step loss {logged:.6f}, exported model on that batch {exported:.6f}")
    assert abs(logged - exported) <= 1e-5 * max(1.0, abs(logged)), (logged, exported)
    losses = metric_series(run_dir, "train/loss")
    head, tail = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    print(f"{name}: mean loss of the first 10 steps {head:.3f}, of the last 10 {tail:.3f}")
    assert len(losses) == MORE_STEPS and tail < 0.99 * head, losses


def _page_commands() -> list[list[str]]:
    """The ``plmkit`` commands of the page's bash blocks, comments and continuations removed."""
    blocks = re.findall(r"```bash\n(.*?)```", PAGE.read_text(), re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in text.splitlines()
            if line.startswith("plmkit ")]


def _page_python() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)


def test_the_pages_commands_continue_bert_and_electra(run_plmkit, documents, tmp_path, monkeypatch):
    """The page's commands, in order, as tiny runs: BERT continues on a corpus of its own,
    ELECTRA with its generator; both start exactly where the export left off."""
    from transformers import (
        AutoModel,
        AutoModelForMaskedLM,
        AutoModelForPreTraining,
    )

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my").mkdir()
    (tmp_path / "my" / "domain.txt").write_text("\n\n".join(documents[-300:]))
    commands = _page_commands()
    assert [c[1] for c in commands].count("fit") == 4, commands
    for command in commands:
        args = command[1:]
        if args[0] == "fit":
            steps = MORE_STEPS if "--model.init_from" in args else FIRST_STEPS
            args = [*args, *TINY, "--trainer.max_steps", str(steps)]
        code, _, err = run_plmkit(*args)
        assert code == 0, f"{shlex.join(command)}\n{err[-3000:]}"
        if "--model.init_from" in args and "electra" in args[2]:
            assert re.search(r"tensors of ElectraForMaskedLM from \S+generator", err)

    def bert_export(objective):
        objective.model = AutoModelForPreTraining.from_pretrained("out/bert_tiny")

    def electra_export(objective):
        objective.model.discriminator = AutoModelForPreTraining.from_pretrained(
            "out/electra_tiny")
        objective.model.generator = AutoModelForMaskedLM.from_pretrained(
            "out/electra_tiny/generator")
        objective.model.share_embeddings()

    _check_continued(tmp_path / "runs" / "bert_more", bert_export, "bert")
    _check_continued(tmp_path / "runs" / "electra_more", electra_export, "electra")

    # the continued run is its own: it exports and rebuilds without the folder it started from
    run = tmp_path / "runs" / "bert_more"
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert "init_from" not in saved["hyper_parameters"]
    assert "init_from: out/bert_tiny" in (run / "config.yaml").read_text()
    shutil.rmtree(tmp_path / "out" / "bert_tiny")
    objective_from_checkpoint(run / "checkpoints" / "last.ckpt")
    more = AutoModel.from_pretrained("out/bert_more")
    assert more.config.num_hidden_layers == 2
    for code in _page_python():  # fine-tune from the continued export
        exec(compile(code, str(PAGE), "exec"), {})


def test_gpt_continues_from_its_export(tiny_fit, export_run, tmp_path):
    from transformers import AutoModelForCausalLM

    first = tiny_fit("gpt_tiny", *TINY, steps=FIRST_STEPS, run_dir=tmp_path / "first")
    export_run(first, tmp_path / "out")
    more = tiny_fit("gpt_tiny", *TINY, "--model.init_from", tmp_path / "out",
                    steps=MORE_STEPS, run_dir=tmp_path / "more")

    def gpt_export(objective):
        objective.model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")

    _check_continued(more, gpt_export, "gpt")
    export_run(more, tmp_path / "out_more")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out_more")
    before = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert not torch.equal(model.lm_head.weight, before.lm_head.weight)  # trained further


@pytest.mark.parametrize("name", ["roberta", "albert", "t5", "xlnet", "spanbert", "structbert",
                                  "ernie"])
def test_every_transformers_method_loads_its_export(name, tokenizer, tmp_path):
    """Exported, then built again from the export: every exported weight arrives."""
    original = _exported(name, tokenizer, tmp_path / "out")
    continued = _continued(name, tmp_path / "out")
    ours, theirs = original.export_model().state_dict(), continued.export_model().state_dict()
    assert ours.keys() == theirs.keys()
    assert [key for key in ours if not torch.equal(ours[key], theirs[key])] == []


def test_an_electra_discriminator_alone_gets_a_fresh_generator(tokenizer, tmp_path, caplog):
    original = _exported("electra", tokenizer, tmp_path / "out")  # no --generator
    with caplog.at_level("INFO", logger="plmkit"):
        continued = _continued("electra", tmp_path / "out")
    assert "has no generator/ folder: the generator starts fresh" in caplog.text
    assert "freshly initialised" in caplog.text
    a, b = original.model, continued.model
    assert torch.equal(a.discriminator.electra.encoder.layer[0].output.dense.weight,
                       b.discriminator.electra.encoder.layer[0].output.dense.weight)
    assert b.generator.electra.embeddings is b.discriminator.electra.embeddings  # still shared
    assert not torch.equal(a.generator.electra.encoder.layer[0].output.dense.weight,
                           b.generator.electra.encoder.layer[0].output.dense.weight)


def test_unsupported_and_mismatched_folders_are_one_line_errors(tokenizer, tmp_path):
    _exported("elmo", tokenizer, tmp_path / "elmo")
    with pytest.raises(PlmkitError, match="elmo objective's model is not a transformers model"):
        _continued("elmo", tmp_path / "elmo")
    _exported("bert", tokenizer, tmp_path / "bert")
    with pytest.raises(PlmkitError, match="holds a 'bert' model, the roberta objective"):
        _continued("roberta", tmp_path / "bert")


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("plmkit: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def test_init_from_takes_a_local_folder(run_plmkit, tmp_path):
    code, _, err = run_plmkit("fit", "--recipe", "bert_tiny", "--model.init_from",
                              "bert-base-uncased", "--trainer.default_root_dir", tmp_path / "r")
    line = _one_error_line(err)
    assert code == 2 and "bert-base-uncased is not a local folder" in line
    assert "nothing is downloaded" in line


def test_a_recipe_size_that_disagrees_is_a_one_line_error(run_plmkit, tokenizer, tmp_path):
    _exported("bert", tokenizer, tmp_path / "out")
    run = tmp_path / "run"
    code, _, err = run_plmkit("fit", "--recipe", "bert_tiny", "--model.init_from",
                              tmp_path / "out", "--model.encoder.num_layers", "3",
                              "--trainer.default_root_dir", run)
    line = _one_error_line(err)
    assert code == 2
    assert "num_hidden_layers 2 but the recipe builds 3" in line
    assert "--model.encoder.num_layers 2" in line
    assert not (run / "config.yaml").exists()  # checked before anything is written
