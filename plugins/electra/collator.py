"""ELECTRA's collator: dynamic masking for the generator, exactly as the original.

Follows google-research/electra ``pretrain/pretrain_helpers.py`` (``mask``):

* inputs are ``[CLS] tokens [SEP]`` (stream-packed blocks of ``max_length - 2`` raw tokens);
* candidates exclude every special token ([CLS], [SEP], [MASK], [PAD], ...) and padding;
* each row gets an exact budget
  ``max(1, min(int((p + 0.005) * max_length), round(n_real * p)))`` where ``n_real`` is the
  number of non-padding tokens *including* [CLS]/[SEP] (the original's ``input_mask`` sum) and
  ``round`` is half-to-even like ``tf.round``: BERT's budget with another default cap;
* of the chosen positions 85% become [MASK] and 15% stay unchanged; there is **no** random
  replacement (the generator's samples play that role).

The original draws the positions *with* replacement (``tf.random.categorical``), so a few
duplicates can make a row's count slightly smaller than the budget; here they are drawn
without replacement so every row gets exactly its budget (capped by its candidate count).

Importable without Lightning: ``from plmkit.plugins.electra import ElectraCollator``.
"""

from __future__ import annotations

from typing import Any

from plmkit.config import MaskingConfig
from plmkit.errors import PlmkitError
from plmkit.mlm import MlmCollator


class ElectraCollator(MlmCollator):
    """Masked inputs for ELECTRA's generator (the discriminator's labels come from its samples).

    Returns ``input_ids`` (masked), ``attention_mask``, ``token_type_ids`` (zeros) and
    ``labels`` (the original id at every chosen position, -100 elsewhere). The original ids
    are ``where(labels != -100, labels, input_ids)``.

    Args:
        masking: ELECTRA's defaults (85% [MASK], 15% unchanged); always an exact count, whose
            ``max_predictions`` default is ``int((p + 0.005) * max_length)`` (19 at 128), as
            the original's ``max_predictions_per_seq``. No whole-word masking.
        **kwargs: ``pad_to_max_length``, ``seed``, ... as
            :class:`~plmkit.mlm.MlmCollator`.
    """

    def __init__(self, tokenizer: Any, max_length: int = 128,
                 masking: MaskingConfig = MaskingConfig(mask_rate=0.85, random_rate=0.0),
                 **kwargs: Any) -> None:
        if masking.whole_word or not masking.exact_count:
            raise PlmkitError("ELECTRA masks single tokens with an exact count: set "
                              "masking.whole_word false and masking.exact_count true")
        super().__init__(tokenizer, max_length, masking, sentence_task=None, short_seq_prob=0.0,
                         skip_inner_specials=True, **kwargs)
        self.max_predictions = masking.max_predictions or max(
            1, int((masking.probability + 0.005) * max_length)
        )
