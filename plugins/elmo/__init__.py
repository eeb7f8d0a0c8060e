"""ELMo (biLM with a character CNN, in plain PyTorch): the plugin's hooks.

``ElmoCollator`` (next-token and previous-token targets) works on its own without Lightning;
``ElmoEmbedder.from_pretrained(path)`` loads an exported biLM for downstream use (the 2L + 1
layer representations and a trainable scalar mix); ``ElmoObjective`` trains it.
"""

from pathlib import Path

from plmkit.plugins.elmo.collator import ElmoCollator
from plmkit.registry import hookimpl

__all__ = ["ElmoBiLM", "ElmoCollator", "ElmoConfig", "ElmoEmbedder", "ElmoObjective"]


def __getattr__(name: str):
    # The objective imports Lightning; load it (and the model classes) lazily.
    if name == "ElmoObjective":
        from plmkit.plugins.elmo.model import ElmoObjective

        return ElmoObjective
    if name in ("ElmoBiLM", "ElmoConfig", "ElmoEmbedder"):
        from plmkit.plugins.elmo import bilm

        return getattr(bilm, name)
    raise AttributeError(name)


@hookimpl
def plmkit_register_objectives():
    from plmkit.plugins.elmo.model import ElmoObjective

    return [ElmoObjective]


@hookimpl
def plmkit_recipe_dirs():
    return [Path(__file__).parent / "recipes"]


@hookimpl
def plmkit_evaluation_adapters():
    from plmkit.plugins.elmo.evaluation import ADAPTERS

    return ADAPTERS
