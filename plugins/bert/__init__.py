"""BERT (MLM + NSP): the plugin's hooks; ``BertCollator`` can be used on its own."""

from plmkit.plugin_hooks import method_hooks
from plmkit.plugins.bert.collator import BertCollator

__all__ = ["BertCollator", "BertObjective"]
__getattr__, plmkit_register_objectives, plmkit_recipe_dirs = method_hooks(
    __name__, "BertObjective"
)
