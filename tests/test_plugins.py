"""The plugin system: third-party discovery, broken and duplicate plugins, env switches."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from plmkit.errors import PluginError
from plmkit.registry import PluginInfo, build_registry, get_registry, hookimpl

FIXTURES = Path(__file__).parent / "fixtures"


def _install(target: Path, *packages: str) -> Path:
    """pip-install fixture packages into ``target`` (not into the running environment)."""
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
           "--no-index", "--target", str(target)]
    subprocess.run([*cmd, *(str(FIXTURES / p) for p in packages)], check=True)
    return target


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _install(tmp_path_factory.mktemp("site"), "example_plugin", "broken_plugin")


def _plmkit(site: Path | None, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PLMKIT_") or k ==
               "PLMKIT_CACHE"}
    if site is not None:
        environ["PYTHONPATH"] = str(site)
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "plmkit", *args], capture_output=True,
                          text=True, env=environ, timeout=600)


def test_builtin_objectives_registered_through_entry_points():
    registry = get_registry()
    assert registry.objective("bert").plugin.distribution == "plmkit"
    assert "bert_tiny" in registry.recipes


def test_builtin_recipes_come_from_each_methods_own_folder():
    registry = get_registry()
    for name, recipe in registry.recipes.items():
        if recipe.plugin.distribution == "plmkit":
            assert recipe.path.parent.name == "recipes"
            assert recipe.path.parent.parent.name == recipe.plugin.name, name
    assert registry.recipe("electra_tiny").plugin.name == "electra"


def test_duplicate_recipe_names_both_plugins(tmp_path: Path):
    registry = build_registry()
    (tmp_path / "bert_tiny.yaml").write_text("# a second bert_tiny\n")
    plugin = types.ModuleType("dup_recipes")
    plugin.plmkit_recipe_dirs = hookimpl(lambda: [tmp_path])
    registry.manager.register(plugin, name="dup")
    registry.plugins.append(PluginInfo("dup", "plmkit-dup", "0.1"))
    with pytest.raises(PluginError, match="recipe 'bert_tiny' is defined twice") as error:
        registry.recipe("bert_tiny")
    message = str(error.value)
    assert "bert (plmkit " in message and "dup (plmkit-dup 0.1)" in message
    assert str(tmp_path / "bert_tiny.yaml") in message


def test_third_party_plugin_is_discovered_and_trains(plugin_site: Path, tmp_path: Path):
    listing = _plmkit(plugin_site, "plugins")
    assert listing.returncode == 0, listing.stderr
    line = next(ln for ln in listing.stdout.splitlines() if ln.startswith("example_mlm"))
    assert "plmkit-example-plugin 1.2.3" in line and "masked LM without NSP" in line
    recipes = _plmkit(plugin_site, "recipes")
    assert any(ln.split()[:2] == ["example_tiny", "example_mlm"]
               for ln in recipes.stdout.splitlines())

    run_dir = tmp_path / "run"
    fit = _plmkit(plugin_site, "fit", "--recipe", "example_tiny", "--trainer.max_steps", "20",
                  "--trainer.default_root_dir", str(run_dir), "--data.max_documents", "800",
                  "--trainer.enable_progress_bar", "false", "--data.num_workers", "0")
    assert fit.returncode == 0, fit.stderr[-2000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert "MlmOnlyObjective" in (run_dir / "config.yaml").read_text()


def test_broken_plugin_is_skipped_with_one_line_warning(plugin_site: Path):
    result = _plmkit(plugin_site, "plugins")
    assert result.returncode == 0
    warnings = [ln for ln in result.stderr.splitlines() if "broken" in ln]
    assert len(warnings) == 1
    assert "plmkit-broken-plugin 0.0.1" in warnings[0]
    assert "this_module_does_not_exist" in warnings[0]
    assert "bert" in result.stdout and "example_mlm" in result.stdout


def test_strict_mode_makes_a_broken_plugin_fatal(plugin_site: Path):
    result = _plmkit(plugin_site, "plugins", PLMKIT_STRICT_PLUGINS="1")
    assert result.returncode == 2
    assert result.stderr.startswith("plmkit: error: plugin broken")
    assert "Traceback" not in result.stderr


def test_disable_autoload_keeps_only_builtins(plugin_site: Path):
    result = _plmkit(plugin_site, "plugins", PLMKIT_DISABLE_PLUGIN_AUTOLOAD="1")
    assert result.returncode == 0
    assert "example_mlm" not in result.stdout and "broken" not in result.stderr
    assert "bert" in result.stdout


def test_duplicate_objective_names_both_plugins(tmp_path: Path):
    site = _install(tmp_path / "site", "duplicate_plugin")
    result = _plmkit(site, "plugins")
    assert result.returncode == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1
    assert "'bert'" in message and "plmkit-duplicate-plugin" in message
    assert "plmkit 0." in message
