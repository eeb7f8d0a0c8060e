"""The plugin contract: the pluggy hooks a plmkit plugin may implement.

A plugin is a module listed under the ``plmkit.plugins`` entry-point group. It implements any
of the hooks below with the ``plmkit.hookimpl`` marker::

    from plmkit.registry import hookimpl

    @hookimpl
    def plmkit_register_objectives():
        return [MyObjective]

The built-in methods (``plmkit.plugins.bert`` ...) are registered the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from plmkit.objective import Objective

hookspec = pluggy.HookspecMarker("plmkit")


@hookspec
def plmkit_register_objectives() -> list[type[Objective]]:
    """Return the pretraining objectives this plugin provides.

    Each item is a concrete subclass of :class:`plmkit.objective.Objective` with a unique
    ``objective_name`` class attribute (e.g. ``"bert"``); the first line of its docstring is the
    one-line description shown by ``plmkit plugins``.

    :return: a list of Objective subclasses (may be empty).

    Called once per process, when the plugin manager is first built (before the command line is
    parsed), for every loaded plugin. Two plugins returning the same ``objective_name`` is an
    error that names both plugins and their distributions.
    """


@hookspec
def plmkit_recipe_dirs() -> list[Path]:
    """Return folders holding this plugin's recipe files (``<recipe name>.yaml``).

    A recipe is a LightningCLI config file (``model:``, ``data:``, ``trainer:`` ...). Its first
    line, if it is a comment (``# ...``), is the one-line description shown by ``plmkit recipes``.

    :return: a list of existing directories; every ``*.yaml`` inside is a recipe.

    Called when recipes are listed or resolved (``plmkit recipes``, ``plmkit fit --recipe``).
    Two recipes with the same name are an error naming both files.
    """
