"""BERT's collator: masked-LM corruption (15%, 80/10/10) and next-sentence pairs.

Follows google-research/bert ``create_pretraining_data.py``: an exact budget of
``min(max_predictions, max(1, round(n * 0.15)))`` tokens per sequence by default, where ``n``
is the length of the whole input, ``[CLS]`` and ``[SEP]`` included (the reference's
``len(tokens)``), although those are never chosen (``exact_count=False`` draws Bernoulli(0.15)
per non-special token as Hugging Face does); optional whole-word masking from word ids,
special tokens and padding never masked, and NSP pairs with 50% random-document negatives and
``short_seq_prob``. Importable without Lightning.

``max_predictions`` (the reference's ``max_predictions_per_seq`` flag, which it leaves to the
user) defaults to :func:`default_max_predictions`: ``max_length * probability`` rounded up to
a multiple of 10, the values of the reference's instructions (20 at 128, 80 at 512; 10 at 64,
40 at 256, 160 at 1024). It is never below ``round(max_length * probability)``, so the
default cap never cuts a full-length row's budget.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from plmkit import masking as masking_ops
from plmkit.collator import Collator
from plmkit.config import MaskingConfig, SpecialTokens
from plmkit.segments import SentenceTask, build_segments, example_doc_ids


def default_max_predictions(max_length: int, probability: float) -> int:
    """``max_length * probability`` rounded up to a multiple of 10: 20 at 128, 80 at 512."""
    return 10 * math.ceil(round(max_length * probability / 10, 9))  # 200 * 0.15 -> 30, not 40


class BertCollator(Collator):
    """Masked LM (+ optional sentence task) batches for BERT-style encoders.

    Args:
        tokenizer: a Hugging Face tokenizer with [CLS]/[SEP]/[PAD]/[MASK], or its
            :class:`~plmkit.config.SpecialTokens`.
        max_length: the longest model input (special tokens included).
        masking: which tokens are predicted and how (:class:`~plmkit.config.MaskingConfig`;
            ``whole_word`` needs ``word_ids`` in the examples).
        sentence_task: ``"nsp"`` (BERT), ``"sop"`` (ALBERT), ``"sso"`` (StructBERT) or None.
        short_seq_prob: probability of a shorter random target length.
        skip_inner_specials: never select special tokens found inside the examples (the
            separators of documents packed into one block); off by default, where only the
            ``[CLS]``/``[SEP]`` the collator adds are excluded.
        seed: seed of the collator's generator (see :class:`plmkit.collator.Collator`).
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: int = 128,
        masking: MaskingConfig = MaskingConfig(),
        sentence_task: SentenceTask | None = "nsp",
        short_seq_prob: float = 0.1,
        skip_inner_specials: bool = False,
        seed: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(seed, generator)
        self.tokens = SpecialTokens.from_tokenizer(tokenizer)
        self.skip_inner_specials = skip_inner_specials
        self.special_ids = torch.tensor(self.tokens.all, dtype=torch.long)
        self.max_length, self.masking = max_length, masking
        self.max_predictions = masking.max_predictions or default_max_predictions(
            max_length, masking.probability
        )
        self.sentence_task, self.short_seq_prob = sentence_task, short_seq_prob
        self.num_special_tokens = 3 if sentence_task else 2  # [CLS] A [SEP] (B [SEP])
        self.random_ids = masking_ops.non_special_ids(self.tokens.vocab_size, self.tokens.all)

    def segments(self, examples: list[dict[str, Any]]):
        """Pad raw examples and build ``[CLS] A [SEP] (B [SEP])`` inputs."""
        budget = self.max_length - self.num_special_tokens
        ids = self.pad(examples, "input_ids", self.tokens.pad)[:, :budget]
        lengths = torch.tensor([min(len(e["input_ids"]), budget) for e in examples])
        word_ids = self.pad(examples, "word_ids", -1)[:, :budget]
        sentence_ids = self.pad(examples, "sentence_ids", -1)[:, :budget]
        return build_segments(
            ids, lengths, word_ids, sentence_ids, self.generator, self.tokens.cls,
            self.tokens.sep, self.tokens.pad, self.sentence_task, self.short_seq_prob,
            doc_ids=example_doc_ids(examples, budget),
        )

    def budgets(self, candidates: Tensor, num_tokens: Tensor | None) -> Tensor:
        """The exact count of each row: ``min(max_predictions, max(1, round(n * p)))`` for
        ``n = num_tokens`` (the whole input, special tokens included; default: the number of
        candidates), 0 for a row without candidates."""
        num_candidates = candidates.sum(dim=1)
        n = num_candidates if num_tokens is None else num_tokens
        counts = masking_ops.exact_counts(n, self.masking.probability, self.max_predictions)
        return torch.where(num_candidates > 0, counts, 0)

    def select(self, candidates: Tensor, word_ids: Tensor,
               num_tokens: Tensor | None = None) -> Tensor:
        """Choose the positions to predict (exact count or Bernoulli, words or tokens);
        ``num_tokens`` (B,): the length of each input, for the exact count."""
        units = word_ids if self.masking.whole_word else None
        if self.masking.exact_count:
            counts = self.budgets(candidates, num_tokens)
            return masking_ops.select_exact(candidates, counts, self.generator, units)
        return masking_ops.select_bernoulli(candidates, self.masking.probability,
                                            self.generator, units)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        seg = self.segments(examples)
        candidates = seg.attention_mask.bool() & ~seg.special_mask
        if self.skip_inner_specials:
            candidates &= ~torch.isin(seg.input_ids, self.special_ids)
        selected = self.select(candidates, seg.word_ids, seg.attention_mask.sum(dim=1))
        input_ids, labels = masking_ops.corrupt(
            seg.input_ids, selected, self.generator, self.tokens.mask, self.random_ids,
            self.masking.mask_rate, self.masking.random_rate,
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
