"""The collator contract and the base class every method's collator builds on.

A collator is a plain callable ``collator(examples) -> dict[str, Tensor]`` (the Hugging Face
data-collator convention), importable without Lightning. An *example* is a dict with:

* ``input_ids``: token ids **without** special tokens (the collator adds ``[CLS]``/``[SEP]``
  or whatever its method needs); a list of ints or a 1-D tensor;
* ``word_ids`` (optional): the word index of each token (same index = same word, -1 for none),
  e.g. ``tokenizer(text, add_special_tokens=False).word_ids()`` with ``None`` mapped to -1;
* ``sentence_ids`` (optional): the sentence index of each token inside the example;
* ``doc_ids`` (optional): the document index of each token (packed examples may hold several).

Randomness comes from a ``torch.Generator`` owned by the collator: seeded from ``seed`` in the
main process and from ``seed + worker id`` inside a DataLoader worker, so workers draw
different masks and a run is reproducible per seed. plmkit's own loader reseeds it per batch
(:meth:`Collator.reseed`) so a resumed run draws exactly the masks it would have drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

IGNORE_INDEX = -100


class Collator:
    """Base class: seeding per worker, padding of example fields into batch tensors."""

    #: How many special tokens the collator adds to one block of raw tokens (3 for
    #: ``[CLS] A [SEP] B [SEP]``); a subclass sets it, per instance when it depends on an
    #: option. The objective's default ``block_length`` is ``max_length`` minus this.
    num_special_tokens: int = 0

    def __init__(self, seed: int = 0, generator: torch.Generator | None = None) -> None:
        self.seed = seed
        self._generator = generator
        self._worker_id: int | None = None

    @property
    def generator(self) -> torch.Generator:
        """The generator for this process: reseeded once inside each DataLoader worker."""
        info = torch.utils.data.get_worker_info()
        worker_id = info.id if info is not None else None
        if self._generator is None or worker_id != self._worker_id:
            self._worker_id = worker_id
            self._generator = torch.Generator().manual_seed(self.seed + (worker_id or 0) * 7919)
        return self._generator

    def reseed(self, seed: int) -> None:
        """Seed the generator of the current process (used per batch for exact resume)."""
        self.generator.manual_seed(seed)

    @staticmethod
    def pad(
        examples: Sequence[dict[str, Any]],
        key: str,
        pad_value: int,
        length: int | None = None,
    ) -> Tensor:
        """Stack field ``key`` of every example into a (batch, length) long tensor.

        Missing ``word_ids`` / ``sentence_ids`` / ``doc_ids`` fields get defaults (every token
        its own word, one sentence, one document). Inputs are never modified.
        """
        rows = [_field(example, key) for example in examples]
        sizes = {len(row) for row in rows}
        width = length if length is not None else max(sizes)
        if sizes == {width}:  # equal lengths (packed blocks): one copy, no per-row loop
            return torch.stack(rows)
        out = torch.full((len(rows), width), pad_value, dtype=torch.long)
        for i, row in enumerate(rows):
            n = min(len(row), width)
            out[i, :n] = row[:n]
        return out


def _field(example: dict[str, Any], key: str) -> Tensor:
    if key in example and example[key] is not None:
        value = example[key]
        if isinstance(value, Tensor):
            return value.long()
        return torch.tensor([-1 if v is None else v for v in value], dtype=torch.long)
    n = len(example["input_ids"])
    if key == "word_ids":
        return torch.arange(n)
    if key in ("sentence_ids", "doc_ids"):
        return torch.zeros(n, dtype=torch.long)
    raise KeyError(f"example has no field '{key}'")
