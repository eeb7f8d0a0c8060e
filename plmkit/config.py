"""Typed configuration that the methods share: encoder sizes, masking, special tokens.

An objective takes ``encoder:`` and ``masking:`` blocks instead of a dozen loose arguments::

    model:
      class_path: plmkit.plugins.bert.BertObjective
      init_args:
        encoder: {size: tiny, dropout: 0.0}   # a named size, one field overridden
        masking: {probability: 0.15, whole_word: true}

The attribute docstrings below are what ``plmkit fit --help`` shows for each field.
Checkpoints store these blocks as plain dicts (see :func:`as_config`), so they load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from plmkit.errors import PlmkitError

Size = Literal["tiny", "small", "base", "large"]

#: The named encoder sizes: hidden size, layers, attention heads, feed-forward width.
#: tiny is BERT-Tiny (Turc et al. 2019), small is ELECTRA-Small, base and large are BERT's.
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 128, "num_layers": 2, "num_heads": 2, "intermediate_size": 512},
    "small": {"hidden_size": 256, "num_layers": 12, "num_heads": 4, "intermediate_size": 1024},
    "base": {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 3072},
    "large": {"hidden_size": 1024, "num_layers": 24, "num_heads": 16, "intermediate_size": 4096},
}


@dataclass(frozen=True)
class EncoderConfig:
    """The shape of a transformer encoder; fields left unset come from ``size``."""

    size: Size = "base"
    """Named size that fills the four sizes below when they are not given: tiny 128/2/2/512,
    small 256/12/4/1024, base 768/12/12/3072, large 1024/24/16/4096
    (hidden / layers / heads / feed-forward)."""
    hidden_size: int | None = None
    """Width of the hidden states (default: from size)."""
    num_layers: int | None = None
    """Number of transformer layers (default: from size)."""
    num_heads: int | None = None
    """Attention heads per layer (default: from size)."""
    intermediate_size: int | None = None
    """Feed-forward width (default: from size)."""
    embedding_size: int | None = None
    """Width of the token embeddings when the method factorizes them (ALBERT, ELECTRA);
    default: hidden_size."""
    dropout: float = 0.1
    """Dropout of the hidden states."""
    attention_dropout: float | None = None
    """Dropout of the attention probabilities (default: dropout)."""
    max_position_embeddings: int = 512
    """Learned positions: the longest input the model accepts (data.max_length at most)."""
    attention: Literal["sdpa", "eager"] = "sdpa"
    """Attention implementation of the transformers model."""

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise PlmkitError(f"encoder.size must be one of {', '.join(SIZES)}, got {self.size!r}")

    def resolved(self) -> EncoderConfig:
        """A copy with every unset field filled: the four sizes from ``size``,
        ``embedding_size`` from ``hidden_size``, ``attention_dropout`` from ``dropout``."""
        filled = {k: v for k, v in SIZES[self.size].items() if getattr(self, k) is None}
        config = dataclasses.replace(self, **filled)
        config = dataclasses.replace(
            config,
            embedding_size=config.embedding_size or config.hidden_size,
            attention_dropout=(config.dropout if config.attention_dropout is None
                               else config.attention_dropout),
        )
        if config.hidden_size % config.num_heads:  # type: ignore[operator]
            raise PlmkitError(f"encoder.hidden_size {config.hidden_size} is not a multiple of "
                              f"encoder.num_heads {config.num_heads}")
        return config

    def hf_kwargs(self, max_length: int = 0) -> dict[str, Any]:
        """Keyword arguments of a transformers BERT-family config (``BertConfig``,
        ``RobertaConfig``, ``AlbertConfig``, ``ElectraConfig`` share these names); positions
        are at least ``max_length``."""
        c = self.resolved()
        return {
            "hidden_size": c.hidden_size,
            "num_hidden_layers": c.num_layers,
            "num_attention_heads": c.num_heads,
            "intermediate_size": c.intermediate_size,
            "hidden_dropout_prob": c.dropout,
            "attention_probs_dropout_prob": c.attention_dropout,
            "max_position_embeddings": max(c.max_position_embeddings, max_length),
        }


@dataclass(frozen=True)
class MaskingConfig:
    """Which tokens a masked-LM objective predicts and how it corrupts them."""

    probability: float = 0.15
    """Share of the (non-special) tokens to predict."""
    exact_count: bool = True
    """An exact budget of round(n * probability) predictions per sequence, as the original
    BERT data pipeline (else an independent Bernoulli draw per token, as Hugging Face's)."""
    max_predictions: int | None = None
    """Cap on the exact budget (default: the method's; BERT's family: max_length * probability
    rounded up to a multiple of 10, 20 at 128 and 80 at 512)."""
    mask_rate: float = 0.8
    """Of the chosen tokens, the share replaced by [MASK]."""
    random_rate: float = 0.1
    """Of the chosen tokens, the share replaced by a random token; the rest stay unchanged."""
    whole_word: bool = False
    """Choose whole words: every piece of a chosen word is predicted."""

    def __post_init__(self) -> None:
        if not 0.0 < self.probability < 1.0:
            raise PlmkitError(f"masking.probability must be in (0, 1), got {self.probability}")
        if self.mask_rate < 0 or self.random_rate < 0 or self.mask_rate + self.random_rate > 1:
            raise PlmkitError("masking.mask_rate and masking.random_rate must be >= 0 and sum "
                              f"to at most 1, got {self.mask_rate} and {self.random_rate}")


@dataclass(frozen=True)
class SpecialTokens:
    """The ids a collator needs from its tokenizer, and the size of the vocabulary."""

    vocab_size: int
    pad: int
    cls: int | None = None
    sep: int | None = None
    mask: int | None = None
    eos: int | None = None
    all: tuple[int, ...] = ()
    """Every special id: never masked, never drawn as a random replacement."""

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> SpecialTokens:
        """Read the ids of a Hugging Face tokenizer (``eos`` falls back to ``sep``, as
        plmkit's own tokenizers use ``[SEP]`` for both); a ``SpecialTokens`` is returned as is."""
        if isinstance(tokenizer, SpecialTokens):
            return tokenizer
        eos = tokenizer.eos_token_id
        return cls(
            vocab_size=len(tokenizer),
            pad=tokenizer.pad_token_id,
            cls=tokenizer.cls_token_id,
            sep=tokenizer.sep_token_id,
            mask=tokenizer.mask_token_id,
            eos=eos if eos is not None else tokenizer.sep_token_id,
            all=tuple(sorted(set(tokenizer.all_special_ids))),
        )


C = TypeVar("C")


def as_config(kind: type[C], value: C | dict[str, Any] | None, default: C | None = None) -> C:
    """``value`` as a ``kind`` dataclass: a dict (from a checkpoint's hyperparameters or a
    Python caller) overrides the fields of ``default`` (else of ``kind()``); ``None`` gives
    the default; unknown keys are a one-line error."""
    base = default if isinstance(default, kind) else kind()
    if value is None:
        return base
    if isinstance(value, kind):
        return value
    if isinstance(value, dict):
        names = {f.name for f in dataclasses.fields(kind)}  # type: ignore[arg-type]
        unknown = sorted(set(value) - names)
        if unknown:
            raise PlmkitError(f"unknown {kind.__name__} field(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(names))}")
        return dataclasses.replace(base, **value)  # type: ignore[type-var]
    raise PlmkitError(f"expected a {kind.__name__} or a dict, got {type(value).__name__}")
