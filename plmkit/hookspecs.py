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
    from plmkit.evaluate.adapters import Adapter
    from plmkit.export import ExportOption
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


@hookspec
def plmkit_evaluation_adapters() -> dict[str, Adapter]:
    """Return how ``plmkit evaluate`` turns this plugin's exported models into features.

    Keys are the ``model_type`` values of the ``config.json`` that the plugin's objectives
    export (``"gpt2"``, ``"plmkit-elmo"``); values are :class:`plmkit.evaluate.Adapter`: a
    ``load(folder, random_init)`` that returns a :class:`plmkit.evaluate.Encoder` (hidden
    states ``(batch, layers, tokens, hidden)``), the default pooling and a one-line description.
    ``plmkit.evaluate.hf_adapter(model_class, pooling)`` builds one for a transformers class.
    A model type that no plugin claims is loaded with ``AutoModel`` and mean-pooled, so a plugin
    whose export is a transformers encoder needs no adapter.

    :return: a dict from model type to adapter (may be empty).

    Called each time a model is evaluated (``plmkit evaluate``, ``plmkit compare``), after the
    plugins are loaded; import heavy modules inside the hook. Two plugins returning the same
    model type is an error that names both plugins and their distributions; a value that is not
    an ``Adapter`` is an error naming the plugin.
    """


@hookspec
def plmkit_export_options() -> list[ExportOption]:
    """Return the extra options that ``plmkit export`` offers for this plugin's objectives.

    Each :class:`plmkit.export.ExportOption` names a keyword argument of the objective's
    ``export(out_dir, **options)`` (e.g. ``generator``), the objective names it applies to
    (subclasses included), its type (``bool``: a flag, off by default; or ``str``, ``int``,
    ``float``) and a one-line help. ``plmkit export`` shows it as ``--NAME`` (underscores as
    dashes) in ``plmkit export --help``, and passes it to ``export`` only when it is given.

    :return: a list of ExportOption (may be empty).

    Called when ``plmkit export`` parses its command line (and by
    ``plmkit.export.export_checkpoint``, to check the options it is given). Two plugins
    declaring the same name, or a name of the command's own arguments, is an error naming both;
    an option given for an objective it does not apply to is a one-line error that names the
    objectives it applies to.
    """
