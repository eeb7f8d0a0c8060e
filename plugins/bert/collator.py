"""BERT's collator: masked-LM corruption (15%, 80/10/10) and next-sentence pairs.

Follows google-research/bert ``create_pretraining_data.py``: an exact budget of
``min(max_predictions, max(1, round(n * 0.15)))`` tokens per sequence by default
(``exact_count=False`` draws Bernoulli(0.15) per token as Hugging Face does), optional
whole-word masking from word ids, special tokens and padding never masked, and NSP pairs with
50% random-document negatives and ``short_seq_prob``. Importable without Lightning.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from plmkit import masking
from plmkit.collator import Collator
from plmkit.segments import SentenceTask, build_segments


class BertCollator(Collator):
    """Masked LM (+ optional sentence task) batches for BERT-style encoders.

    Args:
        vocab_size: size of the vocabulary (random replacements are drawn from it).
        cls_token_id, sep_token_id, pad_token_id, mask_token_id: special token ids.
        special_token_ids: ids never drawn as a random replacement.
        max_length: the longest model input (special tokens included).
        mlm_probability: fraction of real tokens to predict.
        exact_count: exact per-sequence budget (original BERT) instead of Bernoulli.
        max_predictions: cap on the exact budget; default ``ceil(max_length * p)`` (20 at 128).
        whole_word: mask whole words (needs ``word_ids`` in the examples).
        mask_rate, random_rate: of the chosen tokens, the share replaced by [MASK] and by a
            random token; the rest stay unchanged (0.8 / 0.1 / 0.1).
        sentence_task: ``"nsp"`` (BERT), ``"sop"`` (ALBERT), ``"sso"`` (StructBERT) or None.
        short_seq_prob: probability of a shorter random target length.
        skip_inner_specials: never select special tokens found inside the examples (the
            separators of documents packed into one block); off by default, where only the
            ``[CLS]``/``[SEP]`` the collator adds are excluded.
        seed: seed of the collator's generator (see :class:`plmkit.collator.Collator`).
    """

    def __init__(
        self,
        vocab_size: int,
        cls_token_id: int,
        sep_token_id: int,
        pad_token_id: int,
        mask_token_id: int,
        special_token_ids: list[int],
        max_length: int = 128,
        mlm_probability: float = 0.15,
        exact_count: bool = True,
        max_predictions: int | None = None,
        whole_word: bool = False,
        mask_rate: float = 0.8,
        random_rate: float = 0.1,
        sentence_task: SentenceTask | None = "nsp",
        short_seq_prob: float = 0.1,
        skip_inner_specials: bool = False,
        seed: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(seed, generator)
        self.skip_inner_specials = skip_inner_specials
        self.special_ids = torch.tensor(sorted(set(special_token_ids)), dtype=torch.long)
        self.cls_id, self.sep_id, self.pad_id, self.mask_id = (
            cls_token_id, sep_token_id, pad_token_id, mask_token_id,
        )
        self.max_length = max_length
        self.mlm_probability, self.exact_count = mlm_probability, exact_count
        self.max_predictions = max_predictions or math.ceil(max_length * mlm_probability)
        self.whole_word = whole_word
        self.mask_rate, self.random_rate = mask_rate, random_rate
        self.sentence_task, self.short_seq_prob = sentence_task, short_seq_prob
        self.random_ids = masking.non_special_ids(vocab_size, special_token_ids)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, **kwargs: Any) -> BertCollator:
        """Build from a Hugging Face tokenizer with [CLS]/[SEP]/[PAD]/[MASK] tokens."""
        return cls(
            vocab_size=len(tokenizer),
            cls_token_id=tokenizer.cls_token_id,
            sep_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id,
            mask_token_id=tokenizer.mask_token_id,
            special_token_ids=list(tokenizer.all_special_ids),
            **kwargs,
        )

    def segments(self, examples: list[dict[str, Any]]):
        """Pad raw examples and build ``[CLS] A [SEP] (B [SEP])`` inputs."""
        budget = self.max_length - (3 if self.sentence_task else 2)
        ids = self.pad(examples, "input_ids", self.pad_id)[:, :budget]
        lengths = torch.tensor([min(len(e["input_ids"]), budget) for e in examples])
        word_ids = self.pad(examples, "word_ids", -1)[:, :budget]
        sentence_ids = self.pad(examples, "sentence_ids", -1)[:, :budget]
        return build_segments(
            ids, lengths, word_ids, sentence_ids, self.generator, self.cls_id, self.sep_id,
            self.pad_id, self.sentence_task, self.short_seq_prob,
        )

    def select(self, candidates: Tensor, word_ids: Tensor) -> Tensor:
        """Choose the positions to predict (exact count or Bernoulli, words or tokens)."""
        units = word_ids if self.whole_word else None
        if self.exact_count:
            counts = masking.exact_counts(
                candidates.sum(dim=1), self.mlm_probability, self.max_predictions
            )
            return masking.select_exact(candidates, counts, self.generator, units)
        return masking.select_bernoulli(candidates, self.mlm_probability, self.generator, units)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        seg = self.segments(examples)
        candidates = seg.attention_mask.bool() & ~seg.special_mask
        if self.skip_inner_specials:
            candidates &= ~torch.isin(seg.input_ids, self.special_ids)
        selected = self.select(candidates, seg.word_ids)
        input_ids, labels = masking.corrupt(
            seg.input_ids, selected, self.generator, self.mask_id, self.random_ids,
            self.mask_rate, self.random_rate,
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
