"""RoBERTa (dynamic MLM, FULL-SENTENCES packing, no NSP): the plugin's hooks.

``RobertaCollator`` can be used on its own, without Lightning.
"""

from pathlib import Path

from plmkit.plugins.roberta.collator import RobertaCollator
from plmkit.registry import hookimpl

__all__ = ["RobertaCollator", "RobertaObjective"]


def __getattr__(name: str):
    # The objective imports Lightning; load it lazily so the collator works without it.
    if name == "RobertaObjective":
        from plmkit.plugins.roberta.model import RobertaObjective

        return RobertaObjective
    raise AttributeError(name)


@hookimpl
def plmkit_register_objectives():
    from plmkit.plugins.roberta.model import RobertaObjective

    return [RobertaObjective]


@hookimpl
def plmkit_recipe_dirs():
    return [Path(__file__).parent / "recipes"]
