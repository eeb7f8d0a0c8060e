"""StructBERT (MLM + word and sentence structural objectives): the plugin's hooks.

``StructBertCollator`` can be used on its own (no Lightning needed); the objective
``StructBertObjective`` is loaded lazily.
"""

from pathlib import Path

from plmkit.plugins.structbert.collator import StructBertCollator
from plmkit.registry import hookimpl

__all__ = ["StructBertCollator", "StructBertObjective"]


def __getattr__(name: str):
    # The objective imports Lightning; load it lazily so the collator works without it.
    if name == "StructBertObjective":
        from plmkit.plugins.structbert.model import StructBertObjective

        return StructBertObjective
    raise AttributeError(name)


@hookimpl
def plmkit_register_objectives():
    from plmkit.plugins.structbert.model import StructBertObjective

    return [StructBertObjective]


@hookimpl
def plmkit_recipe_dirs():
    return [Path(__file__).parent / "recipes"]
