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

from plmkit.config import MaskingConfig
from plmkit.plugins.bert.model import BertObjective
from plmkit.plugins.ernie.collator import ErnieCollator, _schedule, mix_vector
from plmkit.plugins.ernie.lexicon import PhraseMatcher


class ErnieObjective(BertObjective):
    """ERNIE 1.0: phrase- and entity-level masking in stages + BERT's MLM (Sun+ 2019)."""

    objective_name = "ernie"
    collator_class = ErnieCollator

    def __init__(
        self,
        masking: MaskingConfig = MaskingConfig(whole_word=True),
        sentence_task: Literal["nsp", "sop"] | None = "nsp",
        lexicon: str | None = None,
        max_span_tokens: int = 8,
        level_mix: dict[str, float] | None = None,
        level_schedule: list[tuple[int, dict[str, float]]] | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            masking: as BERT's, on whole units (a unit is predicted whole or not at all);
                ``whole_word`` (default true here) makes the units outside phrases and
                entities whole words, else single tokens; ``exact_count: false`` draws
                Bernoulli per unit, as the ERNIE reader does.
            sentence_task: ``nsp``, ``sop`` or null (MLM only).
            lexicon: phrase/entity lexicon: null = the bundled WordNet lexicon, a file path
                (``phrase<TAB>kind`` or one phrase per line; kind ``phrase`` is a phrase, any
                other kind an entity), or ``none`` (precomputed ``entity_spans`` only).
            max_span_tokens: lexicon entries longer than this many tokens are ignored.
            level_mix: per-row probabilities of the levels ``token`` / ``phrase`` /
                ``entity`` (default uniform); used before the first schedule entry.
            level_schedule: ``[[start_step, {token: a, phrase: b, entity: c}], ...]``: the mix
                from each start step on (ERNIE's stages: basic, then phrase, then entity).
        """
        super().__init__(masking=masking, nsp=sentence_task is not None, **kwargs)
        if sentence_task not in ("nsp", "sop", None):
            raise ValueError(f"sentence_task must be nsp, sop or null, got {sentence_task!r}")
        mix_vector(level_mix)  # validate early
        _schedule(level_schedule)
        self.sentence_task = sentence_task
        self.lexicon, self.max_span_tokens = lexicon, max_span_tokens
        self.level_mix, self.level_schedule = level_mix, level_schedule
        self._matcher: PhraseMatcher | None = None  # built once, shared by the collators

    def collator_options(self) -> dict[str, Any]:
        # BERT's (short_seq_prob; with stream packing the separators inside a block are
        # never masked), then ERNIE's own
        return {**super().collator_options(),
                "lexicon": self._matcher if self._matcher is not None else self.lexicon,
                "max_span_tokens": self.max_span_tokens, "sentence_task": self.sentence_task,
                "level_mix": self.level_mix, "level_schedule": self.level_schedule,
                "return_level": True}

    def build_collator(self, seed: int = 0) -> ErnieCollator:
        collator: ErnieCollator = super().build_collator(seed)  # type: ignore[assignment]
        self._matcher = collator.matcher
        return collator

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        level = batch.pop("masking_level", None)
        loss, metrics = super().compute_loss(batch)
        if level is not None:  # the share of rows masked at each level (follows the schedule)
            metrics["rows_phrase"] = (level == 1).float().mean()
            metrics["rows_entity"] = (level == 2).float().mean()
        return loss, metrics
