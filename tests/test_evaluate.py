"""``plmkit evaluate``, ``plmkit compare`` and ``plmkit tokenizer train``."""

from __future__ import annotations

import copy
import csv
import json
import os
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from plmkit.evaluate import (
    EvalConfig,
    load_encoder,
    load_task,
    model_folder,
    pool,
    run_evaluation,
    score_model,
    split_train,
)
from plmkit.registry import get_registry

WORDS = {  # three classes told apart by one keyword each
    "animal": ["dog", "cat", "horse", "bird", "fish", "snake"],
    "color": ["red", "blue", "green", "yellow", "white", "black"],
    "number": ["one", "two", "three", "four", "five", "six"],
}
TEMPLATES = ["the {} was near the house", "a {} and the river", "it is {} in the morning",
             "we saw {} on the hill", "the small {} of the tree"]


def _one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("plmkit: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _write_task(path: Path, n: int = 150, shuffle_labels: bool = False, seed: int = 0) -> Path:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = list(WORDS)[i % 3]
        rows.append({"text": rng.choice(TEMPLATES).format(rng.choice(WORDS[label])),
                     "label": label})
    if shuffle_labels:
        labels = [r["label"] for r in rows]
        rng.shuffle(labels)
        rows = [{**r, "label": y} for r, y in zip(rows, labels)]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _objective(recipe: str, tokenizer):
    """The recipe's objective, built (untrained) with the test tokenizer."""
    from plmkit.data.tokenizer import add_special_tokens

    registry = get_registry()
    config = yaml.safe_load(registry.recipe(recipe).path.read_text())
    model = config["model"]
    objective = registry.objective_for_class_path(model["class_path"]).cls(
        **model.get("init_args", {})
    )
    tok = copy.deepcopy(tokenizer)
    add_special_tokens(tok, objective.special_tokens())
    torch.manual_seed(0)
    objective.attach_tokenizer(tok, int(config["data"].get("max_length", 64)))
    objective.configure_model()
    return objective


def _checkpoint(objective, path: Path) -> Path:
    """A checkpoint in the format 'plmkit fit' writes (without training)."""
    ckpt = {"state_dict": objective.state_dict(), "hyper_parameters": dict(objective.hparams),
            "global_step": 0}
    objective.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def models(tokenizer, tmp_path_factory) -> dict[str, Path]:
    """Untrained tiny models: bert as a .ckpt, the others as exported folders."""
    root = tmp_path_factory.mktemp("models")
    out = {"bert": _checkpoint(_objective("bert_tiny", tokenizer), root / "bert.ckpt")}
    for name in ("electra", "gpt", "t5", "xlnet", "elmo", "roberta", "albert", "spanbert",
                 "structbert", "ernie"):
        if name not in get_registry().objectives:
            continue
        objective = _objective(f"{name}_tiny", tokenizer)
        objective.export(root / name)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def task_file(tmp_path_factory) -> Path:
    return _write_task(tmp_path_factory.mktemp("task") / "keywords.csv")


FAST = dict(max_length=16, progress=False, seed=0)


# ------------------------------------------------------------------------------- tasks
def test_builtin_task_and_task_files(tmp_path: Path):
    task = load_task("wordnet")
    assert len(task.labels) == 37 and "noun.animal" in task.labels
    assert len(task.train) == 5387 and len(task.eval) == 1522 and task.eval_split == "test"
    assert load_task("wordnet", eval_split="validation").eval_split == "validation"

    # a file without a split column: a seeded 20% is held out, the same each time
    plain = load_task(str(_write_task(tmp_path / "t.csv", n=100)))
    assert (len(plain.train), len(plain.eval)) == (80, 20)
    assert plain.eval == load_task(str(tmp_path / "t.csv")).eval
    assert plain.labels == ["animal", "color", "number"]

    # jsonl with a split column and other column names
    rows = [{"sentence": f"text {i}", "y": i % 2, "split": "train" if i < 8 else "test"}
            for i in range(10)]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    split = load_task(str(tmp_path / "t.jsonl"), text_column="sentence", label_column="y")
    assert (len(split.train), len(split.eval)) == (8, 2)
    assert split.eval[0] == ("text 8", 0)


def test_one_line_errors_for_bad_input(run_plmkit, tmp_path: Path, task_file: Path, models):
    line = _one_line_error(*run_plmkit("evaluate", tmp_path / "nope", "--task", "wordnet")[::2])
    assert "does not exist" in line and "plmkit export" in line
    line = _one_line_error(*run_plmkit("evaluate", models["bert"], "--task", "wordnt")[::2])
    assert "unknown task 'wordnt'" in line and "'wordnet'" in line
    bad = tmp_path / "bad.csv"
    bad.write_text("text,category\nhello,a\n")
    line = _one_line_error(*run_plmkit("evaluate", models["bert"], "--task", bad)[::2])
    assert "no 'label' column" in line and "category" in line
    (tmp_path / "empty_dir").mkdir()
    line = _one_line_error(*run_plmkit("evaluate", tmp_path / "empty_dir")[::2])
    assert "no config.json" in line
    not_ckpt = tmp_path / "model.ckpt"
    not_ckpt.write_text("not a checkpoint")
    line = _one_line_error(*run_plmkit("evaluate", not_ckpt, "--task", task_file)[::2])
    assert "not a readable checkpoint" in line
    line = _one_line_error(*run_plmkit("compare", "--recipes", "bert_tiny", "--budget", "5")[::2])
    assert "5min" in line
    line = _one_line_error(*run_plmkit("compare", "--recipes", "bert_tny", "--budget", "1e12")[::2])
    assert "'bert_tiny'" in line
    line = _one_line_error(*run_plmkit("tokenizer", "train", tmp_path / "missing.txt",
                                       "--out", tmp_path / "tok")[::2])
    assert "does not exist" in line


def test_budget_parsing():
    from plmkit.compare import Budget, parse_budget

    assert parse_budget("2e13") == Budget("flops", 2e13)
    assert parse_budget("3.5E12flops") == Budget("flops", 3.5e12)
    assert parse_budget("90s") == Budget("time", 90)
    assert parse_budget("5min") == Budget("time", 300)
    assert parse_budget("1.5h") == Budget("time", 5400)
    for bad in ("5", "abc", "10 parsecs", "0min"):
        with pytest.raises(Exception, match="budget"):
            parse_budget(bad)


# ------------------------------------------------------------------------ evaluation
def test_probe_learns_a_separable_task_but_not_shuffled_labels(models, task_file, tmp_path):
    """A linear probe on a random-init encoder separates keyword classes; with the labels
    shuffled it stays near chance: the score measures the labels, not an artefact."""
    config = EvalConfig(probe=True, pooling="mean", **FAST)
    good = score_model(models["bert"], str(task_file), config)
    assert good.accuracy >= 0.85 and good.macro_f1 >= 0.8, good
    shuffled = score_model(models["bert"], str(_write_task(tmp_path / "s.csv",
                                                           shuffle_labels=True)), config)
    assert shuffled.accuracy <= 0.6, shuffled
    again = score_model(models["bert"], str(task_file), config)
    assert (again.accuracy, again.macro_f1) == (good.accuracy, good.macro_f1)  # seeded


def test_probe_freezes_the_encoder_and_fine_tuning_trains_it(models, task_file):
    task = load_task(str(task_file))
    with model_folder(models["bert"]) as folder:
        for probe in (True, False):
            encoder, tokenizer, model_type = load_encoder(folder)
            assert model_type == "bert"
            before = [p.detach().clone() for p in encoder.parameters()]
            config = EvalConfig(probe=probe, epochs=1, max_train=64, **FAST)
            run_evaluation(encoder, tokenizer, task, config, "cls", "bert")
            changed = [not torch.equal(a, b) for a, b in zip(before, encoder.parameters())]
            assert any(changed) is (not probe)


def test_validation_split_is_seeded_and_apart_from_the_scored_split(task_file):
    task = load_task(str(task_file))
    train, val = split_train(task.train, 0.1, None, seed=0)
    assert (len(train), len(val)) == (108, 12)
    assert sorted(train + val) == sorted(task.train)  # taken from training, not task.eval
    assert split_train(task.train, 0.1, None, seed=0) == (train, val)
    capped, same_val = split_train(task.train, 0.1, 50, seed=0)
    assert capped == train[:50] and same_val == val
    assert split_train(task.train, 0.0, None, seed=0)[1] == []


def test_the_scored_epoch_is_the_one_with_the_best_validation_accuracy(models, tmp_path):
    """Shuffled labels and a large learning rate make validation accuracy jump from epoch to
    epoch: the scored weights must be those of the best epoch, not of the last one."""
    task = str(_write_task(tmp_path / "noisy.csv", n=200, shuffle_labels=True))
    for seed in range(4):  # a seed whose best epoch is strictly better than the last one
        config = EvalConfig(probe=True, pooling="mean", epochs=6, lr=1.0, val_fraction=0.25,
                            **{**FAST, "seed": seed})
        run = score_model(models["bert"], task, config).runs[0]
        if run.val_history[-1] < max(run.val_history):
            break
    else:
        pytest.fail(f"no seed made the last epoch worse than the best: {run.val_history}")
    assert len(run.val_history) == len(run.val_loss) == 6
    # the best accuracy, and of equal accuracies the lowest loss
    assert run.epoch == 1 + max(range(6), key=lambda i: (run.val_history[i], -run.val_loss[i]))
    assert run.val_accuracy == max(run.val_history)  # recomputed with the restored weights
    # the probe's learning rate is constant: training only up to the chosen epoch gives the
    # same weights, so the same test scores
    again = score_model(models["bert"], task, replace(config, epochs=run.epoch)).runs[0]
    assert (again.epoch, again.accuracy, again.macro_f1) == (run.epoch, run.accuracy,
                                                             run.macro_f1)


def test_random_init_baseline_differs_from_the_model(models):
    with model_folder(models["bert"]) as folder:
        trained, _, _ = load_encoder(folder)  # (built with seed 0 by the fixture)
        torch.manual_seed(1)
        fresh, _, _ = load_encoder(folder, random_init=True)
        torch.manual_seed(1)
        fresh_again, _, _ = load_encoder(folder, random_init=True)
    pairs = list(zip(trained.state_dict().values(), fresh.state_dict().values()))
    assert len(pairs) > 10 and not all(torch.equal(a, b) for a, b in pairs)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(),
                                                 fresh_again.state_dict().values()))


def test_adapters_come_from_plugin_hooks():
    from plmkit.errors import PluginError
    from plmkit.evaluate import adapters, registered_adapters
    from plmkit.registry import hookimpl

    found = registered_adapters()
    assert found["gpt2"].pooling == "last" and {"t5", "plmkit-elmo"} <= set(found)
    assert "bert" not in found  # transformers encoders need no adapter
    core = Path(adapters.__file__).parent
    assert not any("plmkit.plugins" in f.read_text() for f in core.glob("*.py"))

    class Duplicate:  # a second plugin claiming a model type is an error naming both
        @hookimpl
        def plmkit_evaluation_adapters(self):
            return {"gpt2": found["gpt2"]}

    manager = get_registry().manager
    manager.register(Duplicate(), name="duplicate-adapter")
    try:
        with pytest.raises(PluginError, match="'gpt2' is registered twice.*duplicate-adapter"):
            registered_adapters()
    finally:
        manager.unregister(name="duplicate-adapter")


def test_pooling():
    hidden = torch.arange(2 * 1 * 3 * 2, dtype=torch.float).view(2, 1, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert pool(hidden, mask, "cls").tolist() == [[[0, 1]], [[6, 7]]]
    assert pool(hidden, mask, "last").tolist() == [[[2, 3]], [[10, 11]]]
    assert pool(hidden, mask, "mean").tolist() == [[[1, 2]], [[8, 9]]]


@pytest.mark.parametrize("name,model_type,pooling", [
    ("electra", "electra", "mean"), ("gpt", "gpt2", "last"), ("t5", "t5", "mean"),
    ("xlnet", "xlnet", "mean"), ("elmo", "plmkit-elmo", "mean"), ("roberta", "roberta", "mean"),
    ("albert", "albert", "mean"), ("spanbert", "bert", "mean"), ("structbert", "bert", "mean"),
    ("ernie", "bert", "mean"),
])
def test_every_model_family_evaluates(models, task_file, name, model_type, pooling):
    if name not in models:
        pytest.skip(f"the {name} plugin is not registered")
    # every training example and the last epoch: 12 validation examples are too few to choose
    # an epoch well for GPT's last-token features of a random-init model
    config = EvalConfig(probe=True, val_fraction=0.0, **FAST)
    result = score_model(models[name], str(task_file), config)
    assert result.extra == {"model_type": model_type, "pooling": pooling}
    assert result.num_eval == 30 and 0.0 <= result.macro_f1 <= 1.0
    assert (result.num_train, result.num_val, result.runs[0].epoch) == (120, 0, 30)
    assert result.accuracy >= 0.5, result  # the keyword classes are linearly separable


def test_elmo_fine_tunes_through_its_scalar_mix(models, task_file):
    if "elmo" not in models:
        pytest.skip("the elmo plugin is not registered")
    result = score_model(models["elmo"], str(task_file),
                         EvalConfig(epochs=1, max_train=32, **FAST))
    assert result.mode == "finetune" and 0.0 <= result.accuracy <= 1.0


def test_evaluate_command_prints_scores_and_gain(run_plmkit, models, task_file, tmp_path):
    code, out, err = run_plmkit("evaluate", models["bert"], "--task", task_file, "--probe",
                                "--pooling", "mean", "--baseline", "random", "--max-length",
                                16, "--epochs", 10, "--seeds", 2, "--no-progress",
                                "--json", tmp_path / "r.json")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split() == ["TASK", "MODEL", "MODE", "SPLIT", "EPOCH", "ACCURACY",
                                "MACRO_F1"]
    assert lines[1].split()[0] == "keywords.csv" and lines[2].split()[1:3] == ["random", "init"]
    assert "gain from pretraining" in lines[3]
    saved = json.loads((tmp_path / "r.json").read_text())
    gain = saved["score"]["accuracy"] - saved["baseline"]["accuracy"]
    assert saved["gain"]["accuracy"] == pytest.approx(gain)
    assert f"{gain:+.4f}" in lines[3]
    for result, line in ((saved["score"], lines[1]), (saved["baseline"], lines[2])):
        runs = result["runs"]  # --seeds 2: two runs, their mean and their spread
        assert [r["seed"] for r in runs] == [0, 1] and all(1 <= r["epoch"] <= 10 for r in runs)
        accuracies = [r["accuracy"] for r in runs]
        assert result["accuracy"] == pytest.approx(sum(accuracies) / 2)
        spread = result["spread"]["accuracy"]
        assert (spread["min"], spread["max"]) == (min(accuracies), max(accuracies))
        assert spread["std"] == pytest.approx(abs(accuracies[0] - accuracies[1]) / 2 ** 0.5)
        assert f"{result['accuracy']:.4f} ± {spread['std']:.4f}" in line
        assert f"{runs[0]['epoch']},{runs[1]['epoch']}/10" in line.split()  # the EPOCH cell


# ----------------------------------------------------------------------------- compare
SMALL_FIT = ["--data.max_documents", "300", "--data.num_workers", "0", "--data.batch_size", "8",
             "--data.max_length", "32", "--data.vocab_size", "500",
             "--model.init_args.encoder.hidden_size", "32",
             "--model.init_args.encoder.num_layers", "1",
             "--model.init_args.encoder.intermediate_size", "64",
             "--trainer.enable_model_summary", "false"]


def test_compare_with_a_flops_budget(run_plmkit, task_file, tmp_path: Path, monkeypatch):
    from plmkit.compare import cost_model, resolved_config
    from plmkit.errors import PlmkitError

    cost = cost_model(resolved_config("bert_tiny", SMALL_FIT))
    assert cost.objective == "bert" and cost.tokens_per_step == 8 * 32
    budget = 4 * cost.flops_per_step  # 4 steps, checkpoints at 2 and 4
    args = ("compare", "--recipes", "bert_tiny", "--budget", f"{budget:.6e}", "--points", 2,
            "--out", tmp_path / "cmp", "--task", task_file, "--probe", "--max-length", 16,
            "--epochs", 10, "--no-progress", "--fit-args", " ".join(SMALL_FIT))
    code, out, err = run_plmkit(*args)
    assert code == 0, err[-3000:]
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    points = report["points"]
    assert [p["step"] for p in points] == [0, 2, 4]
    assert points[0]["checkpoint"] is None  # compute 0: the architecture from random init
    for p in points:
        assert p["flops"] == pytest.approx(p["step"] * cost.flops_per_step)
        assert 0.0 <= p["macro_f1"] <= 1.0
        assert p["tokens"] == p["step"] * cost.tokens_per_step
    assert 0 < points[1]["wall_minutes"] <= points[2]["wall_minutes"]
    assert report["fit_seconds"]["bert_tiny"] > 0 and report["reused"] == {"bert_tiny": False}
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert table.count("| bert_tiny | bert |") == 3 and "At the full budget" in table
    assert "| tokens | compute (FLOPs) | wall min |" in table
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert "| bert_tiny |" in out

    # the same command again evaluates the checkpoints it already has, without pretraining
    checkpoints = {p["checkpoint"]: os.stat(p["checkpoint"]).st_mtime_ns for p in points[1:]}
    code, out, err = run_plmkit(*args)
    assert code == 0, err[-3000:]
    assert sum("bert_tiny: reusing the pretraining" in line for line in err.splitlines()) == 1
    again = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert again["reused"] == {"bert_tiny": True}
    assert {p["checkpoint"]: os.stat(p["checkpoint"]).st_mtime_ns
            for p in again["points"][1:]} == checkpoints
    assert [p["wall_minutes"] for p in again["points"]] == [p["wall_minutes"] for p in points]
    assert "(setup included), reused from an earlier run." in out

    # --retrain pretrains again (stopped at once here: the point is that it starts)
    def no_fit(recipe, overrides):
        raise PlmkitError("pretraining started")

    monkeypatch.setattr("plmkit.compare._fit", no_fit)
    code, _, err = run_plmkit(*args, "--retrain")
    assert code == 2 and "pretraining started" in err


def test_compare_with_a_time_budget(run_plmkit, task_file, tmp_path: Path):
    code, _, err = run_plmkit(
        "compare", "--recipes", "bert_tiny", "--budget", "4s", "--points", 2,
        "--out", tmp_path / "cmp", "--task", task_file, "--probe", "--max-length", 16,
        "--no-progress", "--no-random-init", "--fit-args", " ".join(SMALL_FIT),
    )
    assert code == 0, err[-3000:]
    points = json.loads((tmp_path / "cmp" / "compare.json").read_text())["points"]
    assert [p["minutes"] for p in points] == pytest.approx([2 / 60, 4 / 60])
    assert 0 < points[0]["step"] < points[1]["step"]  # the second stage resumed the first


# --------------------------------------------------------------------------- tokenizer
def test_tokenizer_train_command(run_plmkit, documents, tmp_path: Path):
    from plmkit.data.tokenizer import load_tokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(documents[:300]))
    code, out, err = run_plmkit("tokenizer", "train", corpus, "--type", "bpe",
                                "--vocab-size", 400, "--out", tmp_path / "tok")
    assert code == 0, err
    assert "--data.tokenizer" in out
    tokenizer = load_tokenizer(tmp_path / "tok")
    assert 300 < len(tokenizer) <= 400
    assert tokenizer.mask_token == "[MASK]" and tokenizer.pad_token == "[PAD]"
    ids = tokenizer("a small dog")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id


# ------------------------------------------------------------------- fortunes task
def test_builtin_fortunes_task_is_clean_and_held_out():
    import gzip
    import re

    from plmkit.data.wordnet import corpus_path

    task = load_task("fortunes")
    validation = load_task("fortunes", eval_split="validation")
    assert task.labels == sorted(["computers", "definitions", "people", "politics", "science",
                                  "songs-poems", "work", "men-women"])
    assert validation.labels == task.labels and task.eval_split == "test"
    assert validation.train == task.train
    splits = {"train": task.train, "validation": validation.eval, "test": task.eval}
    assert all(len({label for _, label in rows}) == 8 for rows in splits.values())
    texts = {name: {text for text, _ in rows} for name, rows in splits.items()}
    assert all(len(t) == len(splits[name]) for name, t in texts.items())  # no repeats
    assert not (texts["train"] & texts["validation"] or texts["train"] & texts["test"]
                or texts["validation"] & texts["test"])  # so no text in two classes either
    label_of = {text: task.labels[label] for rows in splits.values() for text, label in rows}
    assert len(label_of) == sum(map(len, splits.values()))  # one class per text
    assert label_of["A bit of talcum\nIs always walcum\n-- Ogden Nash"] == "songs-poems"
    assert label_of["Beware of the Turing Tar-pit in which everything is possible but nothing "
                    "of\ninterest is easy."] == "computers"
    # "_\bI" overstriking resolved, attribution kept
    assert any(t.startswith("An interpretation I satisfies a sentence") and label == "computers"
               for t, label in label_of.items())
    assert all(20 <= len(t) <= 1000 and "\b" not in t for t in label_of)

    # held out of the bundled pretraining corpus: no fortune, nor a line of one, is a corpus
    # line, and no corpus line of 7+ words occurs inside a fortune
    words = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
    corpus_lines: set[str] = set()
    runs: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
    with gzip.open(corpus_path(), "rt", encoding="utf-8") as handle:
        for line in handle:
            corpus_lines.add(line.strip())
            run = tuple(words.findall(line.casefold()))
            if len(run) >= 7:
                runs.setdefault(run[:7], []).append(run)
    for text in label_of:
        assert text not in corpus_lines
        assert not any(line in corpus_lines for line in text.split("\n") if len(line) >= 20)
        w = words.findall(text.casefold())
        assert not any(tuple(w[i:i + len(run)]) == run for i in range(len(w) - 6)
                       for run in runs.get(tuple(w[i:i + 7]), ())), text
