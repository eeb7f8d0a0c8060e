"""The ELMo biLM in plain PyTorch (allenai/bilm-tf has no transformers class).

* **Token encoder**: each token id is spelled as a fixed row of 50 character ids (a
  (vocab, 50) table built once from the tokenizer's vocabulary, see :func:`char_table`), then
  a character CNN (16-dim character embeddings; filters ``[[1, 32], [2, 32], [3, 64], [4, 128],
  [5, 256], [6, 512], [7, 1024]]`` max-pooled over the characters, ReLU), highway layers and a
  linear projection. The CNN depends only on the token id, so each batch encodes its *unique*
  ids once and gathers the result.
* **biLSTM**: ``num_layers`` LSTM layers per direction, each a cell of ``lstm_dim`` units
  projected to ``projection_dim`` (``LSTMCell(num_proj=...)`` of bilm-tf, forget bias 1), with
  the cell clipped to ``+-cell_clip`` and the projection to ``+-proj_clip`` (3 and 3), a
  residual connection around every layer but the first, and dropout on each layer's input and
  on the top output. The clipped cell runs as a step loop over time inside ``forward`` (both
  directions at once, one batched matmul per step); ``clip=False`` uses ``nn.LSTM`` with
  ``proj_size`` instead (cuDNN on GPUs, much faster, but no clipping).
* **Directions**: the forward LM reads left to right, the backward LM reads each row reversed
  (its real tokens only, so padding always comes *after* the real tokens in both reading
  orders and can never reach them). Both share the token encoder and the softmax.

Saved format (:meth:`ElmoBiLM.save_pretrained`): a folder with ``config.json`` (the
:class:`ElmoConfig` fields plus ``"model_type": "plmkit-elmo"``), ``model.safetensors`` (all
weights, the character table included, names as in :meth:`state_dict`) and the tokenizer
files (``tokenizer.json`` ...) written beside them by the export.
:class:`ElmoEmbedder` loads such a folder for downstream use.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MODEL_TYPE = "plmkit-elmo"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

# Character ids. Bytes of the token's UTF-8 spelling are 1..256 (byte + 1); 0 pads the row.
PAD_CHAR = 0
BOW_CHAR = 257  # begin of a word-initial token
EOW_CHAR = 258  # end of token
BOW_CONTINUATION_CHAR = 259  # begin of a word-internal piece (WordPiece "##ing", no "##")
FIRST_SPECIAL_CHAR = 260  # [PAD] [UNK] [CLS] [SEP] [MASK] ... get 260, 261, ...

DEFAULT_FILTERS = [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]]


@dataclass
class ElmoConfig:
    """Sizes of an ELMo biLM (defaults: the original ELMo of METHODS.md).

    Args:
        vocab_size: entries of the tokenizer vocabulary (softmax size and char-table rows).
        num_chars: size of the character vocabulary (bytes, markers, one per special token).
        char_embedding_dim: character embedding size.
        max_characters_per_token: characters per token row, markers included.
        filters: ``[width, count]`` of each character convolution.
        num_highway: highway layers after the CNN.
        projection_dim: token representation size and LSTM projection size.
        lstm_dim: LSTM cell size.
        num_layers: LSTM layers per direction.
        cell_clip: clip of the LSTM cell state (``None``: none).
        proj_clip: clip of the projected LSTM output (``None``: none).
        clip: run the clipped cell loop; ``False``: ``nn.LSTM(proj_size=...)``, unclipped.
        residual: residual connection around every LSTM layer but the first.
        dropout: dropout on LSTM inputs and on the top output.
        activation: activation of the character CNN (``relu`` or ``tanh``).
    """

    vocab_size: int = 8192
    num_chars: int = FIRST_SPECIAL_CHAR + 8
    char_embedding_dim: int = 16
    max_characters_per_token: int = 50
    filters: list[list[int]] = field(default_factory=lambda: [list(f) for f in DEFAULT_FILTERS])
    num_highway: int = 2
    projection_dim: int = 512
    lstm_dim: int = 4096
    num_layers: int = 2
    cell_clip: float | None = 3.0
    proj_clip: float | None = 3.0
    clip: bool = True
    residual: bool = True
    dropout: float = 0.1
    activation: str = "relu"

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": MODEL_TYPE, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ElmoConfig:
        data = {k: v for k, v in data.items() if k != "model_type"}
        return cls(**data)


# ----------------------------------------------------------------------------- char table
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted (for byte-level BPE token strings)."""
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    return {v: k for k, v in bytes_to_unicode().items()}


def token_spelling(token: str, kind: str, byte_decoder: dict[str, int] | None = None):
    """``(bytes, is_continuation)`` of one vocabulary entry for the char CNN.

    WordPiece: a leading ``##`` marks a word-internal piece; it is stripped and the piece
    starts with the continuation marker instead (so ``##ing`` and ``ing`` stay distinct and
    no characters are spent on ``#``). Unigram/Metaspace (``▁``) and byte-level BPE (``Ġ``):
    the word-start marker is stripped, and a piece without it is a continuation.
    """
    if kind == "wordpiece":
        if token.startswith("##") and len(token) > 2:
            return token[2:].encode("utf-8"), True
        return token.encode("utf-8"), False
    if kind == "bytelevel":
        assert byte_decoder is not None
        start = token.startswith("Ġ")
        raw = bytes(byte_decoder.get(ch, ord("?") & 0xFF) for ch in (token[1:] if start else token))
        return raw, not start
    if token.startswith("▁"):
        return token[1:].encode("utf-8"), False
    return token.encode("utf-8"), True


def _tokenizer_kind(tokenizer: Any) -> str:
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state.get("model", {}).get("type", "")
    pre = json.dumps(state.get("pre_tokenizer") or {})
    if model == "WordPiece":
        return "wordpiece"
    if "ByteLevel" in pre:
        return "bytelevel"
    return "metaspace"


def char_table(tokenizer: Any, max_characters: int = 50) -> tuple[Tensor, int]:
    """The (vocab, max_characters) character ids of every token id, and the char vocab size.

    A row is ``[begin marker] bytes... [end marker] 0 0 ...`` (bilm-tf's
    ``UnicodeCharsVocabulary``, with byte + 1 as the id and 0 as padding); spellings longer
    than ``max_characters - 2`` bytes are cut. A special token (``[CLS]`` plays bilm-tf's
    ``<S>``, ``[SEP]`` its ``</S>``) is ``[BOW] [its own reserved char] [EOW]``.
    """
    if max_characters < 3:
        raise ValueError(f"max_characters must be at least 3, got {max_characters}")
    kind = _tokenizer_kind(tokenizer)
    decoder = _byte_decoder() if kind == "bytelevel" else None
    vocab_size = len(tokenizer)
    special_ids = sorted(set(tokenizer.all_special_ids))
    special_rank = {tid: k for k, tid in enumerate(special_ids)}
    table = torch.zeros((vocab_size, max_characters), dtype=torch.long)
    tokens = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
    for tid, token in enumerate(tokens):
        if tid in special_rank:
            row = [BOW_CHAR, FIRST_SPECIAL_CHAR + special_rank[tid], EOW_CHAR]
        else:
            raw, continuation = token_spelling(token or "", kind, decoder)
            row = [BOW_CONTINUATION_CHAR if continuation else BOW_CHAR]
            row += [b + 1 for b in raw[: max_characters - 2]] + [EOW_CHAR]
        table[tid, : len(row)] = torch.tensor(row)
    return table, FIRST_SPECIAL_CHAR + len(special_ids)


# ----------------------------------------------------------------------------- modules
class Highway(nn.Module):
    """``y = g * x + (1 - g) * relu(W x)`` with ``g = sigmoid(W_g x)`` (carry bias +1)."""

    def __init__(self, dim: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, 2 * dim) for _ in range(num_layers))
        for layer in self.layers:
            nn.init.constant_(layer.bias[dim:], 1.0)  # start by carrying the input

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            transform, gate = layer(x).chunk(2, dim=-1)
            gate = torch.sigmoid(gate)
            x = gate * x + (1.0 - gate) * F.relu(transform)
        return x


class CharCNNEncoder(nn.Module):
    """Token ids -> character CNN -> highway -> projection (``projection_dim``)."""

    def __init__(self, config: ElmoConfig) -> None:
        super().__init__()
        self.char_embedding = nn.Embedding(config.num_chars, config.char_embedding_dim)
        self.convs = nn.ModuleList(
            nn.Conv1d(config.char_embedding_dim, count, width) for width, count in config.filters
        )
        total = sum(count for _, count in config.filters)
        self.highway = Highway(total, config.num_highway)
        self.projection = nn.Linear(total, config.projection_dim)
        self.activation = torch.tanh if config.activation == "tanh" else F.relu

    def forward(self, chars: Tensor) -> Tensor:
        """(N, max_characters) char ids -> (N, projection_dim)."""
        x = self.char_embedding(chars).transpose(1, 2)  # (N, dim, chars)
        pooled = [self.activation(conv(x).max(dim=2).values) for conv in self.convs]
        return self.projection(self.highway(torch.cat(pooled, dim=1)))


class ElmoLstmLayer(nn.Module):
    """One biLSTM layer: both directions, each an LSTM cell with projection and clipping.

    Inputs are (2, B, T, in): direction 0 in reading order, direction 1 already reversed.
    The clipped path precomputes the input projections of all steps with one matmul and runs
    one batched matmul per time step for both directions (a Python loop over T: slower than
    cuDNN, the price of the clipping). ``clip=False`` runs two ``nn.LSTM(proj_size=...)``.
    """

    def __init__(self, config: ElmoConfig, input_dim: int) -> None:
        super().__init__()
        hidden, proj = config.lstm_dim, config.projection_dim
        self.hidden, self.proj = hidden, proj
        self.cell_clip, self.proj_clip = config.cell_clip, config.proj_clip
        self.clip = config.clip
        if self.clip:
            self.weight_ih = nn.Parameter(torch.empty(2, input_dim, 4 * hidden))
            self.weight_hh = nn.Parameter(torch.empty(2, proj, 4 * hidden))
            self.bias = nn.Parameter(torch.zeros(2, 1, 4 * hidden))
            self.weight_proj = nn.Parameter(torch.empty(2, hidden, proj))
            bound_i, bound_h = input_dim**-0.5, proj**-0.5
            nn.init.uniform_(self.weight_ih, -bound_i, bound_i)
            nn.init.uniform_(self.weight_hh, -bound_h, bound_h)
            nn.init.uniform_(self.weight_proj, -(hidden**-0.5), hidden**-0.5)
            with torch.no_grad():
                self.bias[:, :, hidden : 2 * hidden] = 1.0  # forget bias 1, as TF's LSTMCell
        else:
            self.lstms = nn.ModuleList(
                nn.LSTM(input_dim, hidden, batch_first=True, proj_size=proj) for _ in range(2)
            )

    def forward(self, x: Tensor) -> Tensor:
        """(2, B, T, in) -> (2, B, T, proj)."""
        if not self.clip:
            return torch.stack([lstm(x[d])[0] for d, lstm in enumerate(self.lstms)])
        batch = x.shape[1]
        gates_x = torch.matmul(x, self.weight_ih.unsqueeze(1)) + self.bias.unsqueeze(1)
        h = x.new_zeros(2, batch, self.proj)
        c = x.new_zeros(2, batch, self.hidden)
        outputs = []
        # unbind once: indexing one step at a time would make autograd zero-fill a whole
        # (2, B, T, 4H) gradient per step in the backward pass
        for gates_t in gates_x.unbind(dim=2):
            gates = gates_t + torch.bmm(h, self.weight_hh)
            i, f, g, o = gates.chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            if self.cell_clip is not None:
                c = c.clamp(-self.cell_clip, self.cell_clip)
            h = torch.bmm(torch.sigmoid(o) * torch.tanh(c), self.weight_proj)
            if self.proj_clip is not None:
                h = h.clamp(-self.proj_clip, self.proj_clip)
            outputs.append(h)
        return torch.stack(outputs, dim=2)


def reverse_index(lengths: Tensor, width: int) -> Tensor:
    """(B, width) index that reverses the first ``lengths[b]`` positions of each row."""
    positions = torch.arange(width, device=lengths.device).unsqueeze(0)
    flipped = lengths.unsqueeze(1) - 1 - positions
    return torch.where(positions < lengths.unsqueeze(1), flipped, positions)


def _gather_time(x: Tensor, index: Tensor) -> Tensor:
    """x (B, T, D) reordered along T by index (B, T)."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class ElmoBiLM(nn.Module):
    """The ELMo bidirectional language model: token encoder, biLSTM, shared softmax."""

    def __init__(self, config: ElmoConfig, chars: Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        if chars is None:
            shape = (config.vocab_size, config.max_characters_per_token)
            chars = torch.zeros(shape, dtype=torch.long)
        self.register_buffer("chars", chars.clone())
        self.token_encoder = CharCNNEncoder(config)
        dim = config.projection_dim
        self.layers = nn.ModuleList(ElmoLstmLayer(config, dim) for _ in range(config.num_layers))
        self.dropout = nn.Dropout(config.dropout)
        self.softmax = nn.Linear(dim, config.vocab_size)

    def encode_tokens(self, input_ids: Tensor) -> Tensor:
        """(B, T) ids -> (B, T, projection_dim); the CNN runs once per distinct id.

        The character rows are cut to the longest spelling in the batch plus the widest
        filter: every window that touches a character is kept and at least one all-padding
        window remains, so the max-pooled features are exactly those of the full rows.
        """
        unique, inverse = torch.unique(input_ids, return_inverse=True)
        chars = self.chars[unique]
        widest = max(width for width, _ in self.config.filters)
        longest = int((chars != PAD_CHAR).sum(dim=1).max().item()) if len(chars) else 0
        chars = chars[:, : min(chars.shape[1], max(longest + widest, widest))]
        return self.token_encoder(chars)[inverse]

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> dict[str, Any]:
        """Run both LMs over right-padded rows.

        Returns a dict with ``token`` (B, T, P): the token representation, and ``forward`` /
        ``backward``: lists of ``num_layers`` (B, T, P) layer outputs, both in the input's
        position order (the backward states are flipped back). Positions past a row's length
        hold unused values.
        """
        batch, width = input_ids.shape
        if attention_mask is None:
            lengths = torch.full((batch,), width, device=input_ids.device, dtype=torch.long)
        else:
            lengths = attention_mask.long().sum(dim=1)
        index = reverse_index(lengths, width)
        token = self.encode_tokens(input_ids)
        x = torch.stack([token, _gather_time(token, index)])
        forward, backward = [], []
        for k, layer in enumerate(self.layers):
            out = layer(self.dropout(x))
            if self.config.residual and k > 0:
                out = out + x
            x = out
            forward.append(out[0])
            backward.append(_gather_time(out[1], index))  # reversing is its own inverse
        return {"token": token, "forward": forward, "backward": backward}

    # --------------------------------------------------------------------------- saving
    def save_pretrained(self, out_dir: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` to ``out_dir``."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ElmoBiLM:
        """Load a folder written by :meth:`save_pretrained` (eval mode)."""
        from safetensors.torch import load_file

        folder = Path(path)
        config = ElmoConfig.from_dict(json.loads((folder / CONFIG_NAME).read_text()))
        state = load_file(str(folder / WEIGHTS_NAME))
        model = cls(config, state["chars"])
        model.load_state_dict(state)
        return model.eval()


# ----------------------------------------------------------------------------- downstream
class ScalarMix(nn.Module):
    """``gamma * sum_j softmax(w)_j * h_j`` with trainable ``w`` (init 0) and ``gamma`` (1)."""

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_layers))
        self.gamma = nn.Parameter(torch.ones(()))

    def forward(self, layers: Tensor) -> Tensor:
        """layers (num_layers, ..., dim) -> (..., dim)."""
        w = torch.softmax(self.weights, dim=0).view(-1, *([1] * (layers.dim() - 1)))
        return self.gamma * (w * layers).sum(dim=0)


class ElmoEmbedder(nn.Module):
    """ELMo representations for downstream use: a frozen biLM and trainable scalar mixes.

    ``ElmoEmbedder.from_pretrained(path)`` loads a folder written by ``plmkit export`` (the
    tokenizer too). Feed it what the tokenizer returns (``[CLS] ... [SEP]``, right-padded)::

        embedder = ElmoEmbedder.from_pretrained("out/")
        batch = embedder.tokenizer(["a dog", "a big dog"], return_tensors="pt", padding=True)
        out = embedder(batch["input_ids"], batch["attention_mask"])
        out["layers"]   # (L + 1, B, T, 2P): [x; x], then [fwd_j; bwd_j] for j = 1..L
        out["elmo"]     # list of (B, T, 2P) scalar mixes, one per requested output

    The ``L + 1`` layers hold ELMo's 2L + 1 representations: the token representation ``x``
    (repeated for both directions, as in the paper) and the L forward and L backward states,
    concatenated per layer. ``out["representations"]`` gives them separately.

    Args:
        bilm: the trained biLM.
        tokenizer: its tokenizer (optional; only for convenience).
        num_output_representations: how many independent scalar mixes to learn.
        requires_grad: fine-tune the biLM too (default: frozen, as in the paper).
    """

    def __init__(
        self,
        bilm: ElmoBiLM,
        tokenizer: Any = None,
        num_output_representations: int = 1,
        requires_grad: bool = False,
    ) -> None:
        super().__init__()
        self.bilm, self.tokenizer = bilm, tokenizer
        for p in self.bilm.parameters():
            p.requires_grad_(requires_grad)
        num_layers = bilm.config.num_layers + 1
        self.scalar_mixes = nn.ModuleList(
            ScalarMix(num_layers) for _ in range(num_output_representations)
        )

    @property
    def output_dim(self) -> int:
        return 2 * self.bilm.config.projection_dim

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> ElmoEmbedder:
        """Load the biLM and (when present) the tokenizer from an exported folder."""
        tokenizer = None
        folder = Path(path)
        if (folder / "tokenizer.json").exists() or (folder / "tokenizer_config.json").exists():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(path))
        return cls(ElmoBiLM.from_pretrained(path), tokenizer, **kwargs)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> dict[str, Any]:
        if attention_mask is not None:
            lengths = attention_mask.long().sum(dim=1, keepdim=True)
            prefix = torch.arange(input_ids.shape[1], device=input_ids.device) < lengths
            if not torch.equal(prefix, attention_mask.bool()):
                raise ValueError("ElmoEmbedder needs right-padded rows (padding_side='right')")
        out = self.bilm(input_ids, attention_mask)
        token = out["token"]
        layers = [torch.cat([token, token], dim=-1)]
        layers += [torch.cat([f, b], dim=-1) for f, b in zip(out["forward"], out["backward"])]
        stacked = torch.stack(layers)
        if attention_mask is not None:
            stacked = stacked * attention_mask.unsqueeze(0).unsqueeze(-1).to(stacked.dtype)
        return {
            "layers": stacked,
            "elmo": [mix(stacked) for mix in self.scalar_mixes],
            "representations": out,
            "mask": attention_mask,
        }
