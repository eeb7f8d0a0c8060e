"""The ELECTRA objective: a small generator (masked LM) and a discriminator (replaced-token
detection) trained together, after google-research/electra ``run_pretraining.py``.

* Both towers are transformers classes: ``ElectraForMaskedLM`` (generator) and
  ``ElectraForPreTraining`` (discriminator). They share **one** ``ElectraEmbeddings`` module
  (token, position and type embeddings and their LayerNorm: the same tensors, as the
  original's shared ``electra/embeddings`` scope); each tower keeps its own
  ``embeddings_project``. The generator's output layer is tied to the shared word embeddings.
* The generator head (dense -> GELU -> LayerNorm -> tied embeddings + bias) runs only on the
  masked positions: the hidden states are gathered first.
* Replacements are sampled with Gumbel-max at ``temperature`` without gradient;
  ``is_replaced = masked & (sample != original)``, so a correct guess is labelled real.
  ``disallow_correct`` lowers the original token's logit by 1000 after the temperature, as
  the original's ``sample_from_softmax(logits / temp, disallow)``.
* Discriminator loss: sigmoid BCE over every real token ([CLS]/[SEP] included).
  Loss = ``generator_weight`` x MLM + ``discriminator_weight`` x BCE (1.0 and 50.0).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining
from transformers.models.electra.modeling_electra import ElectraLayer

from plmkit.collator import IGNORE_INDEX
from plmkit.config import EncoderConfig, MaskingConfig, as_config
from plmkit.encoder import ENCODER_SHAPE_FIELDS, EncoderObjective
from plmkit.errors import PlmkitError
from plmkit.heads import masked_lm_loss
from plmkit.plugins.electra.collator import ElectraCollator


def gumbel_sample(logits: Tensor, temperature: float = 1.0,
                  generator: torch.Generator | None = None,
                  disallow: Tensor | None = None) -> Tensor:
    """Gumbel-max sample of one token per row of ``logits`` (n, vocab); no gradient.

    The noise is the original's ``-log(-log(u + 1e-9) + 1e-9)`` with ``u ~ U[0, 1)``.
    ``disallow`` (n,): a token per row whose logit loses 1000 *after* the division by the
    temperature, as the original's ``sample_from_softmax(logits / temp, disallow)``.
    """
    with torch.no_grad():
        logits = logits.detach().float() / temperature
        if disallow is not None:
            logits[torch.arange(len(logits), device=logits.device), disallow] -= 1000.0
        uniform = torch.rand(logits.shape, generator=generator, device=logits.device)
        gumbel = -torch.log(-torch.log(uniform + 1e-9) + 1e-9)
        return (logits + gumbel).argmax(dim=-1)


def replace_tokens(original_ids: Tensor, masked: Tensor, sampled: Tensor) -> tuple[Tensor, Tensor]:
    """Put the generator's samples at the masked positions; label what actually changed.

    Args:
        original_ids: (batch, length) uncorrupted ids.
        masked: (batch, length) bool, the positions the generator predicted.
        sampled: (num_masked,) sampled ids in the row-major order of ``masked``.

    Returns:
        ``(fake_ids, is_replaced)``; ``is_replaced = masked & (fake != original)``, so a
        sample equal to the original token is labelled real.
    """
    fake_ids = original_ids.clone()
    fake_ids[masked] = sampled.to(fake_ids.dtype)
    is_replaced = masked & (fake_ids != original_ids)
    return fake_ids, is_replaced


@dataclass
class ElectraOutput:
    """What one ELECTRA forward pass produces (all tensors, losses unweighted)."""

    mlm_loss: Tensor
    mlm_accuracy: Tensor
    mlm_logits: Tensor  # (num_masked, vocab)
    sampled_ids: Tensor  # (num_masked,)
    disc_loss: Tensor
    disc_logits: Tensor  # (batch, length)
    is_replaced: Tensor  # (batch, length) bool
    real: Tensor  # (batch, length) bool: non-padding tokens
    masked: Tensor  # (batch, length) bool


class ElectraPretrainingModel(nn.Module):
    """Generator + discriminator with shared embeddings; ``forward`` runs one ELECTRA step."""

    def __init__(
        self,
        discriminator_config: ElectraConfig,
        generator_config: ElectraConfig,
        temperature: float = 1.0,
        disallow_correct: bool = False,
        tie_encoder: bool = False,
    ) -> None:
        super().__init__()
        shared = ["vocab_size", "embedding_size", "max_position_embeddings",
                  "type_vocab_size", "pad_token_id"]
        if tie_encoder:
            shared += ["hidden_size", "num_hidden_layers", "num_attention_heads",
                       "intermediate_size"]
        for key in shared:
            if getattr(discriminator_config, key) != getattr(generator_config, key):
                raise ValueError(f"generator and discriminator must agree on {key} to share "
                                 f"their {'encoder' if tie_encoder else 'embeddings'}")
        self.discriminator = ElectraForPreTraining(discriminator_config)
        self.generator = ElectraForMaskedLM(generator_config)
        self.temperature = temperature
        self.disallow_correct = disallow_correct
        self.share_embeddings()
        if tie_encoder:
            self.share_encoder()

    def share_embeddings(self) -> None:
        """Make the generator use the discriminator's embedding module and tie its output."""
        shared = self.discriminator.electra.embeddings
        self.generator.electra.embeddings = shared
        self.generator.generator_lm_head.weight = shared.word_embeddings.weight

    def share_encoder(self) -> None:
        """Make the generator run the discriminator's transformer too (and its projection of
        the embeddings, when they are narrower): one encoder, two heads (the paper's "tie all
        weights", section 3.2)."""
        disc, gen = self.discriminator.electra, self.generator.electra
        gen.encoder = disc.encoder
        if hasattr(disc, "embeddings_project"):
            gen.embeddings_project = disc.embeddings_project

    @property
    def embeddings(self) -> nn.Module:
        return self.discriminator.electra.embeddings

    def generator_head(self, hidden: Tensor) -> Tensor:
        """(n, generator hidden) -> (n, vocab) logits; called on masked positions only."""
        generator = self.generator
        return generator.generator_lm_head(generator.generator_predictions(hidden))

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        labels: Tensor,
        token_type_ids: Tensor | None = None,
    ) -> ElectraOutput:
        masked = labels != IGNORE_INDEX
        original_ids = torch.where(masked, labels, input_ids)
        real = attention_mask.bool()

        gen_hidden = self.generator.electra(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            return_dict=True,
        ).last_hidden_state
        mlm_loss, mlm_acc, logits = masked_lm_loss(gen_hidden, labels, self.generator_head)

        disallow = labels[masked] if self.disallow_correct else None
        sampled = gumbel_sample(logits, self.temperature, disallow=disallow)
        fake_ids, is_replaced = replace_tokens(original_ids, masked, sampled)

        disc_hidden = self.discriminator.electra(
            input_ids=fake_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            return_dict=True,
        ).last_hidden_state
        disc_logits = self.discriminator.discriminator_predictions(disc_hidden)
        disc_loss = F.binary_cross_entropy_with_logits(
            disc_logits[real].float(), is_replaced[real].float()
        )
        return ElectraOutput(mlm_loss, mlm_acc, logits, sampled, disc_loss, disc_logits,
                             is_replaced, real, masked)


def roc_auc(scores: Tensor, targets: Tensor) -> Tensor:
    """ROC AUC of ``scores`` for the boolean ``targets`` (Mann-Whitney, by ranks); 0.5 when
    either class is empty. Ties are ranked in no particular order (logits rarely tie).

    Written by hand: torchmetrics' ``binary_auroc`` syncs with the host (its curve has a
    data-dependent size) and returns 0 with a warning for a batch of one class."""
    scores, targets = scores.flatten(), targets.flatten()
    ranks = torch.empty(scores.numel(), dtype=torch.float32, device=scores.device)
    ranks[scores.argsort()] = torch.arange(1, scores.numel() + 1, dtype=torch.float32,
                                           device=scores.device)
    n_pos = targets.sum().float()
    n_neg = targets.numel() - n_pos
    auc = ((ranks * targets).sum() / n_pos.clamp(min=1) - (n_pos + 1) / 2) / n_neg.clamp(min=1)
    return torch.where((n_pos > 0) & (n_neg > 0), auc, torch.full_like(auc, 0.5))


def discriminator_metrics(out: ElectraOutput,
                          judged: Tensor | None = None) -> dict[str, Tensor]:
    """Accuracy over real tokens, precision / recall on replaced tokens, replaced fraction,
    and ``disc_auc``: the ROC AUC of the logits, replaced vs original, over the ``judged``
    tokens (default: the real ones; the objective passes the non-special ones).

    ``disc_auc`` is 0.5 for a discriminator that knows only the base rate, whatever its
    calibration; ``disc_loss`` can go below the base-rate entropy of ``replaced_frac`` by
    learning that [CLS] and [SEP] are never replaced, and accuracy, precision and recall stay
    flat while no logit crosses 0 (a replaced rate of ~15%).
    """
    with torch.no_grad():
        pred = out.disc_logits[out.real] > 0
        target = out.is_replaced[out.real]
        tp = (pred & target).sum().float()
        judged = out.real if judged is None else judged
        return {
            "disc_acc": (pred == target).float().mean(),
            "disc_precision": tp / pred.sum().clamp(min=1),
            "disc_recall": tp / target.sum().clamp(min=1),
            "disc_auc": roc_auc(out.disc_logits[judged].float(), out.is_replaced[judged]),
            "replaced_frac": target.float().mean(),
            # share of the generator's samples that equal the original token
            "sampled_acc": 1.0 - out.is_replaced[out.masked].float().mean(),
        }


def generator_config(encoder: EncoderConfig,
                     generator: EncoderConfig | dict[str, Any] | None) -> EncoderConfig:
    """The generator's resolved shape (default: ELECTRA-Small's rule, see the objective's
    ``generator`` argument) with the discriminator's shared embedding width and positions."""
    if generator is None:
        hidden = max(1, encoder.hidden_size // 4)  # type: ignore[operator]
        return replace(encoder, hidden_size=hidden, num_heads=max(1, hidden // 64),
                       intermediate_size=4 * hidden).resolved()
    generator = as_config(EncoderConfig, generator)
    if generator.embedding_size not in (None, encoder.embedding_size):
        raise PlmkitError(f"model.generator.embedding_size must be the discriminator's "
                          f"({encoder.embedding_size}): the two towers share their embeddings")
    return replace(generator, embedding_size=encoder.embedding_size,
                   max_position_embeddings=encoder.max_position_embeddings).resolved()


class ElectraObjective(EncoderObjective):
    """ELECTRA: replaced-token detection with a jointly trained generator (Clark et al. 2020)."""

    objective_name = "electra"
    packing = "stream"
    collator_class = ElectraCollator
    shape_fields = {**ENCODER_SHAPE_FIELDS, "embedding_size": "encoder.embedding_size"}
    block_class = ElectraLayer

    def __init__(
        self,
        encoder: EncoderConfig = EncoderConfig(size="small", embedding_size=128),
        generator: EncoderConfig | None = None,
        masking: MaskingConfig = MaskingConfig(mask_rate=0.85, random_rate=0.0),
        temperature: float = 1.0,
        disallow_correct: bool = False,
        generator_weight: float = 1.0,
        discriminator_weight: float = 50.0,
        discriminator_prior_init: bool = False,
        tie_encoder: bool = False,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            encoder: the discriminator (ELECTRA-Small by default); its ``embedding_size`` is
                the width of the token/position/type embeddings both towers share (each
                projects them to its own hidden size).
            generator: the generator's shape (its embedding width and positions are the
                discriminator's); default: a quarter of the discriminator's width,
                ``max(1, width // 64)`` heads, a 4 x width feed-forward, the same depth and
                dropout.
            masking: ELECTRA's: 85% [MASK], 15% unchanged, no random token, an exact count
                capped at ``int((p + 0.005) * max_length)`` by default.
            temperature: sampling temperature of the generator's Gumbel-max samples.
            disallow_correct: never sample the original token (an option of the original
                code, off by default).
            generator_weight: weight of the generator's MLM loss (1.0).
            discriminator_weight: weight of the discriminator's BCE loss (50.0).
            discriminator_prior_init: start the discriminator's output bias at the log-odds
                of the replaced rate it will see first, ``log(p / (1 - p))``, instead of 0 (the
                original). Adam moves the one bias by at most about ``lr`` a step (over
                ``electra_tiny``'s 300-step schedule, 0.3 in all, short of the -1.73 needed),
                so without it the weights learn the base rate instead: the final hidden states
                lose most of their variation across tokens and the discriminator stays at the
                base rate, [CLS]/[SEP] included, for the whole run (ours; the tiny recipe uses
                it).
            tie_encoder: the generator is the discriminator's encoder with its own MLM head
                (the paper's "tie all weights", section 3.2, which scored best there: GLUE
                84.4 against 84.3 for tied embeddings only); the generator's shape is then the
                discriminator's. The encoder learns context from the MLM loss, which at small
                budgets the replaced-token loss alone does not teach (see docs/compare.md).
        """
        super().__init__(encoder=encoder, masking=masking, **kwargs)
        self.tie_encoder = tie_encoder
        self.generator = generator_config(self.encoder, generator)
        if tie_encoder:
            # a checkpoint stores the generator's shape, which is then the encoder's
            if generator is not None and self.generator != self.encoder:
                raise PlmkitError("model.tie_encoder true makes the generator the "
                                  "discriminator's encoder: leave model.generator unset")
            self.generator = self.encoder
        self.hparams["generator"] = asdict(self.generator)  # resolved, as encoder
        self.temperature, self.disallow_correct = temperature, disallow_correct
        self.generator_weight = generator_weight
        self.discriminator_weight = discriminator_weight
        self.discriminator_prior_init = discriminator_prior_init

    def build_model(self) -> ElectraPretrainingModel:
        discriminator, generator = (
            self.hf_config(ElectraConfig, tower, embedding_size=tower.embedding_size,
                           tie_word_embeddings=True) for tower in (self.encoder, self.generator)
        )
        model = ElectraPretrainingModel(discriminator, generator, self.temperature,
                                        self.disallow_correct, self.tie_encoder)
        if self.discriminator_prior_init:
            p = self.masking.probability
            bias = model.discriminator.discriminator_predictions.dense_prediction.bias
            with torch.no_grad():
                bias.fill_(math.log(p / (1.0 - p)))
        return model

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        out: ElectraOutput = self.model(batch["input_ids"], batch["attention_mask"],
                                        batch["labels"], batch.get("token_type_ids"))
        loss = self.generator_weight * out.mlm_loss + self.discriminator_weight * out.disc_loss
        metrics = {
            "mlm_loss": out.mlm_loss.detach(),
            "mlm_acc": out.mlm_accuracy,
            "disc_loss": out.disc_loss.detach(),
            **discriminator_metrics(out, self._judged_tokens(batch, out)),
        }
        return loss, metrics

    def _judged_tokens(self, batch: dict[str, Tensor], out: ElectraOutput) -> Tensor:
        """(batch, length) bool: the real tokens that are not special tokens, the ones a
        replacement can hit ([CLS], [SEP] and the separators are always original)."""
        assert self.tokenizer is not None
        original = torch.where(out.masked, batch["labels"], batch["input_ids"])
        special = torch.tensor(self.tokenizer.all_special_ids, device=original.device)
        return out.real & ~torch.isin(original, special)

    def export_model(self) -> nn.Module:
        """The discriminator (``ElectraForPreTraining``): what ELECTRA fine-tunes."""
        assert self.model is not None
        return self.model.discriminator  # type: ignore[return-value]

    def pretrained_modules(self) -> dict[str, nn.Module]:
        """``init_from`` loads the discriminator from the folder and the generator from its
        ``generator/`` subfolder (``plmkit export --generator``); without one, the generator
        starts fresh. The shared embeddings come from the discriminator."""
        assert self.model is not None
        return {"": self.model.discriminator, "generator": self.model.generator}

    def export(self, out_dir: str | Path, generator: bool = False, **options: Any) -> None:
        """Write the discriminator and the tokenizer to ``out_dir``; with ``generator=True``
        also the generator (``ElectraForMaskedLM``) and the tokenizer to ``out_dir/generator``.

        Each tower is saved with its own copy of the shared embeddings.
        """
        super().export(out_dir)  # the discriminator (export_model) and the tokenizer
        if generator:
            assert self.model is not None and self.tokenizer is not None
            self.model.generator.save_pretrained(str(Path(out_dir) / "generator"))
            self.tokenizer.save_pretrained(str(Path(out_dir) / "generator"))
