"""SpanBERT (span masking + Span Boundary Objective): the plugin's hooks.

``SpanBertCollator`` can be used on its own, without Lightning.
"""

from plmkit.plugin_hooks import method_hooks
from plmkit.plugins.spanbert.collator import SpanBertCollator

__all__ = ["SpanBertCollator", "SpanBertObjective"]
__getattr__, plmkit_register_objectives, plmkit_recipe_dirs = method_hooks(
    __name__, "SpanBertObjective"
)
