"""Data pipeline: corpus readers, tokenizer, tokenize-once cache, packing, resumable loading."""

from plmkit.data.datamodule import PretrainDataModule

__all__ = ["PretrainDataModule"]
