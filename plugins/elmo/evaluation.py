"""How ``plmkit evaluate`` reads an exported ELMo: all 2L + 1 layers of the biLM, which the
evaluation head combines with a learned scalar mix ``gamma * sum_j softmax(w)_j h_j``."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from plmkit.evaluate import Adapter, Encoder, quiet_transformers
from plmkit.plugins.elmo.bilm import ElmoBiLM, ElmoEmbedder


def _layers(backbone: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    # (L + 1, B, T, 2P): the token layer and each biLSTM layer -> (B, L + 1, T, 2P)
    return backbone(input_ids, attention_mask)["layers"].transpose(0, 1)


def load_elmo(folder: Path, random_init: bool) -> Encoder:
    """The exported biLM (or, with ``random_init``, fresh weights of the same shape)."""
    with quiet_transformers():  # its tokenizer load notes the unknown model type
        embedder = ElmoEmbedder.from_pretrained(str(folder), requires_grad=True)
    if random_init:  # same config and character table; the caller seeded torch
        bilm = embedder.bilm
        embedder = ElmoEmbedder(ElmoBiLM(bilm.config, bilm.chars), requires_grad=True)
    embedder.scalar_mixes = nn.ModuleList()  # the evaluation head has its own scalar mix
    return Encoder(embedder, int(embedder.output_dim), _layers)


ADAPTERS = {
    "plmkit-elmo": Adapter(load_elmo, "mean",
                           "ElmoEmbedder, scalar mix of all layers, mean pooling"),
}
