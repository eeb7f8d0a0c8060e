"""Build ``[CLS] A [SEP] B [SEP]`` inputs and sentence-level labels, vectorized over a batch.

Shared by the sentence objectives: BERT's next-sentence prediction (NSP), ALBERT's sentence
order prediction (SOP) and StructBERT's 3-way sentence structural objective. Each packed
example is split at a random sentence boundary into A and B; then, per row,

* ``nsp``: label 0 = B is A's continuation (50%), 1 = B comes from another document;
* ``sop``: label 0 = A then B in order (50%), 1 = swapped (B then A);
* ``sso``: label 0 = next (1/3), 1 = previous, i.e. swapped (1/3), 2 = other document (1/3).

"Another document" is another example of the same batch. The pair is cut to a target length
(with probability ``short_seq_prob`` a random shorter one, as BERT does) by trimming A from its
front and B from its back *before* a swap, so the junction of A and B stays intact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

SentenceTask = Literal["nsp", "sop", "sso"]


@dataclass
class Segments:
    """Model inputs built from raw examples; ``word_ids`` is -1 on special tokens."""

    input_ids: Tensor
    token_type_ids: Tensor
    attention_mask: Tensor
    special_mask: Tensor
    word_ids: Tensor
    sentence_label: Tensor | None


def _random_choice_in_mask(mask: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One uniformly random True position per row; ``found`` is False where a row has none."""
    keys = torch.rand(mask.shape, generator=generator).masked_fill(~mask, -1.0)
    return keys.argmax(dim=1), mask.any(dim=1)


def build_segments(
    ids: Tensor,
    lengths: Tensor,
    word_ids: Tensor,
    sentence_ids: Tensor,
    generator: torch.Generator,
    cls_id: int,
    sep_id: int,
    pad_id: int,
    task: SentenceTask | None = None,
    short_seq_prob: float = 0.0,
) -> Segments:
    """Turn raw rows (B, L) into model inputs, as single segments or sentence pairs."""
    batch, width = ids.shape
    rows = torch.arange(batch)
    target = lengths.clone()
    if short_seq_prob > 0:
        short = torch.rand(batch, generator=generator) < short_seq_prob
        spread = (lengths - 1).clamp(min=1)
        random_len = 2 + (torch.rand(batch, generator=generator) * spread).long()
        target = torch.where(short, torch.minimum(random_len, lengths), lengths).clamp(min=1)

    if task is None:
        first_row, first_start, a = rows, torch.zeros_like(lengths), target
        second_row, second_start, b = rows, torch.zeros_like(lengths), torch.zeros_like(lengths)
        label = None
    else:
        # split point: a random sentence boundary, else a random token boundary
        pos = torch.arange(width).unsqueeze(0)
        boundary = (pos >= 1) & (pos < lengths.unsqueeze(1) - 0)
        boundary &= sentence_ids != torch.roll(sentence_ids, 1, dims=1)
        split, found = _random_choice_in_mask(boundary, generator)
        any_split = (torch.rand(batch, generator=generator) * (lengths - 1).clamp(min=1)).long() + 1
        split = torch.where(found, split, any_split).clamp(max=(lengths - 1).clamp(min=1))
        classes = {"nsp": 2, "sop": 2, "sso": 3}[task]
        label = torch.randint(classes, (batch,), generator=generator)
        other_doc = (label == 1) if task == "nsp" else (label == 2)
        swapped = (label == 1) if task in ("sop", "sso") else torch.zeros_like(other_doc)
        if batch < 2:  # no other example to draw from
            other_doc = torch.zeros_like(other_doc)
            label = torch.where(label == (1 if task == "nsp" else 2), 0, label)
        shift = torch.randint(1, max(batch, 2), (batch,), generator=generator)
        other = (rows + shift) % batch
        # In reading order: A = row[:split]; B = row[split:] or the start of another row.
        # Trim to the target first (A from its front, B from its back, so their junction
        # survives), then swap the trimmed segments for the "previous"/SOP-swapped rows.
        a_len = split
        t = torch.maximum(target, torch.full_like(target, 2))
        # a random-document B only fills what A leaves of the target, as in BERT
        b_len = torch.where(
            other_doc, torch.minimum(lengths[other], (t - a_len).clamp(min=1)), lengths - split
        )
        half = t // 2
        keep_a = torch.where(
            a_len + b_len <= t,
            a_len,
            torch.where(b_len >= half, torch.minimum(a_len, t - half), t - b_len),
        ).clamp(min=1)
        keep_b = torch.minimum(b_len, t - keep_a).clamp(min=1)
        a_start = split - keep_a
        b_row = torch.where(other_doc, other, rows)
        b_start = torch.where(other_doc, torch.zeros_like(split), split)
        first_row = torch.where(swapped, b_row, rows)
        first_start = torch.where(swapped, b_start, a_start)
        second_row = torch.where(swapped, rows, b_row)
        second_start = torch.where(swapped, a_start, b_start)
        a = torch.where(swapped, keep_b, keep_a)
        b = torch.where(swapped, keep_a, keep_b)

    total = a + b + torch.where(b > 0, 3, 2) if task is not None else a + 2
    out_width = int(total.max())
    p = torch.arange(out_width).unsqueeze(0).expand(batch, -1)
    a_, b_ = a.unsqueeze(1), b.unsqueeze(1)
    in_first = (p >= 1) & (p <= a_)
    in_second = (p >= a_ + 2) & (p < a_ + 2 + b_)
    src_row = torch.where(in_second, second_row.unsqueeze(1), first_row.unsqueeze(1))
    src_col = torch.where(
        in_second, second_start.unsqueeze(1) + p - a_ - 2, first_start.unsqueeze(1) + p - 1
    ).clamp(0, width - 1)
    content = in_first | in_second
    gathered = ids[src_row, src_col]
    words = word_ids[src_row, src_col] + torch.where(in_second, width, 0)
    is_sep = (p == a_ + 1) | ((b_ > 0) & (p == a_ + 2 + b_))
    valid = p < total.unsqueeze(1)
    input_ids = torch.full((batch, out_width), pad_id, dtype=torch.long)
    input_ids = torch.where(content, gathered, input_ids)
    input_ids = torch.where(is_sep, sep_id, input_ids)
    input_ids[:, 0] = cls_id
    token_type = ((p >= a_ + 2) & valid).long()
    return Segments(
        input_ids=input_ids,
        token_type_ids=token_type,
        attention_mask=valid.long(),
        special_mask=valid & ~content,
        word_ids=torch.where(content, words, torch.full_like(words, -1)),
        sentence_label=label,
    )
