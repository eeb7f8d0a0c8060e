"""ERNIE 1.0's collator: knowledge masking of whole phrases and entities (Sun et al. 2019).

ERNIE masks a **phrase or a named entity as one unit** (all of its tokens or none), in stages:
basic-level (word) masking first, then phrase-level, then entity-level. Here:

* **Spans** come from a lexicon matched on the fly
  (:class:`~plmkit.plugins.ernie.lexicon.PhraseMatcher`; default: the bundled WordNet lexicon,
  ``person`` / ``location`` / ``group`` entries are entities, the others phrases) or from an
  example's own ``entity_spans`` / ``phrase_spans``: (num_spans, 2) long tensors of token
  ``[start, end)`` offsets into its ``input_ids``, clipped to them (such an example is **not**
  matched against the lexicon). With ``--data.entity_field`` the data pipeline maps a
  jsonl/parquet field of character-offset spans to per-token ``entity_ids`` (-1 outside),
  whose runs of one id are the example's ``entity_spans``. A precomputed span that the pair
  building cuts (truncation, the A/B split) is dropped, and so is a phrase that overlaps an
  entity. A span that starts inside a word is merged with that word's head.
* **Levels**: every row draws one level from the current *mix* ``{token: a, phrase: b,
  entity: c}`` (ERNIE's released reader likewise decides per sentence between word- and
  char-level masking). ``token``: only basic units. ``phrase``: each matched phrase is one
  unit, every other token keeps its basic unit. ``entity``: each matched entity is one unit,
  the rest (phrases included) basic units. Basic units are whole words (``masking.whole_word``,
  the default here: the paper's "basic language unit" for English) or single tokens.
* **Budget**: units are drawn uniformly in random order (ERNIE's reader picks each segment
  with the same probability whatever its length) under BERT's exact budget ``min(max_pred,
  max(1, round(0.15 n)))`` with :func:`~plmkit.plugins.ernie.lexicon.select_units` (whole units
  only, a unit that does not fit is skipped and the next tried), or Bernoulli(0.15) per unit
  with ``masking.exact_count=False`` (the reader's rule). 80/10/10 is decided per token, as
  in the reader.

**Schedule.** ``level_schedule`` is a list of ``(start_step, mix)``; the mix in force is the
last one whose start step is <= the collator's *step*. plmkit's loader calls
:meth:`ErnieCollator.set_step` with the exact optimizer step that will train on each batch,
in the worker that builds it (see :mod:`plmkit.data.loader`), so the schedule is exact however
far ahead the workers prefetch, and across a resume. A collator used outside plmkit follows
the schedule if its caller does the same: ``set_step`` before each batch in the process that
collates, or, with a DataLoader whose workers collate, a shared ``step_counter`` tensor
(``torch.zeros(1, dtype=torch.long).share_memory_()``, created before the workers start) that
the training loop updates (e.g. a HF ``TrainerCallback.on_step_begin``); a value given by
``set_step`` wins over the counter.

Importable without Lightning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from plmkit import masking as masking_ops
from plmkit.config import MaskingConfig, SpecialTokens
from plmkit.errors import PlmkitError
from plmkit.mlm import MlmCollator
from plmkit.plugins.ernie.lexicon import (
    ENTITY,
    PHRASE,
    LexiconSource,
    PhraseMatcher,
    complete_runs,
    select_units,
    span_units,
    spans_from_offsets,
)
from plmkit.segments import Segments

LEVELS: tuple[str, ...] = ("token", "phrase", "entity")
TOKEN, PHRASE_LEVEL, ENTITY_LEVEL = 0, 1, 2


def mix_vector(mix: Mapping[str, float] | None) -> Tensor:
    """A level mix as normalised probabilities ``(token, phrase, entity)`` (float64).

    ``None`` is the uniform mix. Missing levels weigh 0; unknown names are an error.
    """
    if mix is None:
        return torch.full((3,), 1.0 / 3, dtype=torch.float64)
    unknown = set(mix) - set(LEVELS)
    if unknown:
        raise ValueError(f"unknown masking level(s) {sorted(unknown)}; use {list(LEVELS)}")
    weights = torch.tensor([float(mix.get(level, 0.0)) for level in LEVELS], dtype=torch.float64)
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"a level mix needs non-negative weights with a positive sum: {mix}")
    return weights / weights.sum()


def _schedule(
    schedule: Sequence[Sequence[Any]] | None,
) -> list[tuple[int, Tensor]]:
    out = []
    for entry in schedule or []:
        if len(entry) != 2:
            raise ValueError(f"a level_schedule entry is (start_step, mix), got {entry!r}")
        out.append((int(entry[0]), mix_vector(entry[1])))
    return sorted(out, key=lambda e: e[0])


def _entity_spans(example: dict[str, Any]) -> Tensor | None:
    """An example's ``entity_spans``, or the runs of one id in its ``entity_ids``."""
    spans = example.get("entity_spans")
    ids = example.get("entity_ids")
    if spans is not None or ids is None:
        return spans
    ids = torch.as_tensor(ids)
    inside = ids >= 0
    before = torch.cat([torch.tensor([-1]), ids[:-1]])
    after = torch.cat([ids[1:], torch.tensor([-1])])
    starts = torch.nonzero(inside & (ids != before)).squeeze(1)
    ends = torch.nonzero(inside & (ids != after)).squeeze(1) + 1
    return torch.stack([starts, ends], dim=1)


class ErnieCollator(MlmCollator):
    """Phrase- and entity-level masking (ERNIE 1.0) on top of BERT's inputs and corruption.

    Takes the arguments of :class:`~plmkit.mlm.MlmCollator`; ``masking.whole_word``
    (default true here) makes the basic units outside spans whole words, else single tokens.

    Args:
        lexicon: the phrases and entities: None (the bundled WordNet lexicon), a lexicon file
            path, a list of phrases / ``(phrase, kind)``, a built
            :class:`~plmkit.plugins.ernie.lexicon.PhraseMatcher`, or ``"none"`` / False
            (only precomputed spans).
        max_span_tokens: lexicon entries longer than this many tokens are ignored.
        level_mix: ``{token, phrase, entity}`` weights per row (default uniform).
        level_schedule: ``[(start_step, mix), ...]``; overrides ``level_mix`` from the first
            start step on (see the module docstring for how the step reaches the workers).
        selection_passes: top-up passes of :func:`~plmkit.plugins.ernie.lexicon.select_units`.
        return_spans: also return ``span_start`` (B, L): for tokens of the spans masked as
            one unit in this batch, the position where the span starts (-1 elsewhere). For
            tests and inspection.
        return_level: also return ``masking_level`` (B,): the level each row drew (0 token,
            1 phrase, 2 entity); the objective logs it.
        step_counter: optional shared one-element long tensor holding the training step, for
            DataLoader workers outside plmkit (see the module docstring).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        lexicon: PhraseMatcher | LexiconSource | bool = None,
        max_span_tokens: int = 8,
        masking: MaskingConfig = MaskingConfig(whole_word=True),
        level_mix: Mapping[str, float] | None = None,
        level_schedule: Sequence[Sequence[Any]] | None = None,
        selection_passes: int = 4,
        return_spans: bool = False,
        return_level: bool = False,
        step_counter: Tensor | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(tokenizer, masking=masking, **kwargs)
        if isinstance(lexicon, PhraseMatcher):
            self.matcher: PhraseMatcher | None = lexicon
        elif lexicon is False or lexicon in ("none", "None", ""):
            self.matcher = None
        elif isinstance(tokenizer, SpecialTokens):
            raise PlmkitError("ErnieCollator matches its lexicon with a tokenizer: pass one, "
                              "a built PhraseMatcher as lexicon, or lexicon='none'")
        else:
            self.matcher = PhraseMatcher.from_tokenizer(tokenizer, lexicon, max_span_tokens)
        self.level_mix = mix_vector(level_mix)
        self.level_schedule = _schedule(level_schedule)
        self.selection_passes, self.step_counter = selection_passes, step_counter
        self.return_spans, self.return_level = return_spans, return_level
        self._step: int | None = None

    # ------------------------------------------------------------------ schedule
    def set_step(self, step: int) -> None:
        """Set the training step of the next batches (plmkit's loader: before every batch)."""
        self._step = int(step)

    @property
    def step(self) -> int:
        if self._step is not None:
            return self._step
        return int(self.step_counter[0]) if self.step_counter is not None else 0

    def current_mix(self) -> Tensor:
        """The level probabilities ``(token, phrase, entity)`` at the current step."""
        step, mix = self.step, self.level_mix
        for start, scheduled in self.level_schedule:
            if start <= step:
                mix = scheduled
        return mix

    # ------------------------------------------------------------------ batch
    def spans(self, examples: list[dict[str, Any]], seg: Segments, content: Tensor
              ) -> tuple[Tensor, Tensor]:
        """Per position, the start of the phrase / entity span holding it (-1 outside) and
        its kind: an example's precomputed spans where it has any, else lexicon matches."""
        entity_spans = [_entity_spans(e) for e in examples]
        phrase_spans = [e.get("phrase_spans") for e in examples]
        has = torch.tensor([e is not None or p is not None
                            for e, p in zip(entity_spans, phrase_spans)])
        lengths = [len(e["input_ids"]) for e in examples]
        batch, width = len(examples), max(lengths)
        tag_e, len_e, kind_e = spans_from_offsets(entity_spans, width, [ENTITY] * batch, lengths)
        tag_p, len_p, kind_p = spans_from_offsets(phrase_spans, width, [PHRASE] * batch, lengths)
        entity = tag_e >= 0  # where they overlap, the entity wins
        tag = torch.where(entity, tag_e, torch.where(tag_p >= 0, tag_p + batch * width, -1))
        length, kind = torch.where(entity, len_e, len_p), torch.where(entity, kind_e, kind_p)
        # gathered at the output positions: a span cut by truncation or the A/B split is dropped
        inside, row, col = seg.source_col >= 0, seg.source_row, seg.source_col.clamp(min=0)
        start = complete_runs(torch.where(inside, tag[row, col], -1),
                              torch.where(inside, length[row, col], 0))
        kind = torch.where(start >= 0, kind[row, col], -1)
        precomputed = inside & has[row]
        if self.matcher is None:
            return start, kind
        found = self.matcher.match(seg.input_ids, seg.word_ids, candidates=content & ~precomputed)
        return (torch.where(precomputed, start, found.start),
                torch.where(precomputed, kind, found.kind))

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        seg = self.segments(examples)
        content = self.candidates(seg)
        start, kind = self.spans(examples, seg, content)
        batch, length = content.shape
        level = torch.multinomial(
            self.current_mix(), batch, replacement=True, generator=self.generator
        )
        active = (start >= 0) & (
            ((level == PHRASE_LEVEL).unsqueeze(1) & (kind == PHRASE))
            | ((level == ENTITY_LEVEL).unsqueeze(1) & (kind == ENTITY))
        )
        words = seg.word_ids if self.masking.whole_word else torch.arange(length).expand_as(content)
        units = span_units(torch.where(content, words, -1), start, active)
        if self.masking.exact_count:
            selected = select_units(content, units, self.budgets(content), self.generator,
                                    self.selection_passes)
        else:
            selected = masking_ops.select_bernoulli(content, self.masking.probability,
                                                    self.generator, units)
        out = self.masked_batch(seg, selected)
        if self.return_spans:
            out["span_start"] = torch.where(active, start, -1)
        if self.return_level:
            out["masking_level"] = level
        return out
