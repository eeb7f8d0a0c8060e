"""T5 span corruption: the plugin's hooks; ``T5SpanCorruptionCollator`` works on its own."""

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
