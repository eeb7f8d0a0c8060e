"""ELECTRA (generator + replaced-token-detection discriminator): the plugin's hooks.

``ElectraCollator`` (the generator's dynamic masking) can be used on its own, without
Lightning: ``from plmkit.plugins.electra import ElectraCollator``.
"""

from pathlib import Path

from plmkit.plugins.electra.collator import ElectraCollator
from plmkit.registry import hookimpl

__all__ = ["ElectraCollator", "ElectraObjective"]


def __getattr__(name: str):
    # The objective imports Lightning; load it lazily so the collator works without it.
    if name == "ElectraObjective":
        from plmkit.plugins.electra.model import ElectraObjective

        return ElectraObjective
    raise AttributeError(name)


@hookimpl
def plmkit_register_objectives():
    from plmkit.plugins.electra.model import ElectraObjective

    return [ElectraObjective]


@hookimpl
def plmkit_recipe_dirs():
    return [Path(__file__).parent / "recipes"]


@hookimpl
def plmkit_export_options():
    from plmkit.export import ExportOption

    return [ExportOption("generator", "also export the generator (ElectraForMaskedLM) and the "
                         "tokenizer to OUT_DIR/generator", ("electra",))]
