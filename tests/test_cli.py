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
