"""The masked-LM collator the BERT family builds on: BERT-style inputs, a budget, 80/10/10.

:class:`MlmCollator` turns raw examples (see :mod:`plmkit.collator`) into
``[CLS] A [SEP] (B [SEP])`` inputs (:func:`plmkit.segments.build_segments`: single segments,
or sentence pairs and their label with a sentence task), chooses the positions to predict
(:meth:`~MlmCollator.select`) and corrupts them (:func:`plmkit.masking.corrupt`). Its
defaults are BERT's (google-research/bert ``create_pretraining_data.py``). A method's collator
subclasses it and states only what its method changes: the budget (RoBERTa, SpanBERT), the
selection (ALBERT, SpanBERT, ERNIE), extra fields (SpanBERT, StructBERT, ERNIE), a label's
name (ALBERT, StructBERT) or a default (ELECTRA). Importable without Lightning.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from plmkit import masking as masking_ops
from plmkit.collator import Collator
from plmkit.config import MaskingConfig, SpecialTokens
from plmkit.errors import PlmkitError
from plmkit.segments import Segments, SentenceTask, build_segments, example_doc_ids


def default_max_predictions(max_length: int, probability: float) -> int:
    """``max_length * probability`` rounded up to a multiple of 10: 20 at 128, 80 at 512.

    The values of BERT's instructions for its ``max_predictions_per_seq`` flag (10 at 64, 40
    at 256, 160 at 1024); never below ``round(max_length * probability)``, so the default cap
    never cuts a full-length row's budget.
    """
    return 10 * math.ceil(round(max_length * probability / 10, 9))  # 200 * 0.15 -> 30, not 40


class MlmCollator(Collator):
    """Masked-LM batches: ``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels``
    (the original id where a position is predicted, -100 elsewhere) and, with a sentence
    task, ``next_sentence_label``.

    Args:
        tokenizer: a Hugging Face tokenizer with [CLS]/[SEP]/[PAD]/[MASK], or its
            :class:`~plmkit.config.SpecialTokens`.
        max_length: the longest model input (special tokens included); longer examples are cut.
        masking: which tokens are predicted and how (:class:`~plmkit.config.MaskingConfig`;
            ``whole_word`` needs ``word_ids`` in the examples).
        sentence_task: ``"nsp"`` (BERT), ``"sop"`` (ALBERT), ``"sso"`` (StructBERT) or None
            (single segments); see :mod:`plmkit.segments`.
        short_seq_prob: probability of a shorter random target length.
        skip_inner_specials: never select special tokens found inside the examples (the
            separators of documents packed into one block); off by default, where only the
            ``[CLS]``/``[SEP]`` the collator adds are excluded.
        pad_to_max_length: pad every batch to ``max_length`` instead of its longest row.
        seed, generator: the collator's randomness (see :class:`plmkit.collator.Collator`).
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: int = 128,
        masking: MaskingConfig = MaskingConfig(),
        sentence_task: SentenceTask | None = "nsp",
        short_seq_prob: float = 0.1,
        skip_inner_specials: bool = False,
        pad_to_max_length: bool = False,
        seed: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(seed, generator)
        self.num_special_tokens = 3 if sentence_task else 2  # [CLS] A [SEP] (B [SEP])
        if max_length <= self.num_special_tokens:
            raise PlmkitError(f"max_length {max_length} leaves no room for tokens besides "
                              f"[CLS] and [SEP]: use a larger max_length")
        self.tokens = SpecialTokens.from_tokenizer(tokenizer)
        self.max_length, self.masking = max_length, masking
        self.max_predictions = masking.max_predictions or default_max_predictions(
            max_length, masking.probability
        )
        self.sentence_task, self.short_seq_prob = sentence_task, short_seq_prob
        self.skip_inner_specials, self.pad_to_max_length = skip_inner_specials, pad_to_max_length
        self.special_ids = torch.tensor(self.tokens.all, dtype=torch.long)
        self.random_ids = masking_ops.non_special_ids(self.tokens.vocab_size, self.tokens.all)

    def segments(self, examples: list[dict[str, Any]]) -> Segments:
        """Pad raw examples, cut them to fit, build ``[CLS] A [SEP] (B [SEP])`` inputs."""
        room = self.max_length - self.num_special_tokens
        ids = self.pad(examples, "input_ids", self.tokens.pad)[:, :room]
        lengths = torch.tensor([min(len(e["input_ids"]), room) for e in examples])
        return build_segments(
            ids, lengths, self.pad(examples, "word_ids", -1)[:, :room],
            self.pad(examples, "sentence_ids", -1)[:, :room], self.generator, self.tokens.cls,
            self.tokens.sep, self.tokens.pad, self.sentence_task, self.short_seq_prob,
            doc_ids=example_doc_ids(examples, room),
            pad_to=self.max_length if self.pad_to_max_length else None,
        )

    def candidates(self, seg: Segments) -> Tensor:
        """(B, L) bool, the positions that may be predicted: real tokens, not special ones."""
        candidates = seg.attention_mask.bool() & ~seg.special_mask
        if self.skip_inner_specials:
            candidates &= ~torch.isin(seg.input_ids, self.special_ids)
        return candidates

    def budgets(self, candidates: Tensor, num_tokens: Tensor | None = None) -> Tensor:
        """BERT's exact count per row, ``min(max_predictions, max(1, round(n * p)))`` for
        ``n = num_tokens`` (the whole input, special tokens included, as the reference's
        ``len(tokens)``; default: the number of candidates); 0 for a row without candidates."""
        num_candidates = candidates.sum(dim=1)
        n = num_candidates if num_tokens is None else num_tokens
        counts = masking_ops.exact_counts(n, self.masking.probability, self.max_predictions)
        return torch.where(num_candidates > 0, counts, 0)

    def select(self, candidates: Tensor, word_ids: Tensor,
               num_tokens: Tensor | None = None) -> Tensor:
        """(B, L) bool, the positions to predict: :meth:`budgets` of them (or Bernoulli(p)
        each without ``exact_count``), whole words with ``whole_word``."""
        units = word_ids if self.masking.whole_word else None
        if self.masking.exact_count:
            counts = self.budgets(candidates, num_tokens)
            return masking_ops.select_exact(candidates, counts, self.generator, units)
        return masking_ops.select_bernoulli(candidates, self.masking.probability,
                                            self.generator, units)

    def masked_batch(self, seg: Segments, selected: Tensor,
                     unit_ids: Tensor | None = None) -> dict[str, Tensor]:
        """Corrupt the ``selected`` positions of ``seg`` (per unit with ``unit_ids``, else per
        token) and return the batch."""
        input_ids, labels = masking_ops.corrupt(
            seg.input_ids, selected, self.generator, self.tokens.mask, self.random_ids,
            self.masking.mask_rate, self.masking.random_rate, unit_ids=unit_ids,
        )
        batch = {
            "input_ids": input_ids,
            "attention_mask": seg.attention_mask,
            "token_type_ids": seg.token_type_ids,
            "labels": labels,
        }
        if seg.sentence_label is not None:
            batch["next_sentence_label"] = seg.sentence_label
        return batch

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        seg = self.segments(examples)
        selected = self.select(self.candidates(seg), seg.word_ids, seg.attention_mask.sum(dim=1))
        return self.masked_batch(seg, selected)
