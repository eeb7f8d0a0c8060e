"""ERNIE 1.0 (knowledge masking: whole phrases and entities, in stages): the plugin's hooks.

``ErnieCollator`` can be used on its own, without Lightning; the lexicon matcher lives in
:mod:`plmkit.plugins.ernie.lexicon`.
"""

from plmkit.plugin_hooks import method_hooks
from plmkit.plugins.ernie.collator import ErnieCollator

__all__ = ["ErnieCollator", "ErnieObjective"]
__getattr__, plmkit_register_objectives, plmkit_recipe_dirs = method_hooks(
    __name__, "ErnieObjective"
)
