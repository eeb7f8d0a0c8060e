"""Build ``[CLS] A [SEP] B [SEP]`` inputs and sentence-level labels, vectorized over a batch.

Shared by the sentence objectives: BERT's next-sentence prediction (NSP), ALBERT's sentence
order prediction (SOP) and StructBERT's 3-way sentence structural objective; per row,

* ``nsp``: label 0 = B is A's continuation (50%), 1 = B comes from another document;
* ``sop``: label 0 = A then B in order (50%), 1 = swapped (B then A);
* ``sso``: label 0 = next (1/3), 1 = previous, i.e. swapped (1/3), 2 = other document (1/3).

Pairs are built from whole sentences, as in BERT's and ALBERT's
``create_instances_from_document``, so that where a segment starts or ends tells nothing of
its label. Packed rows hold whole sentences (``document`` packing). A row's *chunk* is its
first sentences up to the target length (with probability ``short_seq_prob`` a random shorter
one, as BERT does; at least two sentences when the row has them); A is the chunk's sentences
before a random sentence start, B the rest. An other-document B starts at a random sentence
start of a row of another document (rows sharing a ``doc_ids`` value are one document;
without ``doc_ids`` every row is its own) whose sentence fits in the room the true B had, and
takes the whole sentences that fit, so it ends on a sentence end too (when no sentence fits
the room, one that fits the batch width; a segment is only ever cut at its back, and only
then). A swap (SOP, StructBERT's "previous") exchanges the two finished segments.

Nothing is trimmed from the front of a segment. BERT's ``truncate_seq_pair`` drops tokens from
the front or the back of the longer segment at random; whichever segment it trims more often
under one label then starts mid-sentence more often under that label, so plmkit never
truncates a pair (whole-sentence rows already fit). A chunk of one sentence (a piece of a
sentence longer than a block, a one-sentence document) has no sentence start to split at: it
is cut at three word starts inside the sentence into A = [x, s) and B = [s, y), x among its
first and y among its last three, and its other-document B starts and ends at word starts
inside a sentence too, so no segment of such a row starts or ends where a sentence does,
whatever the label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from plmkit.collator import Collator
from plmkit.masking import random_choice

SentenceTask = Literal["nsp", "sop", "sso"]


@dataclass
class Segments:
    """Model inputs built from raw examples; ``word_ids`` is -1 on special tokens.

    ``source_row`` / ``source_col``: where each position's token comes from in the raw rows
    (column -1 on special tokens and padding), to gather any per-token field of the examples.
    """

    input_ids: Tensor
    token_type_ids: Tensor
    attention_mask: Tensor
    special_mask: Tensor
    word_ids: Tensor
    sentence_label: Tensor | None
    source_row: Tensor
    source_col: Tensor


def example_doc_ids(examples: Sequence[Mapping[str, Any]], width: int) -> Tensor | None:
    """The examples' ``doc_ids`` as a (B, width) tensor padded with -1, for
    :func:`build_segments`; None when an example has none (every row is then its own
    document)."""
    if not all(example.get("doc_ids") is not None for example in examples):
        return None
    return Collator.pad(examples, "doc_ids", -1)[:, :width]


def _prefer(preferred: Tensor, fallback: Tensor) -> Tensor:
    """Per row, the mask ``preferred`` where it has a True position, else ``fallback``."""
    return torch.where(preferred.any(dim=1, keepdim=True), preferred, fallback)


def _other_rows(lengths: Tensor, doc_ids: Tensor | None, valid: Tensor) -> Tensor:
    """(B, B) True where row o may give row r an other-document segment: its documents
    (a range, as packed rows hold consecutive documents) do not meet row r's."""
    batch = len(lengths)
    if doc_ids is None:
        other = ~torch.eye(batch, dtype=torch.bool)
    else:
        big = torch.iinfo(torch.long).max
        low = torch.where(valid, doc_ids, big).min(dim=1).values
        high = torch.where(valid, doc_ids, -1).max(dim=1).values
        other = (high.unsqueeze(0) < low.unsqueeze(1)) | (low.unsqueeze(0) > high.unsqueeze(1))
    return other & (lengths > 0).unsqueeze(0)


def _last(mask: Tensor, pos: Tensor) -> Tensor:
    """The last True position per row, -1 where there is none."""
    return torch.where(mask, pos, -1).max(dim=1).values


def _pair_sources(
    lengths: Tensor,
    target: Tensor,
    word_ids: Tensor,
    sentence_ids: Tensor,
    doc_ids: Tensor | None,
    generator: torch.Generator,
    task: SentenceTask,
) -> tuple[Tensor, ...]:
    """Where A and B come from: (label, first row, start, length, second row, start, length)."""
    batch, width = word_ids.shape
    rows = torch.arange(batch)
    pos = torch.arange(width + 1).unsqueeze(0)
    valid = pos < lengths.unsqueeze(1)
    edge = torch.full((batch, 1), -2, dtype=torch.long)
    sid = torch.cat([sentence_ids, edge], dim=1)
    wid = torch.cat([word_ids, edge], dim=1)
    first = pos == 0
    # starts: the row start and every sentence start; inner: word starts inside a sentence;
    # bound: where a sentence (or the row) ends
    starts = valid & (first | (sid != torch.cat([edge, sid[:, :-1]], dim=1)))
    inner = valid & (wid != torch.cat([edge, wid[:, :-1]], dim=1)) & ~starts
    bound = (starts & ~first) | (pos == lengths.unsqueeze(1))
    big = width + 1
    at = torch.where(bound, pos, big)
    ahead = torch.flip(torch.flip(at, [1]).cummin(dim=1).values, [1])
    sentence_end = torch.cat([ahead[:, 1:], torch.full((batch, 1), big)], dim=1)

    # the chunk: whole sentences up to the target, at least two when the row has them
    reach = torch.where(pos >= target.unsqueeze(1), at, big).min(dim=1).values
    second = torch.where(bound.cumsum(dim=1) == 2, at, big).min(dim=1).values
    chunk_end = torch.maximum(reach, torch.where(second < big, second, 0))
    chunk_end = torch.minimum(chunk_end, lengths)
    within = (pos > 0) & (pos < chunk_end.unsqueeze(1))
    split, by_sentence = random_choice(starts & within, generator)
    # A one-sentence chunk (no sentence start to split at) is cut at three word starts inside
    # the sentence, x < s < y, into A = [x, s) and B = [s, y), so that neither segment starts
    # (or ends) where the sentence does: x is one of its first three inner word starts, y one
    # of its last three (little is dropped), s a random one between them.
    inner_split = inner & within
    rank = inner_split.cumsum(dim=1)
    count = rank[:, -1]
    u = torch.rand((batch, 3), generator=generator)
    k_x = 1 + (u[:, 0] * (count - 2).clamp(min=1, max=3)).long()
    low_y = torch.maximum(k_x + 2, count - 2)
    k_y = low_y + (u[:, 1] * (count - low_y + 1).clamp(min=1)).long()
    k_s = k_x + 1 + (u[:, 2] * (k_y - k_x - 1).clamp(min=1)).long()
    any_split = 1 + (torch.rand(batch, generator=generator) * (chunk_end - 1).clamp(min=0)).long()

    def inner_at(k: Tensor) -> Tensor:
        return torch.where(inner_split & (rank == k.unsqueeze(1)), pos, big).min(dim=1).values

    three, one = count >= 3, torch.ones_like(count)
    zero = torch.zeros_like(chunk_end)
    x = torch.where(by_sentence | ~three, zero, inner_at(k_x))
    s = torch.where(by_sentence, split, torch.where(three, inner_at(k_s), torch.where(
        count >= 1, inner_at(one), any_split)))
    y = torch.where(by_sentence | (count < 2), chunk_end, torch.where(
        three, inner_at(k_y), inner_at(one + 1)))
    s = torch.minimum(s, chunk_end)
    room = y - s

    classes = {"nsp": 2, "sop": 2, "sso": 3}[task]
    label = torch.randint(classes, (batch,), generator=generator)
    other_label = {"nsp": 1, "sop": -1, "sso": 2}[task]
    other, has_other = random_choice(
        _other_rows(lengths, doc_ids, valid[:, :width]), generator
    )
    label = torch.where((label == other_label) & ~has_other, 0, label)
    other_doc = label == other_label
    swapped = (label == 1) if task != "nsp" else torch.zeros_like(other_doc)

    # The other-document B, from row ``other``: for a sentence split, a random sentence start
    # whose sentence fits in the room the true B had (else in what the batch width leaves),
    # then the whole sentences that fit; for a one-sentence chunk, a random word start inside
    # a sentence, up to a word start inside the same sentence.
    o_starts, o_bound, o_len = starts[other], bound[other], lengths[other]
    o_inner, o_end = inner[other], sentence_end[other]
    cap = width - (s - x)
    fits = o_starts & (o_end - pos <= room.unsqueeze(1))
    fits_cap = o_starts & (o_end - pos <= cap.unsqueeze(1))
    by_words = o_inner & (pos < o_len.unsqueeze(1))
    candidates = torch.where(
        by_sentence.unsqueeze(1),
        _prefer(fits, _prefer(fits_cap, o_starts)),
        _prefer(by_words, o_starts),
    )
    b_start, _ = random_choice(candidates, generator)
    after = pos > b_start.unsqueeze(1)
    in_room = after & (pos <= (b_start + room).unsqueeze(1))
    in_cap = after & (pos <= (b_start + cap).unsqueeze(1))
    own_end = o_end.gather(1, b_start.unsqueeze(1))
    sentence_b = torch.where(
        _last(o_bound & in_room, pos) > 0,
        _last(o_bound & in_room, pos),
        torch.where(_last(o_bound & in_cap, pos) > 0, _last(o_bound & in_cap, pos),
                    torch.minimum(b_start + cap, o_len)),
    )
    word_b = _last(o_inner & in_room & (pos < own_end), pos)
    word_b = torch.where(word_b > 0, word_b, torch.minimum(b_start + room, own_end.squeeze(1)))
    b_end = torch.where(by_sentence, sentence_b, word_b)

    b_row = torch.where(other_doc, other, rows)
    b_from = torch.where(other_doc, b_start, s)
    b_len = torch.where(other_doc, b_end - b_start, room)
    first_row = torch.where(swapped, b_row, rows)
    first_start = torch.where(swapped, b_from, x)
    a = torch.where(swapped, b_len, s - x)
    second_row = torch.where(swapped, rows, b_row)
    second_start = torch.where(swapped, x, b_from)
    b = torch.where(swapped, s - x, b_len)
    return label, first_row, first_start, a, second_row, second_start, b


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
    doc_ids: Tensor | None = None,
    pad_to: int | None = None,
) -> Segments:
    """Turn raw rows (B, L) into model inputs, as single segments or sentence pairs.

    ``doc_ids`` (B, L): each token's document (plmkit's packed blocks carry the corpus index);
    rows that share one are never each other's "other document". Without it every row is
    its own document. ``pad_to``: the output width (default: the longest input built).
    """
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
        label, first_row, first_start, a, second_row, second_start, b = _pair_sources(
            lengths, target, word_ids, sentence_ids, doc_ids, generator, task
        )

    total = a + b + torch.where(b > 0, 3, 2) if task is not None else a + 2
    out_width = int(total.max()) if pad_to is None else pad_to
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
        source_row=src_row,
        source_col=torch.where(content, src_col, -1),
    )
