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
* Discriminator loss: sigmoid BCE over every real token ([CLS]/[SEP] included).
  Loss = ``generator_weight`` x MLM + ``discriminator_weight`` x BCE (1.0 and 50.0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining
from transformers.models.electra.modeling_electra import ElectraLayer

from plmkit.collator import IGNORE_INDEX
from plmkit.heads import masked_lm_loss
from plmkit.objective import Objective
from plmkit.plugins.electra.collator import ElectraCollator


def gumbel_sample(logits: Tensor, temperature: float = 1.0,
                  generator: torch.Generator | None = None) -> Tensor:
    """Gumbel-max sample of one token per row of ``logits`` (n, vocab); no gradient.

    The noise is the original's ``-log(-log(u + 1e-9) + 1e-9)`` with ``u ~ U[0, 1)``.
    """
    with torch.no_grad():
        logits = logits.detach().float() / temperature
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
    ) -> None:
        super().__init__()
        for key in ("vocab_size", "embedding_size", "max_position_embeddings",
                    "type_vocab_size", "pad_token_id"):
            if getattr(discriminator_config, key) != getattr(generator_config, key):
                raise ValueError(f"generator and discriminator must agree on {key} to share "
                                 "their embeddings")
        self.discriminator = ElectraForPreTraining(discriminator_config)
        self.generator = ElectraForMaskedLM(generator_config)
        self.temperature = temperature
        self.disallow_correct = disallow_correct
        self.share_embeddings()

    def share_embeddings(self) -> None:
        """Make the generator use the discriminator's embedding module and tie its output."""
        shared = self.discriminator.electra.embeddings
        self.generator.electra.embeddings = shared
        self.generator.generator_lm_head.weight = shared.word_embeddings.weight

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

        sample_logits = logits.detach().float()
        if self.disallow_correct:
            sample_logits = sample_logits.scatter_add(
                1, labels[masked].unsqueeze(1),
                torch.full((len(sample_logits), 1), -1000.0, device=logits.device),
            )
        sampled = gumbel_sample(sample_logits, self.temperature)
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


def discriminator_metrics(out: ElectraOutput) -> dict[str, Tensor]:
    """Accuracy over real tokens, precision / recall on replaced tokens, replaced fraction."""
    with torch.no_grad():
        pred = out.disc_logits[out.real] > 0
        target = out.is_replaced[out.real]
        tp = (pred & target).sum().float()
        return {
            "disc_acc": (pred == target).float().mean(),
            "disc_precision": tp / pred.sum().clamp(min=1),
            "disc_recall": tp / target.sum().clamp(min=1),
            "replaced_frac": target.float().mean(),
            # share of the generator's samples that equal the original token
            "sampled_acc": 1.0 - out.is_replaced[out.masked].float().mean(),
        }


class ElectraObjective(Objective):
    """ELECTRA: replaced-token detection with a jointly trained generator (Clark et al. 2020)."""

    objective_name = "electra"
    packing = "stream"

    def __init__(
        self,
        hidden_size: int = 256,
        num_layers: int = 12,
        num_heads: int = 4,
        intermediate_size: int = 1024,
        embedding_size: int = 128,
        generator_hidden_size: int | None = None,
        generator_num_heads: int | None = None,
        generator_intermediate_size: int | None = None,
        generator_num_layers: int | None = None,
        dropout: float = 0.1,
        max_position_embeddings: int = 512,
        mlm_probability: float = 0.15,
        max_predictions: int | None = None,
        mask_rate: float = 0.85,
        temperature: float = 1.0,
        disallow_correct: bool = False,
        generator_weight: float = 1.0,
        discriminator_weight: float = 50.0,
        discriminator_prior_init: bool = False,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            hidden_size: width of the discriminator.
            num_layers: discriminator layers.
            num_heads: discriminator attention heads.
            intermediate_size: discriminator feed-forward width.
            embedding_size: width of the shared token/position/type embeddings (each tower
                projects it to its own hidden size when they differ).
            generator_hidden_size: generator width; default hidden_size // 4 (ELECTRA-Small).
            generator_num_heads: generator heads; default max(1, generator_hidden_size // 64).
            generator_intermediate_size: generator feed-forward; default 4 x its hidden size.
            generator_num_layers: generator layers; default the discriminator's depth.
            dropout: dropout of hidden states and attention (both towers).
            max_position_embeddings: learned positions (at least data.max_length).
            mlm_probability: fraction of tokens the generator predicts.
            max_predictions: cap on the per-row budget (default int((p + 0.005) * max_length)).
            mask_rate: share of the chosen tokens replaced by [MASK]; the rest stay unchanged.
            temperature: sampling temperature of the generator's Gumbel-max samples.
            disallow_correct: never sample the original token (an option of the original
                code, off by default).
            generator_weight: weight of the generator's MLM loss (1.0).
            discriminator_weight: weight of the discriminator's BCE loss (50.0).
            discriminator_prior_init: start the discriminator's output bias at the log-odds
                of the replaced rate it will see first, ``log(p / (1 - p))``, instead of 0 (the
                original). This skips the first steps' large "learn the base rate" gradients,
                which otherwise dominate Adam's second moments and stall small models at
                predicting "original" everywhere for hundreds of steps (ours; the tiny
                recipe uses it).
        """
        super().__init__(**kwargs)
        self.hidden_size, self.num_layers, self.num_heads = hidden_size, num_layers, num_heads
        self.intermediate_size, self.embedding_size = intermediate_size, embedding_size
        gen_hidden = generator_hidden_size or max(1, hidden_size // 4)
        self.generator_hidden_size = gen_hidden
        self.generator_num_heads = generator_num_heads or max(1, gen_hidden // 64)
        self.generator_intermediate_size = generator_intermediate_size or 4 * gen_hidden
        self.generator_num_layers = generator_num_layers or num_layers
        self.dropout = dropout
        self.max_position_embeddings = max_position_embeddings
        self.mlm_probability, self.max_predictions = mlm_probability, max_predictions
        self.mask_rate, self.temperature = mask_rate, temperature
        self.disallow_correct = disallow_correct
        self.generator_weight = generator_weight
        self.discriminator_weight = discriminator_weight
        self.discriminator_prior_init = discriminator_prior_init

    def block_length(self, max_length: int) -> int:
        return max_length - 2  # [CLS] x [SEP]

    def _config(self, hidden: int, layers: int, heads: int, ffn: int) -> ElectraConfig:
        assert self.tokenizer is not None
        config = ElectraConfig(
            vocab_size=len(self.tokenizer),
            embedding_size=self.embedding_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=ffn,
            hidden_dropout_prob=self.dropout,
            attention_probs_dropout_prob=self.dropout,
            max_position_embeddings=max(self.max_position_embeddings, self.max_length),
            pad_token_id=self.tokenizer.pad_token_id,
            tie_word_embeddings=True,
        )
        config._attn_implementation = "sdpa"
        return config

    def build_model(self) -> ElectraPretrainingModel:
        discriminator = self._config(
            self.hidden_size, self.num_layers, self.num_heads, self.intermediate_size
        )
        generator = self._config(
            self.generator_hidden_size, self.generator_num_layers, self.generator_num_heads,
            self.generator_intermediate_size,
        )
        model = ElectraPretrainingModel(
            discriminator, generator, self.temperature, self.disallow_correct
        )
        if self.discriminator_prior_init:
            p = self.mlm_probability
            bias = model.discriminator.discriminator_predictions.dense_prediction.bias
            with torch.no_grad():
                bias.fill_(math.log(p / (1.0 - p)))
        return model

    def build_collator(self, seed: int = 0) -> ElectraCollator:
        return ElectraCollator.from_tokenizer(
            self.tokenizer,
            max_length=self.max_length,
            mlm_probability=self.mlm_probability,
            max_predictions=self.max_predictions,
            mask_rate=self.mask_rate,
            random_rate=0.0,
            seed=seed,
        )

    def block_classes(self) -> tuple[type[nn.Module], ...]:
        return (ElectraLayer,)

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        out: ElectraOutput = self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
            token_type_ids=batch.get("token_type_ids"),
        )
        loss = self.generator_weight * out.mlm_loss + self.discriminator_weight * out.disc_loss
        metrics = {
            "mlm_loss": out.mlm_loss.detach(),
            "mlm_acc": out.mlm_accuracy,
            "disc_loss": out.disc_loss.detach(),
            **discriminator_metrics(out),
        }
        return loss, metrics

    def flops_per_token(self, seq_len: int) -> float:
        """Both towers: 6N per token for each encoder (+ attention scores), the discriminator
        head at every token and the generator head (incl. the vocabulary projection) only
        at the ~``mlm_probability`` masked positions."""
        assert self.model is not None
        model: ElectraPretrainingModel = self.model  # type: ignore[assignment]

        def count(module: nn.Module) -> int:
            return sum(p.numel() for p in module.parameters())

        total = 0.0
        for tower in (model.discriminator.electra, model.generator.electra):
            n = count(tower.encoder)
            if hasattr(tower, "embeddings_project"):
                n += count(tower.embeddings_project)
            cfg = tower.config
            total += 6.0 * n + 12.0 * cfg.num_hidden_layers * cfg.hidden_size * seq_len
        total += 6.0 * count(model.discriminator.discriminator_predictions)
        gen_head = count(model.generator.generator_predictions) + count(
            model.generator.generator_lm_head
        )
        total += 6.0 * gen_head * self.mlm_probability
        return total

    def export_model(self) -> nn.Module:
        """The discriminator (``ElectraForPreTraining``): what ELECTRA fine-tunes."""
        assert self.model is not None
        return self.model.discriminator  # type: ignore[return-value]

    def export(self, out_dir: str | Path, generator: bool = False, **options: Any) -> None:
        """Write the discriminator and the tokenizer to ``out_dir``; with ``generator=True``
        also the generator (``ElectraForMaskedLM``) and the tokenizer to ``out_dir/generator``.

        Each tower is saved with its own copy of the shared embeddings.
        """
        assert self.model is not None and self.tokenizer is not None
        out = Path(out_dir)
        self.model.discriminator.save_pretrained(str(out))
        self.tokenizer.save_pretrained(str(out))
        if generator:
            self.model.generator.save_pretrained(str(out / "generator"))
            self.tokenizer.save_pretrained(str(out / "generator"))
