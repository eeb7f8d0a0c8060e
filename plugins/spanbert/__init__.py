"""SpanBERT (span masking + Span Boundary Objective): the plugin's hooks.

``SpanBertCollator`` can be used on its own (no Lightning needed); ``SpanBertObjective`` is
loaded lazily.
"""

from pathlib import Path

from plmkit.plugins.spanbert.collator import SpanBertCollator
from plmkit.registry import hookimpl

__all__ = ["SpanBertCollator", "SpanBertObjective"]


def __getattr__(name: str):
    # The objective imports Lightning; load it lazily so the collator works without it.
    if name == "SpanBertObjective":
        from plmkit.plugins.spanbert.model import SpanBertObjective

        return SpanBertObjective
    raise AttributeError(name)


@hookimpl
def plmkit_register_objectives():
    from plmkit.plugins.spanbert.model import SpanBertObjective

    return [SpanBertObjective]


@hookimpl
def plmkit_recipe_dirs():
    return [Path(__file__).parent / "recipes"]
