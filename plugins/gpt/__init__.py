"""GPT (causal LM over packed blocks): the plugin's hooks; ``GptCollator`` works on its own."""

from pathlib import Path

from plmkit.plugins.gpt.collator import GptCollator, document_causal_mask
from plmkit.registry import hookimpl

__all__ = ["GptCollator", "GptObjective", "document_causal_mask"]


def __getattr__(name: str):
    # The objective imports Lightning; load it lazily so the collator works without it.
    if name == "GptObjective":
        from plmkit.plugins.gpt.model import GptObjective

        return GptObjective
    raise AttributeError(name)


@hookimpl
def plmkit_register_objectives():
    from plmkit.plugins.gpt.model import GptObjective

    return [GptObjective]


@hookimpl
def plmkit_recipe_dirs():
    return [Path(__file__).parent / "recipes"]


@hookimpl
def plmkit_evaluation_adapters():
    from plmkit.evaluate import hf_adapter

    return {"gpt2": hf_adapter("AutoModel", "last",
                               "the base GPT2Model's hidden states, last-token pooling")}
