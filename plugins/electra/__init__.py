"""ELECTRA (generator + replaced-token-detection discriminator): the plugin's hooks.

``ElectraCollator`` (the generator's dynamic masking) can be used on its own, without
Lightning: ``from plmkit.plugins.electra import ElectraCollator``.
"""

from plmkit.plugin_hooks import method_hooks
from plmkit.plugins.electra.collator import ElectraCollator
from plmkit.registry import hookimpl

__all__ = ["ElectraCollator", "ElectraObjective"]
__getattr__, plmkit_register_objectives, plmkit_recipe_dirs = method_hooks(
    __name__, "ElectraObjective"
)


@hookimpl
def plmkit_export_options():
    from plmkit.export import ExportOption

    return [ExportOption("generator", "also export the generator (ElectraForMaskedLM) and the "
                         "tokenizer to OUT_DIR/generator", ("electra",))]
