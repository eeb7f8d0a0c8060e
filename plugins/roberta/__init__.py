"""RoBERTa (dynamic MLM, FULL-SENTENCES packing, no NSP): the plugin's hooks.

``RobertaCollator`` can be used on its own, without Lightning.
"""

from plmkit.plugin_hooks import method_hooks
from plmkit.plugins.roberta.collator import RobertaCollator

__all__ = ["RobertaCollator", "RobertaObjective"]
__getattr__, plmkit_register_objectives, plmkit_recipe_dirs = method_hooks(
    __name__, "RobertaObjective"
)
