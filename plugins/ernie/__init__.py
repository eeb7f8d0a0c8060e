"""ERNIE 1.0 (knowledge masking: whole phrases and entities, in stages): the plugin's hooks.

``ErnieCollator`` can be used on its own (no Lightning needed); the objective
``ErnieObjective`` is loaded lazily. The lexicon matcher lives in
:mod:`plmkit.plugins.ernie.lexicon`.
"""

from pathlib import Path

from plmkit.plugins.ernie.collator import ErnieCollator
from plmkit.registry import hookimpl

__all__ = ["ErnieCollator", "ErnieObjective"]


def __getattr__(name: str):
    # The objective imports Lightning; load it lazily so the collator works without it.
    if name == "ErnieObjective":
        from plmkit.plugins.ernie.model import ErnieObjective

        return ErnieObjective
    raise AttributeError(name)


@hookimpl
def plmkit_register_objectives():
    from plmkit.plugins.ernie.model import ErnieObjective

    return [ErnieObjective]


@hookimpl
def plmkit_recipe_dirs():
    return [Path(__file__).parent / "recipes"]
