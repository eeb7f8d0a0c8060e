"""Plugin manager: loads plugins from entry points, collects objectives and recipes.

pluggy's own ``load_setuptools_entrypoints`` aborts on the first broken plugin, so the
entry points are iterated here: a plugin that fails to import is reported in one line and
skipped (``PLMKIT_STRICT_PLUGINS=1`` makes that fatal), and
``PLMKIT_DISABLE_PLUGIN_AUTOLOAD=1`` loads only the built-in plugins shipped with plmkit.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy
import yaml

from plmkit import hookspecs
from plmkit.errors import PlmkitError, PluginError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from plmkit.objective import Objective

hookimpl = pluggy.HookimplMarker("plmkit")
log = logging.getLogger("plmkit")

ENTRY_POINT_GROUP = "plmkit.plugins"
BUILTIN_DISTRIBUTION = "plmkit"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class PluginInfo:
    """Where a plugin came from: its entry-point name and its distribution."""

    name: str
    distribution: str
    version: str

    def __str__(self) -> str:
        return f"{self.name} ({self.distribution} {self.version})"


@dataclass(frozen=True)
class ObjectiveSpec:
    """A registered objective: its name, class, one-line description and plugin."""

    name: str
    cls: type[Objective]
    plugin: PluginInfo

    @property
    def description(self) -> str:
        doc = (self.cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    @property
    def class_path(self) -> str:
        return f"{self.cls.__module__}.{self.cls.__qualname__}"


@dataclass(frozen=True)
class RecipeSpec:
    """A recipe file: its name, path, the objective it trains and a one-line description."""

    name: str
    path: Path
    plugin: PluginInfo

    @functools.cached_property
    def _parsed(self) -> tuple[str, str]:
        text = self.path.read_text(encoding="utf-8")
        first = text.lstrip().splitlines()[0] if text.strip() else ""
        description = first.lstrip("#").strip() if first.startswith("#") else ""
        try:
            config = yaml.safe_load(text) or {}
            model = config.get("model", {}) if isinstance(config, dict) else {}
            class_path = model.get("class_path", "") if isinstance(model, dict) else ""
        except yaml.YAMLError:
            class_path = ""
        return description, class_path

    @property
    def description(self) -> str:
        return self._parsed[0]

    @property
    def class_path(self) -> str:
        return self._parsed[1]


@dataclass
class Registry:
    """The loaded plugins, their objectives and recipes."""

    manager: pluggy.PluginManager
    plugins: list[PluginInfo] = field(default_factory=list)
    failed: list[tuple[PluginInfo, str]] = field(default_factory=list)
    objectives: dict[str, ObjectiveSpec] = field(default_factory=dict)

    # -- objectives -----------------------------------------------------------------------
    def objective(self, name: str) -> ObjectiveSpec:
        """The objective called ``name``; an unknown name is a PlmkitError with suggestions."""
        if name not in self.objectives:
            raise PlmkitError(
                f"unknown objective '{name}'{_suggest(name, self.objectives)}; "
                "run 'plmkit plugins' to list the installed ones"
            )
        return self.objectives[name]

    def objective_for_class_path(self, class_path: str) -> ObjectiveSpec | None:
        """The objective whose class is ``class_path`` (full dotted path or class name)."""
        short = class_path.rsplit(".", 1)[-1]
        for spec in self.objectives.values():
            if class_path in (spec.class_path, spec.name) or short == spec.cls.__name__:
                return spec
        return None

    # -- recipes --------------------------------------------------------------------------
    @functools.cached_property
    def recipes(self) -> dict[str, RecipeSpec]:
        """Every recipe from the ``plmkit_recipe_dirs`` hook, built-in plugins included."""
        found: dict[str, RecipeSpec] = {}
        for info, dirs in self.results_by_plugin("plmkit_recipe_dirs"):
            for directory in dirs or []:
                for path in sorted(Path(directory).glob("*.yaml")):
                    if path.stem in found:
                        raise PluginError(
                            f"recipe '{path.stem}' is defined twice: by {found[path.stem].plugin} "
                            f"in {found[path.stem].path} and by {info} in {path}; "
                            "uninstall or rename one of them"
                        )
                    found[path.stem] = RecipeSpec(path.stem, path, info)
        return dict(sorted(found.items()))

    def recipe(self, name: str) -> RecipeSpec:
        """The recipe called ``name``; an unknown name is a PlmkitError with suggestions."""
        if name not in self.recipes:
            raise PlmkitError(
                f"unknown recipe '{name}'{_suggest(name, self.recipes)}; "
                "run 'plmkit recipes' to list them, or pass a path to a .yaml file"
            )
        return self.recipes[name]

    def results_by_plugin(self, hook_name: str, **kwargs: Any) -> Iterator[tuple[PluginInfo, Any]]:
        """Call hook ``hook_name`` through the plugin manager once per implementing plugin,
        in registration order: ``(plugin, its result)``, so that a conflict between two
        plugins' results can name both."""
        for plugin_name, result in _call_per_plugin(self.manager, hook_name, **kwargs):
            yield self._info(plugin_name), result

    def _info(self, plugin_name: str) -> PluginInfo:
        for info in self.plugins:
            if info.name == plugin_name:
                return info
        return PluginInfo(plugin_name, "unknown", "?")


def _suggest(name: str, choices: object) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)  # type: ignore[arg-type]
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def _call_per_plugin(
    manager: pluggy.PluginManager, hook_name: str, **kwargs: Any
) -> Iterator[tuple[str, Any]]:
    """Call a hook through the manager once per implementing plugin, in registration order.

    ``manager.hook.<name>()`` merges every plugin's result into one list; the registry needs to
    know which plugin returned what, to name both sides of a duplicate objective or recipe.
    """
    plugins = manager.get_plugins()
    for impl in getattr(manager.hook, hook_name).get_hookimpls():
        others = [plugin for plugin in plugins if plugin is not impl.plugin]
        for result in manager.subset_hook_caller(hook_name, remove_plugins=others)(**kwargs):
            yield impl.plugin_name, result


def build_registry() -> Registry:
    """Load every plugin from the ``plmkit.plugins`` entry points and collect their objectives."""
    manager = pluggy.PluginManager("plmkit")
    manager.add_hookspecs(hookspecs)
    registry = Registry(manager)
    strict = _env_flag("PLMKIT_STRICT_PLUGINS")
    builtins_only = _env_flag("PLMKIT_DISABLE_PLUGIN_AUTOLOAD")

    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        info = PluginInfo(ep.name, dist.name if dist else "unknown", dist.version if dist else "?")
        if builtins_only and info.distribution != BUILTIN_DISTRIBUTION:
            continue
        if manager.has_plugin(ep.name):
            raise PluginError(
                f"two plugins are named '{ep.name}': {registry._info(ep.name)} and {info}; "
                "uninstall one of them"
            )
        try:
            module = ep.load()
            manager.register(module, name=ep.name)
        except Exception as exc:  # a broken plugin must not take the others down
            message = f"plugin {info} failed to load: {type(exc).__name__}: {exc}"
            if strict:
                raise PluginError(message + " (PLMKIT_STRICT_PLUGINS is set)") from exc
            log.warning("%s; skipped (set PLMKIT_STRICT_PLUGINS=1 to make this fatal)", message)
            registry.failed.append((info, f"{type(exc).__name__}: {exc}"))
            continue
        registry.plugins.append(info)

    for plugin_name, classes in _call_per_plugin(manager, "plmkit_register_objectives"):
        info = registry._info(plugin_name)
        for cls in classes or []:
            name = cls.objective_name
            if name in registry.objectives:
                other = registry.objectives[name]
                raise PluginError(
                    f"objective '{name}' is registered twice: by plugin {other.plugin} "
                    f"({other.class_path}) and by plugin {info} ({cls.__module__}."
                    f"{cls.__qualname__}); uninstall one of them or block it with "
                    "PLMKIT_DISABLE_PLUGIN_AUTOLOAD=1"
                )
            registry.objectives[name] = ObjectiveSpec(name, cls, info)
    return registry


@functools.cache
def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    return build_registry()
