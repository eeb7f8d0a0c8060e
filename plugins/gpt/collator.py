"""GPT's collator: causal-LM batches over packed blocks, optionally cut at document boundaries.

The labels are the input ids (-100 at padding): Hugging Face's ``GPT2LMHeadModel`` shifts them
inside the model, so ``model(**batch)`` works as is, e.g. in a HF ``Trainer``.

Documents. With plmkit's ``stream`` packing a block is documents concatenated with the
tokenizer's separator between them; the trained tokenizer's ``eos_token`` *is* its
``sep_token`` (``[SEP]``), so the separator is GPT's end-of-text token. By default (as in
GPT-1 and GPT-2) attention runs across the whole block. With ``document_mask=True`` it is cut
at every document boundary:

* a new *segment* starts at each document; the separator that closes a document opens the
  next segment (GPT-2's ``<|endoftext|>`` convention: the same token ends one text and starts
  the next), so the last token of a document still learns to predict EOS and the separator
  predicts the next document's first token, with nothing crossing a boundary;
* ``position_ids`` restart at 0 in every segment and no ``attention_mask`` is returned:
  ``GPT2Model`` in transformers 5.x then builds the block-diagonal causal mask from the
  position ids itself (``masking_utils.find_packed_sequence_indices``; checked with SDPA),
  so a token gets exactly the logits it would get with its document alone in the block.
  transformers does this only when no KV cache is in use: call the model with
  ``use_cache=False`` (plmkit's GPT config sets it; in a HF ``Trainer`` set
  ``model.config.use_cache = False``), or pass :func:`document_causal_mask` as the
  attention mask;
  Right padding needs no mask in a causal model (real tokens never see later positions);
  padded positions continue the last segment and their labels are -100;
* when a boundary is *not* opened by a separator (examples whose ``doc_ids`` change without
  one), the first token of the new document cannot be predicted from its own document and
  its label is set to -100.

Importable and usable without Lightning; no randomness is involved.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from plmkit.collator import IGNORE_INDEX, Collator
from plmkit.config import SpecialTokens


def segment_starts(doc_ids: Tensor, input_ids: Tensor, lengths: Tensor,
                   eos_token_id: int | None) -> Tensor:
    """Boolean (batch, length): True where an attention segment starts.

    Position 0 always starts one; a change of ``doc_ids`` starts one, moved one token earlier
    when the token before it is ``eos_token_id`` (the separator opens the next document).
    Positions at or after a row's length never start a segment.
    """
    batch, width = input_ids.shape
    starts = torch.zeros(batch, width, dtype=torch.bool)
    starts[:, 0] = True
    if width > 1:
        change = doc_ids[:, 1:] != doc_ids[:, :-1]
        if eos_token_id is not None:
            moved = change & (input_ids[:, :-1] == eos_token_id)
            starts[:, :-1] |= moved
            change = change & ~moved
        starts[:, 1:] |= change
    valid = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
    return starts & valid


def segment_positions(starts: Tensor) -> Tensor:
    """Position ids that restart at 0 at every segment start (vectorized with ``cummax``)."""
    index = torch.arange(starts.shape[1]).expand_as(starts)
    last_start = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    return index - last_start


def document_causal_mask(position_ids: Tensor) -> Tensor:
    """The (batch, 1, L, L) boolean block-diagonal causal mask implied by ``position_ids``.

    True = may attend. A segment starts wherever the position is 0. This is the mask
    transformers builds itself when ``position_ids`` restart and no attention mask is given;
    it is exposed for other models and for the tests.
    """
    segments = (position_ids == 0).long().cumsum(dim=1)
    width = position_ids.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same = segments.unsqueeze(2) == segments.unsqueeze(1)
    return (same & causal).unsqueeze(1)


class GptCollator(Collator):
    """Causal language-model batches for GPT-style decoders.

    Args:
        tokenizer: a Hugging Face tokenizer with a pad token, or its
            :class:`~plmkit.config.SpecialTokens`; its ``eos`` separates the documents of a
            packed block (plmkit's tokenizers: ``[SEP]``, both ``sep_token`` and ``eos_token``).
        max_length: longest model input; longer examples are truncated (None: no limit).
        document_mask: cut attention (and restart positions) at document boundaries, using
            the examples' ``doc_ids``; without ``doc_ids`` an example is one document.
        seed: seed of the collator's generator (unused: causal LM draws nothing).
    """

    num_special_tokens = 0  # a block is exactly one model input

    def __init__(
        self,
        tokenizer: Any,
        max_length: int | None = None,
        document_mask: bool = False,
        seed: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(seed, generator)
        tokens = SpecialTokens.from_tokenizer(tokenizer)
        self.pad_id, self.eos_id = tokens.pad, tokens.eos
        self.max_length, self.document_mask = max_length, document_mask

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        input_ids = self.pad(examples, "input_ids", self.pad_id)
        lengths = torch.tensor([len(e["input_ids"]) for e in examples])
        if self.max_length is not None:
            input_ids = input_ids[:, : self.max_length]
            lengths = lengths.clamp(max=self.max_length)
        width = input_ids.shape[1]
        valid = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
        labels = input_ids.masked_fill(~valid, IGNORE_INDEX)
        if not self.document_mask:
            return {
                "input_ids": input_ids,
                "attention_mask": valid.long(),
                "labels": labels,
            }
        doc_ids = self.pad(examples, "doc_ids", -1)[:, :width]
        # padding continues the last document (its outputs are never used)
        last_doc = doc_ids.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1))
        doc_ids = torch.where(valid, doc_ids, last_doc)
        starts = segment_starts(doc_ids, input_ids, lengths, self.eos_id)
        # a boundary not opened by the separator would predict across documents
        cut = starts.clone()
        cut[:, 0] = False
        if self.eos_id is not None:
            cut &= input_ids != self.eos_id
        labels = labels.masked_fill(cut, IGNORE_INDEX)
        return {
            "input_ids": input_ids,
            "position_ids": segment_positions(starts),
            "labels": labels,
        }
