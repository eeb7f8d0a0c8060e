"""plmkit: pretrain language models with PyTorch Lightning, one plugin per method.

The core (this package) is method-agnostic: data, tokenizer, training loop, CLI and export.
Each pretraining method lives in ``plmkit.plugins.<name>`` and is registered through the
``plmkit.plugins`` entry-point group, exactly like a third-party plugin.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("plmkit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
