"""ALBERT (n-gram MLM + sentence-order prediction, factorized and shared): the plugin's hooks.

``AlbertCollator`` can be used on its own, without Lightning.
"""

from plmkit.plugin_hooks import method_hooks
from plmkit.plugins.albert.collator import AlbertCollator

__all__ = ["AlbertCollator", "AlbertObjective"]
__getattr__, plmkit_register_objectives, plmkit_recipe_dirs = method_hooks(
    __name__, "AlbertObjective"
)
