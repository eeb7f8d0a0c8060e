"""The documentation: it builds in strict mode, covers every method and parameter, and its
examples run."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from plmkit.registry import get_registry

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _hooks():
    spec = importlib.util.spec_from_file_location("plmkit_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _nav_files(nav) -> list[str]:
    out: list[str] = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        out.extend(_nav_files(value) if isinstance(value, list) else [value])
    return out


def _builtin_objectives() -> list[str]:
    return sorted(name for name, spec in get_registry().objectives.items()
                  if spec.plugin.distribution == "plmkit")


def test_mkdocs_build_is_strict_clean(tmp_path: Path):
    pytest.importorskip("mkdocs")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
         "-d", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    bert = (site / "methods" / "bert" / "index.html").read_text()
    # generated tables are there, typed blocks one row a field
    assert "masking.probability" in bert and "encoder.size" in bert and "bert_tiny" in bert
    collators = (site / "collators" / "index.html").read_text()
    assert "ok: collator_dataloader" in collators  # the example file was included
    assert "plmkit evaluate" in (site / "cli" / "index.html").read_text()


def test_every_objective_has_a_page_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = _nav_files(config["nav"])
    for page in nav:
        assert (DOCS / page).is_file(), page
    for name in _builtin_objectives():
        page = f"methods/{name}.md"
        assert page in nav, f"{page} is not in the nav of mkdocs.yml"
        text = (DOCS / page).read_text()
        assert f"<!-- plmkit:params {name} -->" in text
        assert f"<!-- plmkit:recipes {name} -->" in text
        assert "Paper" in text and "Use it" in text
    for required in ("index.md", "concepts.md", "collators.md", "plugins.md",
                     "distributed.md", "evaluation.md"):
        assert required in nav


def test_every_objective_parameter_is_documented():
    hooks = _hooks()
    for name in _builtin_objectives():
        params = hooks.collect_params(get_registry().objectives[name].cls)
        assert {"optim", "compile"} <= {p[0] for p in params}, name
        undocumented = [p[0] for p in params if not p[2]]
        assert not undocumented, f"{name}: no docstring text for {undocumented}"


def test_docstring_args_parser():
    hooks = _hooks()
    doc = """Summary.

    Args:
        alpha: first line
            continued here.
        beta (int): second.

    Returns:
        nothing: not a parameter.
    """
    assert hooks.parse_args_section(doc) == {"alpha": "first line continued here.",
                                             "beta": "second."}


def _run_example(name: str) -> str:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, str(ROOT / "examples" / name)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_dataloader_example_runs():
    out = _run_example("collator_dataloader.py")
    assert out.strip().endswith("ok: collator_dataloader")
    steps = [ln for ln in out.splitlines() if ln.startswith("step ")]
    assert len(steps) == 5
    rates = [float(re.search(r"([\d.]+)% of tokens predicted", ln).group(1)) for ln in steps]
    assert all(8.0 <= r <= 20.0 for r in rates), rates  # ~15% of real tokens predicted


def test_trainer_example_runs():
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
    out = _run_example("collator_trainer.py")
    assert "trained 5 steps" in out and out.strip().endswith("ok: collator_trainer")


def test_every_command_has_help_with_an_example():
    from plmkit.cli import main

    for command in ([], ["export"], ["evaluate"], ["compare"], ["tokenizer"],
                    ["tokenizer", "train"], ["recipes"], ["plugins"]):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0
        assert "example" in out.getvalue().lower(), command
    for command in ("fit", "validate"):  # LightningCLI's help, with plmkit's examples after it
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            main([command, "--help"])
        assert f"plmkit {command} --recipe bert_tiny" in out.getvalue()


def test_plugin_guide_is_built_around_the_tested_plugin():
    guide = (DOCS / "plugins.md").read_text()
    fixture = "tests/fixtures/example_plugin"
    included = [ln.split('"')[1] for ln in guide.splitlines() if ln.startswith('--8<-- "')]
    assert len(included) == 4 and all(p.startswith(fixture) for p in included)
    assert all((ROOT / p).is_file() for p in included)
    # the very package tests/test_plugins.py installs and trains
    assert '"example_plugin"' in (ROOT / "tests" / "test_plugins.py").read_text()
