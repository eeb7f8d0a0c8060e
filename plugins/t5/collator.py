"""T5's span-corruption collator, vectorized in PyTorch over the batch.

A port of google-research/text-to-text-transfer-transformer ``t5/data/preprocessors.py``
(``span_corruption`` = ``random_spans_noise_mask`` + ``noise_span_to_unique_sentinel`` /
``nonnoise_span_to_unique_sentinel``, and ``random_spans_helper`` for the raw lengths):

* per example of ``L`` tokens: ``num_noise = round(L * 0.15)`` clamped to ``[1, L - 1]``
  (``L`` taken as at least 2), ``num_spans = max(1, round(num_noise / 3))``; the noise tokens
  and the non-noise tokens are each split into ``num_spans`` non-empty spans by a uniformly
  random composition (``_random_segmentation``), interleaved non-noise first, so the example
  always ends with noise; ``round`` is half-to-even as ``tf.round``;
* inputs: every noise span is replaced by one sentinel, then EOS; targets: every non-noise
  span is replaced by a sentinel (so they read ``<extra_id_0> span_0 <extra_id_1> span_1
  ...``), then EOS. Span ``k`` gets ``<extra_id_k>``, whose id is ``vocab_size - 1 - k`` in
  plmkit (the objective appends the sentinels at the top of the vocabulary);
* :func:`random_spans_helper` gives the raw length that fills the inputs exactly
  (512 -> 568 raw tokens, targets 114; 128 -> 141, targets 29), so full blocks produce inputs
  and targets of exactly the configured lengths, with no padding.

Every row draws from the collator's generator only; the inputs are never modified.
Importable and usable without Lightning.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from plmkit.collator import IGNORE_INDEX, Collator
from plmkit.config import SpecialTokens

NUM_SENTINELS = 100


def sentinel_tokens(count: int = NUM_SENTINELS) -> list[str]:
    """``<extra_id_0>`` ... ``<extra_id_{count-1}>`` (T5's names)."""
    return [f"<extra_id_{k}>" for k in range(count)]


def random_spans_helper(
    inputs_length: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    extra_tokens_per_span_inputs: int = 1,
    extra_tokens_per_span_targets: int = 1,
) -> tuple[int, int]:
    """T5's ``random_spans_helper``: ``(raw tokens, targets length)`` for ``inputs_length``.

    The largest raw length whose corrupted inputs (kept tokens + one sentinel per span +
    EOS) fit in ``inputs_length``, and the length of its targets (EOS included).
    """

    def lengths(tokens_length: int) -> tuple[int, int]:
        num_noise = int(round(tokens_length * noise_density))
        num_nonnoise = tokens_length - num_noise
        num_spans = int(round(num_noise / mean_noise_span_length))
        return (
            num_nonnoise + num_spans * extra_tokens_per_span_inputs + 1,
            num_noise + num_spans * extra_tokens_per_span_targets + 1,
        )

    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    inputs, targets = lengths(tokens_length)
    # T5's "minor hack" so that targets are not longer than inputs at density 0.5
    if noise_density == 0.5 and targets > inputs:
        tokens_length -= 1
        targets -= 1
    return tokens_length, targets


def noise_counts(
    lengths: Tensor, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
) -> tuple[Tensor, Tensor]:
    """Per-row ``(num_noise, num_spans)`` exactly as ``random_spans_noise_mask`` computes them."""
    length = lengths.clamp(min=2)
    # float32 arithmetic and half-to-even rounding, exactly as tf.round(to_float(...)) does
    density = torch.tensor(noise_density, dtype=torch.float32)
    span = torch.tensor(mean_noise_span_length, dtype=torch.float32)
    num_noise = torch.round(length.float() * density).long()
    num_noise = torch.minimum(num_noise.clamp(min=1), length - 1)
    num_spans = torch.round(num_noise.float() / span).long().clamp(min=1)
    return num_noise, num_spans


def random_segmentation(
    num_items: Tensor, num_segments: Tensor, width: int, generator: torch.Generator
) -> Tensor:
    """Per row, split ``num_items[b]`` items into ``num_segments[b]`` non-empty segments.

    Uniform over compositions like T5's ``_random_segmentation`` (a random shuffle of the
    ``num_segments - 1`` cut points among the ``num_items - 1`` gaps). Returns the segment
    lengths, (batch, width), zero beyond ``num_segments[b]``.
    """
    batch = num_items.shape[0]
    max_items = int(num_items.max().item())
    gaps = max(max_items - 1, 0)
    keys = torch.rand((batch, gaps), generator=generator)
    gap_index = torch.arange(gaps).unsqueeze(0)
    keys = keys.masked_fill(gap_index >= (num_items - 1).unsqueeze(1), 2.0)
    ranks = keys.argsort(dim=1).argsort(dim=1)
    cut = ranks < (num_segments - 1).unsqueeze(1)  # the cut points: a new segment after gap j
    first_in_segment = torch.cat([torch.zeros(batch, 1, dtype=torch.long), cut.long()], dim=1)
    segment_id = first_in_segment.cumsum(dim=1)
    inside = torch.arange(max(max_items, 1)).unsqueeze(0) < num_items.unsqueeze(1)
    lengths = torch.zeros(batch, width, dtype=torch.long)
    return lengths.scatter_add_(1, segment_id[:, : inside.shape[1]], inside.long())


def random_spans_noise_mask(
    lengths: Tensor,
    width: int,
    generator: torch.Generator,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
) -> Tensor:
    """T5's ``random_spans_noise_mask`` for a batch of rows of ``lengths[b]`` tokens.

    Returns a (batch, width) boolean mask, True at noise tokens (never beyond a row's length).
    """
    num_noise, num_spans = noise_counts(lengths, noise_density, mean_noise_span_length)
    length = lengths.clamp(min=2)
    spans = int(num_spans.max().item())
    noise_lengths = random_segmentation(num_noise, num_spans, spans, generator)
    nonnoise_lengths = random_segmentation(length - num_noise, num_spans, spans, generator)
    # interleave: non-noise 0, noise 0, non-noise 1, noise 1, ...; span ends are sorted
    interleaved = torch.stack([nonnoise_lengths, noise_lengths], dim=2).reshape(len(lengths), -1)
    ends = interleaved.cumsum(dim=1)
    positions = torch.arange(width).unsqueeze(0).expand(len(lengths), -1).contiguous()
    span_number = torch.searchsorted(ends, positions, right=True)
    inside = positions < lengths.unsqueeze(1)
    return (span_number % 2 == 1) & inside


def _sentinel_ids(tokenizer: Any, tokens: SpecialTokens) -> list[int]:
    """``<extra_id_0>``, ``<extra_id_1>`` ... of a tokenizer, by name (plmkit appends them so
    that ``<extra_id_k>`` is ``vocab_size - 1 - k``, as Hugging Face's T5 tokenizers number
    them); plmkit's layout for a bare ``SpecialTokens``."""
    if isinstance(tokenizer, SpecialTokens):
        return [tokens.vocab_size - 1 - k for k in range(NUM_SENTINELS)]
    vocab = tokenizer.get_vocab()
    sentinels = []
    for name in sentinel_tokens():
        if name not in vocab:
            break
        sentinels.append(vocab[name])
    if not sentinels:
        raise ValueError(
            "the tokenizer has no <extra_id_0> sentinel: add T5Objective().special_tokens() "
            "to it, or pass sentinel_ids"
        )
    return sentinels


def _compact(values: Tensor, keep: Tensor, width: int, fill: int) -> tuple[Tensor, Tensor]:
    """Left-align the kept values of every row into (batch, width); return them and counts."""
    counts = keep.sum(dim=1)
    target = (keep.long().cumsum(dim=1) - 1).clamp(min=0)
    target = torch.where(keep, target, torch.full_like(target, width))  # dropped: spill column
    out = torch.full((values.shape[0], width + 1), fill, dtype=values.dtype)
    out.scatter_(1, target, values)
    return out[:, :width].contiguous(), counts


class T5SpanCorruptionCollator(Collator):
    """Span-corruption (``inputs``, ``labels``) batches for T5.

    Args:
        tokenizer: a Hugging Face tokenizer holding ``<extra_id_0>``, ``<extra_id_1>`` ...
            (looked up by name), or a :class:`~plmkit.config.SpecialTokens`; its ``eos`` is
            appended to inputs and targets, its ``pad`` pads the inputs (labels: -100).
        input_length: configured encoder length; examples are cut to the raw length
            :func:`random_spans_helper` gives for it.
        noise_density: fraction of tokens corrupted (0.15).
        mean_noise_span_length: mean span length (3.0).
        sentinel_ids: id of ``<extra_id_k>`` at index ``k`` (default: from the tokenizer's
            vocabulary; for a ``SpecialTokens``, plmkit's layout ``vocab_size - 1 - k``).
        seed: seed of the collator's generator (see :class:`plmkit.collator.Collator`).
    """

    #: EOS closes the inputs; each noise span becomes one sentinel, so the raw block is
    #: longer than the inputs (see :meth:`T5Objective.block_length`).
    num_special_tokens = 1

    def __init__(
        self,
        tokenizer: Any,
        input_length: int = 512,
        noise_density: float = 0.15,
        mean_noise_span_length: float = 3.0,
        sentinel_ids: list[int] | None = None,
        seed: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(seed, generator)
        if not 0.0 < noise_density < 1.0:
            raise ValueError(f"noise_density must be in (0, 1), got {noise_density}")
        tokens = SpecialTokens.from_tokenizer(tokenizer)
        if sentinel_ids is None:
            sentinel_ids = _sentinel_ids(tokenizer, tokens)
        self.sentinel_ids = torch.tensor(sentinel_ids, dtype=torch.long)
        self.eos_id, self.pad_id = tokens.eos, tokens.pad
        self.noise_density, self.mean_noise_span_length = noise_density, mean_noise_span_length
        self.input_length = input_length
        self.raw_length, self.target_length = random_spans_helper(
            input_length, noise_density, mean_noise_span_length
        )

    def corrupt(self, ids: Tensor, lengths: Tensor, noise: Tensor) -> dict[str, Tensor]:
        """Build inputs and targets from raw ``ids`` and a noise mask (both (batch, width))."""
        batch, width = ids.shape
        inside = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
        prev_noise = torch.cat([torch.zeros(batch, 1, dtype=torch.bool), noise[:, :-1]], dim=1)
        first_noise = noise & ~prev_noise
        nonnoise = inside & ~noise
        prev_nonnoise = torch.cat(
            [torch.zeros(batch, 1, dtype=torch.bool), nonnoise[:, :-1]], dim=1
        )
        first_nonnoise = nonnoise & ~prev_nonnoise
        # sentinel k for the k-th span of each kind (both count from 0 along the row)
        span_index = (first_noise.long().cumsum(dim=1) - 1).clamp(min=0)
        if int(first_noise.sum(dim=1).max().item()) > len(self.sentinel_ids):
            raise ValueError(
                f"an example needs more than {len(self.sentinel_ids)} sentinels; "
                "use shorter examples or more sentinel tokens"
            )
        sentinel_in = self.sentinel_ids[span_index.clamp(max=len(self.sentinel_ids) - 1)]
        inputs_full = torch.where(first_noise, sentinel_in, ids)
        keep_in = inside & ~(noise & prev_noise)
        # in the targets, the non-noise span before noise span k becomes sentinel k
        nonnoise_index = (first_nonnoise.long().cumsum(dim=1) - 1).clamp(min=0)
        sentinel_tg = self.sentinel_ids[nonnoise_index.clamp(max=len(self.sentinel_ids) - 1)]
        targets_full = torch.where(first_nonnoise, sentinel_tg, ids)
        keep_tg = inside & ~(nonnoise & prev_nonnoise)

        in_width = int(keep_in.sum(dim=1).max().item()) + 1
        tg_width = int(keep_tg.sum(dim=1).max().item()) + 1
        inputs, n_in = _compact(inputs_full, keep_in, in_width, self.pad_id)
        targets, n_tg = _compact(targets_full, keep_tg, tg_width, IGNORE_INDEX)
        rows = torch.arange(batch)
        inputs[rows, n_in] = self.eos_id
        targets[rows, n_tg] = self.eos_id
        attention = (torch.arange(in_width).unsqueeze(0) <= n_in.unsqueeze(1)).long()
        return {"input_ids": inputs, "attention_mask": attention, "labels": targets}

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        ids = self.pad(examples, "input_ids", self.pad_id)[:, : self.raw_length]
        lengths = torch.tensor([min(len(e["input_ids"]), self.raw_length) for e in examples])
        if int(lengths.min().item()) < 1:
            raise ValueError("T5 span corruption needs examples of at least one token")
        noise = random_spans_noise_mask(
            lengths, ids.shape[1], self.generator, self.noise_density, self.mean_noise_span_length
        )
        return self.corrupt(ids, lengths, noise)
