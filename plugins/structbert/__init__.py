"""StructBERT (MLM + word and sentence structural objectives): the plugin's hooks.

``StructBertCollator`` can be used on its own, without Lightning.
"""

from plmkit.plugin_hooks import method_hooks
from plmkit.plugins.structbert.collator import StructBertCollator

__all__ = ["StructBertCollator", "StructBertObjective"]
__getattr__, plmkit_register_objectives, plmkit_recipe_dirs = method_hooks(
    __name__, "StructBertObjective"
)
