"""The ``plmkit`` command: listings, help, and one-line errors (exit 2) for user mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from plmkit.registry import get_registry


def _one_line_error(code: int, err: str) -> str:
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("plmkit: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_help_version_and_listings(run_plmkit):
    code, out, _ = run_plmkit("recipes")
    assert code == 0
    assert any(ln.split()[:2] == ["bert_tiny", "bert"] for ln in out.splitlines())
    code, out, _ = run_plmkit("plugins")
    assert code == 0 and "bert" in out and "plmkit" in out
    with pytest.raises(SystemExit) as exit_info:
        run_plmkit("--version")
    assert exit_info.value.code == 0
    with pytest.raises(SystemExit):
        run_plmkit("export", "--help")


def test_every_recipe_parses_with_print_config(run_plmkit):
    for name, recipe in get_registry().recipes.items():
        if recipe.plugin.distribution != "plmkit":
            continue
        with pytest.raises(SystemExit) as exit_info:
            run_plmkit("fit", "--recipe", name, "--print_config")
        assert exit_info.value.code == 0, name



def test_print_config_shows_overrides(capsys):
    from plmkit.cli import main

    with pytest.raises(SystemExit):
        main(["fit", "--recipe", "bert_tiny", "--trainer.max_steps", "7",
              "--model.init_args.encoder.hidden_size", "64", "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["trainer"]["max_steps"] == 7
    assert config["model"]["init_args"]["encoder"]["hidden_size"] == 64
    assert config["model"]["init_args"]["encoder"]["size"] == "tiny"  # from the recipe
    assert config["recipe"] == "bert_tiny"


def test_unknown_recipe_suggests_closest(run_plmkit):
    line = _one_line_error(*run_plmkit("fit", "--recipe", "bert_tny")[::2])
    assert "'bert_tiny'" in line


def test_malformed_recipe_yaml(run_plmkit, tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args: [unclosed\n")
    line = _one_line_error(*run_plmkit("fit", "--recipe", bad)[::2])
    assert "not valid YAML" in line


def test_recipe_value_of_wrong_type(run_plmkit):
    line = _one_line_error(*run_plmkit("fit", "--recipe", "bert_tiny",
                                       "--trainer.max_steps", "many")[::2])
    assert "trainer.max_steps" in line
    line = _one_line_error(*run_plmkit("fit", "--recipe", "bert_tiny",
                                       "--model.encoder.hidden_size", "wide")[::2])
    assert "model.encoder.hidden_size" in line


def test_recipe_for_missing_plugin(run_plmkit, tmp_path: Path):
    recipe = tmp_path / "other.yaml"
    recipe.write_text("model:\n  class_path: plmkit_missing.MissingObjective\n")
    line = _one_line_error(*run_plmkit("fit", "--recipe", recipe)[::2])
    assert "no installed plugin" in line and "plmkit_missing" in line


def test_missing_and_empty_corpus(run_plmkit, tmp_path: Path):
    run_dir = tmp_path / "run"
    line = _one_line_error(*run_plmkit(
        "fit", "--recipe", "bert_tiny", "--data.corpus", tmp_path / "nope.txt",
        "--trainer.default_root_dir", run_dir)[::2])
    assert "does not exist" in line
    assert not run_dir.exists()  # nothing written for a bad command
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    line = _one_line_error(*run_plmkit("fit", "--recipe", "bert_tiny", "--data.corpus", empty,
                                       "--trainer.default_root_dir", run_dir)[::2])
    assert "empty" in line
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n   \n\n")
    line = _one_line_error(*run_plmkit("fit", "--recipe", "bert_tiny", "--data.corpus", blank,
                                       "--trainer.default_root_dir", run_dir)[::2])
    assert "empty" in line


def test_export_of_a_non_checkpoint(run_plmkit, tmp_path: Path):
    not_ckpt = tmp_path / "model.ckpt"
    not_ckpt.write_text("hello")
    line = _one_line_error(*run_plmkit("export", not_ckpt, tmp_path / "out")[::2])
    assert "not a readable checkpoint" in line
    line = _one_line_error(*run_plmkit("export", tmp_path / "missing.ckpt", tmp_path / "o")[::2])
    assert "does not exist" in line


def test_unknown_command(run_plmkit):
    line = _one_line_error(*run_plmkit("fitt")[::2])
    assert "fitt" in line


def test_missing_arguments_are_named_as_typed(run_plmkit):
    line = _one_line_error(*run_plmkit("compare", "--recipes", "bert_tiny")[::2])
    assert "required: --budget;" in line and "compare.budget" not in line
    assert "run 'plmkit compare --help'" in line
    line = _one_line_error(*run_plmkit("tokenizer", "train", "bundled")[::2])
    assert "required: --out;" in line and "run 'plmkit tokenizer train --help'" in line
    line = _one_line_error(*run_plmkit("export")[::2])
    assert "required: checkpoint, out_dir;" in line
    line = _one_line_error(*run_plmkit("fit", "--trainer.max_steps", "3")[::2])
    assert "--recipe" in line and "fit.model" not in line


def test_usage_lines_name_the_command(run_plmkit, capsys):
    for command in (["fit"], ["validate"], ["export"], ["evaluate"], ["compare"], ["tokenizer"],
                    ["tokenizer", "train"], ["recipes"], ["plugins"]):
        with pytest.raises(SystemExit) as exit_info:
            run_plmkit(*command, "--help")
        assert exit_info.value.code == 0
        usage = capsys.readouterr().out.strip().splitlines()[0]
        assert usage.startswith(f"usage: plmkit {' '.join(command)} "), usage


def test_flags_override_the_recipe_wherever_they_stand(tmp_path: Path):
    from plmkit.lightning_cli import resolved_config

    config = resolved_config(None, ["--trainer.max_steps", "7", "--recipe", "bert_tiny",
                                    "--data.batch_size", "3"])
    assert config["trainer"]["max_steps"] == 7 and config["data"]["batch_size"] == 3
    assert config["recipe"] == "bert_tiny"
    assert config["model"]["init_args"]["encoder"]["size"] == "tiny"  # from the recipe
    other = tmp_path / "other.yaml"
    other.write_text("trainer:\n  max_steps: 9\n")
    config = resolved_config(None, ["--config", str(other), "--recipe=bert_tiny"])
    assert config["trainer"]["max_steps"] == 9  # --config too


def test_default_precision(monkeypatch):
    import torch

    from plmkit.lightning_cli import default_precision, resolved_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert default_precision() == default_precision("gpu") == "bf16-mixed"
    assert default_precision("cpu") == "32-true"
    assert resolved_config("bert_tiny")["trainer"]["precision"] == "bf16-mixed"
    cpu = resolved_config("bert_tiny", ["--trainer.accelerator", "cpu"])
    assert cpu["trainer"]["precision"] == "32-true"
    given = resolved_config("bert_tiny", ["--trainer.precision", "16-mixed"])
    assert given["trainer"]["precision"] == "16-mixed"
    # bf16 only emulated (V100, T4): slower than fp32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation)
    assert default_precision() == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_precision() == "32-true"


def test_loggers_from_the_command_line_write_to_the_run_folder(tiny_fit, tmp_path: Path,
                                                                monkeypatch):
    import json

    monkeypatch.chdir(tmp_path)
    loggers = [
        {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
         "init_args": {"default_hp_metric": False}},
        {"class_path": "lightning.pytorch.loggers.CSVLogger",
         "init_args": {"flush_logs_every_n_steps": 1}},
    ]
    run_dir = tiny_fit("bert_tiny", "--trainer.logger", json.dumps(loggers), steps=2)
    version = run_dir / "logs" / "version_0"
    assert (version / "metrics.csv").is_file()
    assert list(version.glob("events.out.tfevents.*"))
    assert [p.name for p in tmp_path.iterdir()] == [run_dir.name]  # no ./lightning_logs


def test_other_loggers_are_placed_in_the_run_folder(run_plmkit, tmp_path: Path):
    """W&B and MLflow (not installed: parsed and placed, not started) log under logs/."""
    import importlib.util

    from plmkit.lightning_cli import PlmkitCLI

    loggers = '[{"class_path": "WandbLogger"}, {"class_path": "MLFlowLogger"}, "CSVLogger"]'
    cli = PlmkitCLI(["fit", "--recipe", "bert_tiny", "--trainer.logger", loggers,
                     "--trainer.default_root_dir", str(tmp_path)], parse_only=True)
    trainer = cli.config["fit"]["trainer"]
    cli._place_loggers(trainer)
    placed = {logger.class_path.rsplit(".", 1)[1]: logger.init_args for logger in trainer.logger}
    assert placed["WandbLogger"].save_dir == str(tmp_path / "logs")
    assert placed["MLFlowLogger"].save_dir == str(tmp_path / "logs" / "mlruns")
    assert (placed["CSVLogger"].save_dir, placed["CSVLogger"].name) == (str(tmp_path), "logs")
    if importlib.util.find_spec("wandb") is None:
        line = _one_line_error(*run_plmkit("fit", "--recipe", "bert_tiny", "--trainer.logger",
                                           "WandbLogger", "--trainer.default_root_dir",
                                           tmp_path / "wb")[::2])
        assert "not installed" in line and "wandb" in line
