"""BERT (MLM + NSP): the plugin's hooks; ``BertCollator`` can be used on its own."""

from pathlib import Path

from plmkit.plugins.bert.collator import BertCollator
from plmkit.registry import hookimpl

__all__ = ["BertCollator", "BertObjective"]


def __getattr__(name: str):
    # The objective imports Lightning; load it lazily so the collator works without it.
    if name == "BertObjective":
        from plmkit.plugins.bert.model import BertObjective

        return BertObjective
    raise AttributeError(name)


@hookimpl
def plmkit_register_objectives():
    from plmkit.plugins.bert.model import BertObjective

    return [BertObjective]


@hookimpl
def plmkit_recipe_dirs():
    return [Path(__file__).parent / "recipes"]
