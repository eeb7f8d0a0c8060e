"""The transformers path: what a user without plmkit writes, per method.

The same model classes and configs as plmkit (taken from the plmkit objective's
``build_model()``), transformers' own data collators on ``group_texts`` blocks, and for T5
(transformers has no PyTorch span-corruption collator) :class:`T5SpanCorruptionPort`, a port
of the public ``FlaxDataCollatorForT5MLM``. The loss of each model is computed the way its
class (or the straightforward implementation) computes it: logits on every position.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from benchmarks.specs import group_texts, token_stream


class RowsDataset(Dataset):
    """Blocks of a grouped token stream as the dicts of python lists that a Hugging Face
    ``datasets.Dataset`` (no format set) hands to a collator."""

    def __init__(self, columns: dict[str, np.ndarray]) -> None:
        self.columns = columns
        self.rows = len(next(iter(columns.values())))

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, index: int) -> dict[str, list]:
        return {key: value[index].tolist() for key, value in self.columns.items()}


def _kind(method: str) -> str:
    """The baseline recipe of a benchmark name (``bert_30k`` trains like ``bert``)."""
    return method.removesuffix("_30k")


def _offsets(ids: np.ndarray, word_start: np.ndarray) -> np.ndarray:
    """Character offsets that reproduce the word boundaries (a gap before every word start):
    what ``return_offsets_mapping=True`` gives whole-word masking to work with."""
    start = np.arange(len(ids)) + np.cumsum(word_start)
    return np.stack([start, start + 1], axis=-1)


def baseline_dataset(method: str, tokenizer: Any, corpus: Any, docs: np.ndarray,
                     seq: int) -> RowsDataset:
    """``tokenizer(text)`` per document, then ``group_texts`` into blocks (``run_mlm.py``,
    ``run_clm.py``, ``run_plm.py``, ``run_t5_mlm_flax.py``)."""
    method = _kind(method)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else sep
    if method in ("gpt", "t5"):
        stream, words = token_stream(corpus, docs, [], [eos])  # text + EOS
    else:
        stream, words = token_stream(corpus, docs, [cls], [sep])  # [CLS] text [SEP]
    block = seq
    if method == "t5":
        block = compute_input_and_target_lengths(seq)[0]
    ids = group_texts(stream, block)
    columns: dict[str, np.ndarray] = {"input_ids": ids}
    if method in ("bert", "bert_wwm", "roberta", "electra"):
        special = np.isin(stream, tokenizer.all_special_ids)
        columns["special_tokens_mask"] = group_texts(special.astype(np.int64), block)
        columns["attention_mask"] = np.ones_like(ids)
    if method == "bert":
        columns["token_type_ids"] = np.zeros_like(ids)
    if method == "bert_wwm":
        columns["token_type_ids"] = np.zeros_like(ids)
        offsets = _offsets(stream, words)
        n = len(ids) * block
        columns["offset_mapping"] = offsets[:n].reshape(len(ids), block, 2)
    return RowsDataset(columns)


def baseline_collator(method: str, tokenizer: Any, objective: Any, seq: int) -> Callable:
    """The transformers collator (or the Flax port) each method's baseline uses."""
    method = _kind(method)
    from transformers import (
        DataCollatorForLanguageModeling,
        DataCollatorForPermutationLanguageModeling,
    )

    if method in ("bert", "roberta"):
        return DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    if method == "bert_wwm":
        # transformers 5.x: whole-word masking is a flag of DataCollatorForLanguageModeling
        # (word boundaries from offset_mapping); it masks with [MASK] only
        return DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15,
                                               whole_word_mask=True, mask_replace_prob=1.0,
                                               random_replace_prob=0.0)
    if method == "electra":
        return DataCollatorForLanguageModeling(
            tokenizer, mlm_probability=objective.masking.probability,
            mask_replace_prob=objective.masking.mask_rate, random_replace_prob=0.0,
        )
    if method == "xlnet":
        return DataCollatorForPermutationLanguageModeling(
            tokenizer, plm_probability=1.0 / objective.partial_k, max_span_length=objective.max_span
        )
    if method == "gpt":
        return DataCollatorForLanguageModeling(tokenizer, mlm=False)
    if method == "t5":
        pad = tokenizer.pad_token_id
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else (
            tokenizer.sep_token_id)
        inputs, targets = seq, compute_input_and_target_lengths(seq)[1]
        port = T5SpanCorruptionPort(len(tokenizer), eos, pad, pad, inputs, targets)
        return port.torch_call
    raise KeyError(method)


def baseline_model(method: str, reference: nn.Module) -> nn.Module:
    """The model the baseline trains: the objective's own ``build_model()`` result, i.e. the
    same transformers class(es), config and initial weights."""
    return reference


def baseline_loss(method: str, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """One forward pass of the transformers path, logits on every position."""
    method = _kind(method)
    if method in ("bert", "bert_wwm"):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    token_type_ids=batch["token_type_ids"])
        logits = out.prediction_logits  # BertForPreTraining's own MLM loss, without NSP
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), batch["labels"].view(-1))
    if method == "electra":
        return electra_straightforward(model, batch)
    return model(**batch).loss


def electra_straightforward(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """ELECTRA the straightforward way (as in the public PyTorch re-implementations): the
    generator ``ElectraForMaskedLM`` computes logits and its loss on every position, samples
    replacements at the masked positions, ``ElectraForPreTraining`` computes its BCE loss."""
    generator, discriminator = model.generator, model.discriminator
    labels = batch["labels"]
    gen = generator(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    labels=labels)
    masked = labels != -100
    with torch.no_grad():
        logits = gen.logits[masked].float()
        gumbel = -torch.log(-torch.log(torch.rand_like(logits) + 1e-9) + 1e-9)
        sampled = (logits + gumbel).argmax(dim=-1)
        originals = torch.where(masked, labels, batch["input_ids"])
        fake = originals.clone()
        fake[masked] = sampled
        is_replaced = (fake != originals).long()
    disc = discriminator(input_ids=fake, attention_mask=batch["attention_mask"],
                         labels=is_replaced)
    return gen.loss + 50.0 * disc.loss


def compute_input_and_target_lengths(inputs_length: int, noise_density: float = 0.15,
                                     mean_noise_span_length: float = 3.0) -> tuple[int, int]:
    """``compute_input_and_target_lengths`` of run_t5_mlm_flax.py: raw tokens that fill
    ``inputs_length`` after corruption (128 -> 141) and the targets length (29)."""

    def lengths(tokens: int) -> tuple[int, int]:
        noise = int(round(tokens * noise_density))
        spans = int(round(noise / mean_noise_span_length))
        return tokens - noise + spans + 1, noise + spans + 1

    tokens = inputs_length
    while lengths(tokens + 1)[0] <= inputs_length:
        tokens += 1
    return tokens, lengths(tokens)[1]


class T5SpanCorruptionPort:
    """A NumPy port, written for this harness, of ``FlaxDataCollatorForT5MLM`` in
    transformers' ``examples/flax/language-modeling/run_t5_mlm_flax.py``: one noise mask per
    example (``random_spans_noise_mask``, a Python loop over the batch), sentinel ids counted
    down from ``vocab_size - 1``, consecutive noise collapsed into one sentinel, EOS appended;
    ``decoder_input_ids`` are the labels shifted right. ``torch_call`` returns torch tensors.
    """

    def __init__(self, vocab_size: int, eos_id: int, pad_id: int, decoder_start_id: int,
                 input_length: int, target_length: int, noise_density: float = 0.15,
                 mean_noise_span_length: float = 3.0, seed: int | None = None) -> None:
        self.vocab_size, self.eos_id = vocab_size, eos_id
        self.pad_id, self.decoder_start_id = pad_id, decoder_start_id
        self.input_length, self.target_length = input_length, target_length
        self.noise_density, self.mean_span = noise_density, mean_noise_span_length
        self.rng = np.random.default_rng(seed)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        ids = np.array([e["input_ids"] for e in examples])
        batch, length = ids.shape
        noise = np.asarray([self.noise_mask(length) for _ in range(batch)])
        inputs = self._filter(ids, self._sentinels(noise.astype(np.int8)))
        labels = self._filter(ids, self._sentinels((~noise).astype(np.int8)))
        if inputs.shape[-1] != self.input_length or labels.shape[-1] != self.target_length:
            raise ValueError(f"examples of {length} tokens give inputs {inputs.shape[-1]} and "
                             f"targets {labels.shape[-1]}, not {self.input_length} and "
                             f"{self.target_length}")
        decoder = np.full_like(labels, self.decoder_start_id)
        decoder[:, 1:] = labels[:, :-1]
        return {"input_ids": inputs, "labels": labels, "decoder_input_ids": decoder,
                "noise_mask": noise}

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        batch = self(examples)
        batch.pop("noise_mask")
        return {k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items()}

    def _sentinels(self, mask: np.ndarray) -> np.ndarray:
        """The first token of every masked span gets the next sentinel id, the rest -1."""
        starts = mask - np.roll(mask, 1, axis=-1) * mask
        starts[:, 0] = mask[:, 0]
        number = np.where(starts != 0, np.cumsum(starts, axis=-1), starts)
        out = np.where(number != 0, self.vocab_size - number, 0)
        return out - (mask - starts)

    def _filter(self, ids: np.ndarray, sentinels: np.ndarray) -> np.ndarray:
        full = np.where(sentinels != 0, sentinels, ids)
        kept = full[full >= 0].reshape(len(ids), -1)
        return np.concatenate([kept, np.full((len(ids), 1), self.eos_id)], axis=-1)

    def noise_mask(self, length: int) -> np.ndarray:
        """``random_spans_noise_mask``: spans alternate non-noise / noise, starting with
        non-noise; the counts of noise tokens and spans are fixed, the lengths are random."""
        num_noise = int(np.round(length * self.noise_density))
        num_noise = min(max(num_noise, 1), length - 1)
        num_nonnoise = length - num_noise
        num_spans = max(int(np.round(min(num_noise, num_nonnoise) / self.mean_span)), 1)

        def segmentation(items: int, segments: int) -> np.ndarray:
            first = np.arange(items - 1) < (segments - 1)
            self.rng.shuffle(first)
            segment_id = np.cumsum(np.pad(first, [[1, 0]]))
            return np.unique(segment_id, return_counts=True)[1]

        noise_lengths = segmentation(num_noise, num_spans)
        nonnoise_lengths = segmentation(num_nonnoise, num_spans)
        interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
        indicator = np.zeros(length, dtype=np.int8)
        indicator[np.cumsum(interleaved)[:-1]] = 1
        return np.cumsum(indicator) % 2 == 1
