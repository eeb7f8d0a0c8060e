"""T5 span corruption: the plugin's hooks; ``T5SpanCorruptionCollator`` works on its own."""

from pathlib import Path

from plmkit.plugins.t5.collator import (
    T5SpanCorruptionCollator,
    random_spans_helper,
    random_spans_noise_mask,
    sentinel_tokens,
)
from plmkit.registry import hookimpl

__all__ = [
    "T5Objective",
    "T5SpanCorruptionCollator",
    "random_spans_helper",
    "random_spans_noise_mask",
    "sentinel_tokens",
]


def __getattr__(name: str):
    # The objective imports Lightning; load it lazily so the collator works without it.
    if name == "T5Objective":
        from plmkit.plugins.t5.model import T5Objective

        return T5Objective
    raise AttributeError(name)


@hookimpl
def plmkit_register_objectives():
    from plmkit.plugins.t5.model import T5Objective

    return [T5Objective]


@hookimpl
def plmkit_recipe_dirs():
    return [Path(__file__).parent / "recipes"]


@hookimpl
def plmkit_evaluation_adapters():
    from plmkit.evaluate import hf_adapter

    encoder = hf_adapter("T5EncoderModel", "mean", "T5EncoderModel (encoder only), mean pooling")
    return dict.fromkeys(("t5", "mt5", "umt5"), encoder)
