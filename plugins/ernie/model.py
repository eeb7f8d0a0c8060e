"""The ERNIE 1.0 objective: BERT's model and loss with knowledge (phrase / entity) masking.

The model and the losses are BERT's (``BertForPreTraining``: masked LM, plus next-sentence
prediction or sentence-order prediction on the 2-way ``cls.seq_relationship`` head, or no
sentence task); only the collator differs (:class:`~plmkit.plugins.ernie.ErnieCollator`).
Export is BERT's: ``AutoModel`` / ``AutoModelForPreTraining`` load it.

The masking-level schedule (``level_schedule``) follows the optimizer step: plmkit's loader
gives the collator the exact step of every batch (see the collator's docstring). Precomputed
entity spans come from the corpus with ``--data.entity_field``.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from plmkit.lexicon import PhraseMatcher
from plmkit.plugins.bert.model import BertObjective
from plmkit.plugins.ernie.collator import ErnieCollator, _schedule, mix_vector


class ErnieObjective(BertObjective):
    """ERNIE 1.0: phrase- and entity-level masking in stages + BERT's MLM (Sun+ 2019)."""

    objective_name = "ernie"
    packing = "document"

    def __init__(
        self,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        intermediate_size: int = 3072,
        dropout: float = 0.1,
        max_position_embeddings: int = 512,
        mlm_probability: float = 0.15,
        exact_count: bool = True,
        max_predictions: int | None = None,
        sentence_task: Literal["nsp", "sop"] | None = "nsp",
        short_seq_prob: float = 0.1,
        lexicon: str | None = None,
        max_span_tokens: int = 8,
        basic_unit: Literal["word", "token"] = "word",
        level_mix: dict[str, float] | None = None,
        level_schedule: list[tuple[int, dict[str, float]]] | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            hidden_size: width of the encoder.
            num_layers: number of transformer layers.
            num_heads: attention heads per layer.
            intermediate_size: feed-forward width.
            dropout: dropout of hidden states and attention.
            max_position_embeddings: learned positions (at least data.max_length).
            mlm_probability: fraction of tokens to predict (whole units, 80/10/10 per token).
            exact_count: BERT's exact per-sequence budget (else Bernoulli per unit, as the
                ERNIE reader does).
            max_predictions: cap on the exact budget (default ceil(max_length * p)).
            sentence_task: ``nsp``, ``sop`` or null (MLM only).
            short_seq_prob: probability of a shorter random sequence length.
            lexicon: phrase/entity lexicon: null = the bundled WordNet lexicon, a file path
                (``phrase<TAB>kind`` or one phrase per line; kind ``phrase`` is a phrase, any
                other kind an entity), or ``none`` (precomputed ``entity_spans`` only).
            max_span_tokens: lexicon entries longer than this many tokens are ignored.
            basic_unit: ``word`` (whole-word masking outside spans) or ``token``.
            level_mix: per-row probabilities of the levels ``token`` / ``phrase`` /
                ``entity`` (default uniform); used before the first schedule entry.
            level_schedule: ``[[start_step, {token: a, phrase: b, entity: c}], ...]``: the mix
                from each start step on (ERNIE's stages: basic, then phrase, then entity).
        """
        super().__init__(
            hidden_size=hidden_size,
            num_layers=num_layers,
            num_heads=num_heads,
            intermediate_size=intermediate_size,
            dropout=dropout,
            max_position_embeddings=max_position_embeddings,
            mlm_probability=mlm_probability,
            exact_count=exact_count,
            max_predictions=max_predictions,
            whole_word=basic_unit == "word",
            nsp=sentence_task is not None,
            short_seq_prob=short_seq_prob,
            **kwargs,
        )
        # ``nsp`` / ``whole_word`` are BertObjective arguments this objective sets itself:
        # keep them out of the saved hyperparameters (the checkpoint rebuilds from those)
        for name in ("nsp", "whole_word"):
            self.hparams.pop(name, None)
        if sentence_task not in ("nsp", "sop", None):
            raise ValueError(f"sentence_task must be nsp, sop or null, got {sentence_task!r}")
        mix_vector(level_mix)  # validate early
        _schedule(level_schedule)
        self.sentence_task = sentence_task
        self.lexicon, self.max_span_tokens = lexicon, max_span_tokens
        self.basic_unit = basic_unit
        self.level_mix, self.level_schedule = level_mix, level_schedule
        self._matcher: PhraseMatcher | None = None

    def matcher(self) -> PhraseMatcher | None:
        """The lexicon matcher for ``self.tokenizer`` (built once, shared by the collators)."""
        if self._matcher is None and self.lexicon not in ("none", "None", ""):
            self._matcher = PhraseMatcher.from_tokenizer(
                self.tokenizer, self.lexicon, self.max_span_tokens
            )
        return self._matcher

    def build_collator(self, seed: int = 0) -> ErnieCollator:
        return ErnieCollator.from_tokenizer(
            self.tokenizer,
            matcher=self.matcher(),
            max_length=self.max_length,
            mlm_probability=self.mlm_probability,
            exact_count=self.exact_count,
            max_predictions=self.max_predictions,
            sentence_task=self.sentence_task,
            short_seq_prob=self.short_seq_prob,
            basic_unit=self.basic_unit,
            level_mix=self.level_mix,
            level_schedule=self.level_schedule,
            return_level=True,
            seed=seed,
        )

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        level = batch.pop("masking_level", None)
        loss, metrics = super().compute_loss(batch)
        if level is not None:  # the share of rows masked at each level (follows the schedule)
            metrics["rows_phrase"] = (level == 1).float().mean()
            metrics["rows_entity"] = (level == 2).float().mean()
        return loss, metrics
