"""ALBERT (n-gram MLM + sentence-order prediction, factorized and shared): the plugin's hooks.

``AlbertCollator`` can be used on its own, without Lightning.
"""

from pathlib import Path

from plmkit.plugins.albert.collator import AlbertCollator
from plmkit.registry import hookimpl

__all__ = ["AlbertCollator", "AlbertObjective"]


def __getattr__(name: str):
    # The objective imports Lightning; load it lazily so the collator works without it.
    if name == "AlbertObjective":
        from plmkit.plugins.albert.model import AlbertObjective

        return AlbertObjective
    raise AttributeError(name)


@hookimpl
def plmkit_register_objectives():
    from plmkit.plugins.albert.model import AlbertObjective

    return [AlbertObjective]


@hookimpl
def plmkit_recipe_dirs():
    return [Path(__file__).parent / "recipes"]
