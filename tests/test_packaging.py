"""Packaging: one wheel holds the core, every built-in plugin, the recipes and the corpus."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_plugins_recipes_and_data(tmp_path: Path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         "--wheel-dir", str(tmp_path), str(ROOT)],
        check=True, cwd=tmp_path,
    )
    wheel = next(tmp_path.glob("plmkit-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    plugins = sorted(p.name for p in (ROOT / "plugins").iterdir() if (p / "__init__.py").exists())
    assert "bert" in plugins
    for plugin in plugins:
        assert f"plmkit/plugins/{plugin}/__init__.py" in names, plugin
    recipes = sorted(p.relative_to(ROOT / "plugins") for p in ROOT.glob("plugins/*/recipes/*.yaml"))
    assert "bert/recipes/bert_tiny.yaml" in {str(r) for r in recipes}
    for recipe in recipes:
        assert f"plmkit/plugins/{recipe.as_posix()}" in names, recipe
    assert not any(n.startswith("plmkit/recipes/") for n in names)
    for data in ("corpus.txt.gz", "eval.jsonl.gz", "lexicon.tsv.gz", "LICENSE"):
        assert f"plmkit/data/wordnet/{data}" in names
    for data in ("task.jsonl.gz", "LICENSE", "README.md"):
        assert f"plmkit/data/fortunes/{data}" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for plugin in plugins:
        assert f"{plugin} = plmkit.plugins.{plugin}" in text
    assert "plmkit = plmkit.cli:main" in text


def test_every_plugin_folder_is_packaged_and_registered():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = set(config["tool"]["setuptools"]["packages"])
    entry_points = config["project"]["entry-points"]["plmkit.plugins"]
    for folder in (ROOT / "plugins").iterdir():
        if (folder / "__init__.py").exists():
            assert f"plmkit.plugins.{folder.name}" in packages
            assert entry_points.get(folder.name) == f"plmkit.plugins.{folder.name}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(ln.strip() for ln in ci.splitlines() if "pytest" in ln)
    assert command in readme
