"""BERT's collator: masked-LM corruption (15%, 80/10/10) and next-sentence pairs.

Follows google-research/bert ``create_pretraining_data.py``, whose rules are the defaults of
:class:`plmkit.mlm.MlmCollator`: an exact budget of ``min(max_predictions, max(1, round(n *
0.15)))`` tokens per sequence, where ``n`` is the length of the whole input, ``[CLS]`` and
``[SEP]`` included (the reference's ``len(tokens)``), although those are never chosen
(``exact_count=False`` draws Bernoulli(0.15) per non-special token as Hugging Face does);
optional whole-word masking from word ids, special tokens and padding never masked, and NSP
pairs with 50% random-document negatives and ``short_seq_prob`` 0.1. ``max_predictions``
(the reference's ``max_predictions_per_seq`` flag, which it leaves to the user) defaults to
:func:`~plmkit.mlm.default_max_predictions`: 20 at 128, 80 at 512. Importable without
Lightning.
"""

from __future__ import annotations

from plmkit.mlm import MlmCollator


class BertCollator(MlmCollator):
    """Masked LM + next-sentence batches; the arguments and defaults of
    :class:`~plmkit.mlm.MlmCollator` (``sentence_task="nsp"``, ``short_seq_prob=0.1``)."""
