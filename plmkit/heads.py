"""Loss helpers shared by the methods' objectives.

The masked-LM loss gathers the masked positions *before* the vocabulary projection, so the
output layer runs on ~15% of the tokens instead of all of them (Cramming, MosaicBERT).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from plmkit.collator import IGNORE_INDEX


def masked_lm_loss(
    hidden: Tensor, labels: Tensor, head: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """Cross-entropy of ``head`` (hidden -> vocab logits) at the labelled positions only.

    Args:
        hidden: (batch, length, hidden) final hidden states.
        labels: (batch, length) original ids at predicted positions, -100 elsewhere.
        head: the MLM head, applied to a (num_predicted, hidden) tensor.

    Returns:
        ``(loss, accuracy, logits)`` where logits are (num_predicted, vocab).
    """
    selected = labels != IGNORE_INDEX
    targets = labels[selected]
    logits = head(hidden[selected])
    loss = F.cross_entropy(logits.float(), targets)
    accuracy = (logits.argmax(dim=-1) == targets).float().mean()
    return loss, accuracy, logits


def classification_loss(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-entropy and accuracy of a sequence-level classifier (NSP, SOP, SSO)."""
    loss = F.cross_entropy(logits.float(), labels)
    accuracy = (logits.argmax(dim=-1) == labels).float().mean()
    return loss, accuracy


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters (shared tensors counted once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())
