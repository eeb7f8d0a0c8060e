"""XLNet (permutation LM, two-stream attention): the plugin's hooks.

``XLNetCollator`` builds span targets, ``perm_mask`` and ``target_mapping`` and can be used on
its own (no Lightning needed); ``XLNetObjective`` trains ``XLNetLMHeadModel`` with it.
"""

from pathlib import Path

from plmkit.plugins.xlnet.collator import XLNetCollator
from plmkit.registry import hookimpl

__all__ = ["XLNetCollator", "XLNetObjective"]


def __getattr__(name: str):
    # The objective imports Lightning; load it lazily so the collator works without it.
    if name == "XLNetObjective":
        from plmkit.plugins.xlnet.model import XLNetObjective

        return XLNetObjective
    raise AttributeError(name)


@hookimpl
def plmkit_register_objectives():
    from plmkit.plugins.xlnet.model import XLNetObjective

    return [XLNetObjective]


@hookimpl
def plmkit_recipe_dirs():
    return [Path(__file__).parent / "recipes"]
