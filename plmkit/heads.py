"""Loss helpers shared by the methods' objectives.

The masked-LM loss gathers the masked positions *before* the vocabulary projection, so the
output layer runs on ~15% of the tokens instead of all of them (Cramming, MosaicBERT).
:func:`mlm_loss` and :func:`sentence_loss` add the metrics named after their task
(``mlm_loss``/``mlm_acc``, ``nsp_loss``/``nsp_acc``, ...), and :func:`mlm_and_sentence_loss` is
BERT's pretraining loss, which ALBERT, StructBERT and ERNIE share.
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


def mlm_loss(hidden: Tensor, labels: Tensor, head: Callable[[Tensor], Tensor],
             name: str = "mlm") -> tuple[Tensor, dict[str, Tensor]]:
    """:func:`masked_lm_loss` and its metrics ``{name}_loss`` and ``{name}_acc``."""
    loss, accuracy, _ = masked_lm_loss(hidden, labels, head)
    return loss, {f"{name}_loss": loss.detach(), f"{name}_acc": accuracy}


def sentence_loss(logits: Tensor, labels: Tensor, name: str) -> tuple[Tensor, dict[str, Tensor]]:
    """:func:`classification_loss` and its metrics ``{name}_loss`` and ``{name}_acc``."""
    loss, accuracy = classification_loss(logits, labels)
    return loss, {f"{name}_loss": loss.detach(), f"{name}_acc": accuracy}


def mlm_and_sentence_loss(
    hidden: Tensor, pooled: Tensor, batch: dict[str, Tensor],
    mlm_head: Callable[[Tensor], Tensor], sentence_head: Callable[[Tensor], Tensor],
    label: str, name: str,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Masked LM (``mlm_head`` on ``hidden`` at ``batch["labels"]``) plus, when the batch holds
    ``label``, the sentence task ``name`` (NSP, SOP) of ``sentence_head`` on the pooled
    ``[CLS]``; the losses are added with equal weights."""
    loss, metrics = mlm_loss(hidden, batch["labels"], mlm_head)
    if label in batch:
        task_loss, task_metrics = sentence_loss(sentence_head(pooled), batch[label], name)
        loss, metrics = loss + task_loss, {**metrics, **task_metrics}
    return loss, metrics


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters (shared tensors counted once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())
