"""Data pipeline: corpus readers, tokenizer, tokenize-once cache, packing, resumable loading."""

from typing import Any

__all__ = ["PretrainDataModule"]


def __getattr__(name: str) -> Any:
    # lazy: tokenizer worker processes import plmkit.data.* without Lightning
    if name == "PretrainDataModule":
        from plmkit.data.datamodule import PretrainDataModule

        return PretrainDataModule
    raise AttributeError(name)
