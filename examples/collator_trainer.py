"""Use a plmkit collator as the ``data_collator`` of a Hugging Face ``Trainer``.

Run it with ``python examples/collator_trainer.py`` (the ``Trainer`` needs ``accelerate``).
``SpanBertCollator`` masks geometric spans of whole words; its batch also carries the span
boundaries for SpanBERT's SBO head, which a plain ``BertForMaskedLM`` does not take, so a
two-line wrapper keeps only what the model accepts.
"""

import gzip
import tempfile

import torch
from transformers import BertConfig, BertForMaskedLM, Trainer, TrainingArguments

from plmkit.data.tokenizer import train_tokenizer
from plmkit.data.wordnet import corpus_path
from plmkit.plugins.spanbert import SpanBertCollator


def read_sentences(n: int) -> list[str]:
    """The first ``n`` sentences of the bundled WordNet corpus (one per line)."""
    with gzip.open(corpus_path(), "rt", encoding="utf-8") as f:
        lines = (line.strip() for line in f)
        return [line for line, _ in zip(filter(None, lines), range(n))]


class MlmOnly:
    """Keep the keys ``BertForMaskedLM.forward`` accepts."""

    keys = ("input_ids", "attention_mask", "token_type_ids", "labels")

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples):
        batch = self.collator(examples)
        return {k: v for k, v in batch.items() if k in self.keys}


def main() -> None:
    torch.manual_seed(0)
    texts = read_sentences(1000)
    tokenizer = train_tokenizer(texts, "wordpiece", vocab_size=2000, show_progress=False)
    examples = []
    for text in texts:
        enc = tokenizer(text, add_special_tokens=False, truncation=True, max_length=62)
        word_ids = [-1 if w is None else w for w in enc.word_ids()]
        examples.append({"input_ids": enc["input_ids"], "word_ids": word_ids})

    collator = SpanBertCollator(tokenizer, max_length=64, seed=0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=256,
                        max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, max_steps=5, per_device_train_batch_size=16, learning_rate=1e-3,
            logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
            remove_unused_columns=False,  # the examples are plain dicts, keep every field
            dataloader_num_workers=0,
        )
        trainer = Trainer(model=BertForMaskedLM(config), args=args, train_dataset=examples,
                          data_collator=MlmOnly(collator))
        result = trainer.train()
    print(f"trained {result.global_step} steps, final loss {result.training_loss:.3f}")
    print("ok: collator_trainer")


if __name__ == "__main__":
    main()
