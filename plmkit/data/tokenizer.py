"""Tokenizers: load one (``tokenizer.json`` or a HF folder) or train one on the corpus.

Training uses Hugging Face ``tokenizers`` (WordPiece, BPE or Unigram). Every tokenizer is
wrapped in a ``PreTrainedTokenizerFast`` with its special tokens named, so it is saved with
the run, stored in checkpoints and exported with ``save_pretrained``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import trainers as tok_trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from plmkit.errors import PlmkitError

TokenizerType = Literal["wordpiece", "bpe", "unigram"]

#: The special tokens of every tokenizer plmkit trains, by role.
SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
    "bos_token": "[CLS]",
    "eos_token": "[SEP]",
}
_ROLE_CANDIDATES = {
    "pad_token": ["[PAD]", "<pad>"],
    "unk_token": ["[UNK]", "<unk>"],
    "cls_token": ["[CLS]", "<s>", "<cls>"],
    "sep_token": ["[SEP]", "</s>", "<sep>"],
    "mask_token": ["[MASK]", "<mask>"],
    "bos_token": ["[CLS]", "<s>", "<|endoftext|>"],
    "eos_token": ["[SEP]", "</s>", "<|endoftext|>"],
}


def _ordered_specials() -> list[str]:
    return list(dict.fromkeys(SPECIAL_TOKENS.values()))


def train_tokenizer(
    texts: Iterable[str],
    kind: TokenizerType = "wordpiece",
    vocab_size: int = 8192,
    lowercase: bool = True,
    length: int | None = None,
    show_progress: bool = True,
) -> PreTrainedTokenizerFast:
    """Train a tokenizer of ``kind`` with ``vocab_size`` entries on ``texts``."""
    specials = _ordered_specials()
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = tok_trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=specials, show_progress=show_progress
        )
    elif kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        tok.normalizer = normalizers.Lowercase() if lowercase else None
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = tok_trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
    elif kind == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.Lowercase() if lowercase else None
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = tok_trainers.UnigramTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            unk_token="[UNK]",
            show_progress=show_progress,
        )
    else:
        raise PlmkitError(f"unknown tokenizer type '{kind}': use wordpiece, bpe or unigram")
    tok.train_from_iterator(_batched(texts), trainer=trainer, length=length)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return wrap(tok, SPECIAL_TOKENS)


def _batched(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def wrap(tok: Tokenizer, special_tokens: dict[str, str]) -> PreTrainedTokenizerFast:
    """Wrap a raw ``tokenizers.Tokenizer`` with named special tokens."""
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special_tokens)


def _infer_special_tokens(tok: Tokenizer) -> dict[str, str]:
    vocab = tok.get_vocab()
    found = {}
    for role, candidates in _ROLE_CANDIDATES.items():
        for candidate in candidates:
            if candidate in vocab:
                found[role] = candidate
                break
    return found


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a ``tokenizer.json`` file or a Hugging Face tokenizer folder from disk."""
    path = Path(path).expanduser()
    if not path.exists():
        raise PlmkitError(
            f"tokenizer {path} does not exist; pass a tokenizer.json or a tokenizer folder, "
            "or leave --data.tokenizer unset to train one on the corpus"
        )
    try:
        if path.is_file():
            tok = Tokenizer.from_file(str(path))
            return wrap(tok, _infer_special_tokens(tok))
        loaded = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise PlmkitError(
            f"could not load tokenizer {path}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    if not isinstance(loaded, PreTrainedTokenizerFast):
        raise PlmkitError(f"tokenizer {path} is not a fast tokenizer; convert it to tokenizer.json")
    return loaded


def add_special_tokens(tokenizer: PreTrainedTokenizerFast, tokens: list[str]) -> None:
    """Append missing special tokens, in order, at the top of the vocabulary."""
    missing = [t for t in tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})


def tokenizer_to_state(tokenizer: PreTrainedTokenizerFast) -> dict[str, object]:
    """A JSON-able snapshot of a tokenizer, stored in checkpoints."""
    return {
        "tokenizer": tokenizer.backend_tokenizer.to_str(),
        "special_tokens": {k: str(v) for k, v in tokenizer.special_tokens_map.items()
                           if isinstance(v, str)},
    }


def tokenizer_from_state(state: dict[str, object]) -> PreTrainedTokenizerFast:
    """Rebuild a tokenizer from :func:`tokenizer_to_state`."""
    tok = Tokenizer.from_str(str(state["tokenizer"]))
    specials = dict(state.get("special_tokens", {}))  # type: ignore[arg-type]
    return wrap(tok, specials)


def tokenizer_digest(tokenizer: PreTrainedTokenizerFast) -> str:
    """A short stable hash of a tokenizer's definition (vocabulary, model, normalizer)."""
    import hashlib

    text = json.dumps(json.loads(tokenizer.backend_tokenizer.to_str()), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
