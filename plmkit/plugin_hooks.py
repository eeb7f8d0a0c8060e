"""The hooks every method plugin laid out as the built-in ones implements, written once.

A built-in method is a package ``plmkit.plugins.<method>`` with its collator in
``collator.py``, its objective in ``model.py`` and its recipes in ``recipes/``. Its
``__init__.py`` exports the collator and takes the rest from :func:`method_hooks`::

    __getattr__, plmkit_register_objectives, plmkit_recipe_dirs = method_hooks(
        __name__, "BertObjective"
    )

A method with more hooks (ELECTRA's ``plmkit_export_options``) writes those beside them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from plmkit.registry import hookimpl


def method_hooks(
    package: str, objective: str
) -> tuple[Callable[[str], Any], Callable[[], list[Any]], Callable[[], list[Path]]]:
    """The module ``__getattr__`` and the two hooks of the method plugin ``package``.

    * ``__getattr__`` (PEP 562) imports ``objective`` from ``package.model`` on first use: the
      objective imports Lightning, and the package (its collator) must import without it,
      while ``package.<objective>`` (a recipe's ``class_path``) still resolves;
    * ``plmkit_register_objectives`` registers that objective;
    * ``plmkit_recipe_dirs`` returns the package's ``recipes/`` folder.
    """

    def __getattr__(name: str) -> Any:
        if name == objective:
            return getattr(importlib.import_module(f"{package}.model"), objective)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    @hookimpl
    def plmkit_register_objectives() -> list[Any]:
        return [__getattr__(objective)]

    @hookimpl
    def plmkit_recipe_dirs() -> list[Path]:
        init = importlib.import_module(package).__file__
        return [Path(str(init)).parent / "recipes"]

    return __getattr__, plmkit_register_objectives, plmkit_recipe_dirs
