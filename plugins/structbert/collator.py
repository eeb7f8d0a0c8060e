"""StructBERT's collator: BERT masking + word structural objective + 3-way sentence objective.

Wang et al. 2019 (arXiv 1908.04577); no official pretraining code exists, so this follows the
paper and ``/work/shared/METHODS.md``:

* **MLM** exactly as BERT (:class:`~plmkit.mlm.MlmCollator`: 15%, 80/10/10, exact count).
* **Word structural objective (WSO)**: among the tokens BERT left unmasked, 5% of the
  trigrams (``K = 3``) are chosen and the tokens of each are shuffled; the model recovers the
  original token at every shuffled position (``wso_labels``, -100 elsewhere). Definitions:

  - an *eligible trigram* is a window of ``K`` consecutive tokens none of which was
    selected for MLM or is a special token (so it never touches a masked / randomly replaced
    / kept-for-MLM token, nor ``[CLS]``/``[SEP]``/padding/``[UNK]``, and never crosses the
    segment boundary), whose tokens are **not all equal** (no permutation could change it);
  - the number of trigrams shuffled in a row is ``wso_probability`` times its number of
    eligible trigrams, rounded stochastically (so the expected rate is exactly 5% of the
    eligible trigrams); chosen trigrams never overlap (a few vectorized top-up passes keep
    the count exact when random picks collide);
  - each chosen trigram gets a uniformly random permutation among those that **change the
    token sequence** (for distinct tokens: the 5 non-identity permutations; for ``a a b``:
    the permutations that move ``b``). Every one of its ``K`` positions is labelled with its
    original token, including a position whose token happens to stay in place.
* **Sentence structural objective (SSO)** via :func:`plmkit.segments.build_segments` with
  ``task="sso"``: label 0 = B follows A, 1 = B precedes A (swapped), 2 = B from another
  document, 1/3 each (``sso_label``).

Importable without Lightning.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import Tensor

from plmkit.collator import IGNORE_INDEX
from plmkit.masking import greedy_non_overlapping, random_choice, select_exact, window_count
from plmkit.mlm import MlmCollator


class StructBertCollator(MlmCollator):
    """MLM + WSO (shuffled trigrams) + SSO batches; see the module docstring.

    Takes every argument of :class:`~plmkit.mlm.MlmCollator` (the sentence task defaults to
    ``"sso"``; ``None`` trains MLM + WSO on single segments) and:

    Args:
        wso_probability: fraction of the eligible trigrams that are shuffled (paper: 5%).
        wso_ngram: ``K``, the length of a shuffled n-gram (paper: 3; 2..6 supported).
        wso_passes: at most this many passes to place the trigrams without overlap.
    """

    def __init__(self, *args: Any, wso_probability: float = 0.05, wso_ngram: int = 3,
                 wso_passes: int = 4, sentence_task: Any = "sso", **kwargs: Any) -> None:
        super().__init__(*args, sentence_task=sentence_task, **kwargs)
        if not 2 <= wso_ngram <= 6:
            raise ValueError(f"wso_ngram must be in 2..6, got {wso_ngram}")
        if not 0.0 <= wso_probability <= 1.0:
            raise ValueError(f"wso_probability must be in [0, 1], got {wso_probability}")
        self.wso_probability, self.wso_ngram, self.wso_passes = (
            wso_probability, wso_ngram, wso_passes,
        )
        perms = [p for p in itertools.permutations(range(wso_ngram)) if list(p) != sorted(p)]
        self.permutations = torch.tensor(perms, dtype=torch.long)  # (P, K), no identity

    def eligible_windows(self, input_ids: Tensor, eligible: Tensor) -> Tensor:
        """(B, L - K + 1) bool: window starts whose K tokens are eligible and not all equal."""
        k = self.wso_ngram
        windows = input_ids.unfold(1, k, 1)
        all_eligible = eligible.unfold(1, k, 1).all(dim=-1)
        all_equal = (windows == windows[..., :1]).all(dim=-1)
        return all_eligible & ~all_equal

    def choose_ngrams(self, ok: Tensor) -> Tensor:
        """Non-overlapping window starts, ``wso_probability`` of the eligible ones per row."""
        generator, k = self.generator, self.wso_ngram
        expected = ok.sum(dim=1).to(torch.float64) * self.wso_probability
        floor = expected.floor()
        counts = (floor + (torch.rand(len(ok), generator=generator, dtype=torch.float64)
                           < expected - floor).double()).long()
        chosen = torch.zeros_like(ok)
        remaining = counts.clone()
        for _ in range(self.wso_passes):
            taken = window_count(chosen, -(k - 1), 0) > 0  # a token inside a chosen window
            free = ok & ~(window_count(taken, 0, k - 1) > 0)
            active = (remaining > 0) & free.any(dim=1)
            if not bool(active.any()):
                break
            picks = select_exact(free, torch.where(active, remaining, 0), generator)
            chosen |= greedy_non_overlapping(picks, k)
            remaining = counts - chosen.sum(dim=1)
        return chosen

    def shuffle(self, input_ids: Tensor, eligible: Tensor) -> tuple[Tensor, Tensor]:
        """Shuffle ``wso_probability`` of the eligible trigrams; return (ids, wso_labels).

        ``input_ids`` holds the original tokens at the eligible positions; new tensors are
        returned.
        """
        batch, length = input_ids.shape
        k = self.wso_ngram
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        if length < k:
            return input_ids.clone(), labels
        starts = self.choose_ngrams(self.eligible_windows(input_ids, eligible))
        rows, cols = starts.nonzero(as_tuple=True)
        out = input_ids.clone()
        if len(rows) == 0:
            return out, labels
        positions = cols.unsqueeze(1) + torch.arange(k)  # (N, K)
        original = input_ids[rows.unsqueeze(1), positions]  # (N, K)
        permuted = original[:, self.permutations]  # (N, P, K)
        changes = (permuted != original.unsqueeze(1)).any(dim=-1)  # (N, P)
        choice, _ = random_choice(changes, self.generator)
        new = permuted[torch.arange(len(rows)), choice]  # (N, K)
        out[rows.unsqueeze(1), positions] = new
        labels[rows.unsqueeze(1), positions] = original
        return out, labels

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        batch = super().__call__(examples)
        # BERT left the unselected positions with their original tokens
        eligible = batch["attention_mask"].bool() & (batch["labels"] == IGNORE_INDEX)
        eligible &= ~torch.isin(batch["input_ids"], self.special_ids)
        batch["input_ids"], batch["wso_labels"] = self.shuffle(batch["input_ids"], eligible)
        if self.sentence_task == "sso":
            batch["sso_label"] = batch.pop("next_sentence_label")
        return batch
