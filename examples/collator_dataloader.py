"""Use a plmkit collator in a plain PyTorch ``DataLoader`` and training loop (no Lightning).

Run it with ``python examples/collator_dataloader.py``; it trains a tokenizer on 2,000
sentences of the bundled corpus, masks them with ``BertCollator`` (whole-word masking, no
sentence task) in a ``DataLoader`` with two worker processes, and takes a few optimizer steps
on a tiny ``transformers.BertForMaskedLM``.
"""

import gzip

import torch
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForMaskedLM

from plmkit.config import MaskingConfig
from plmkit.data.tokenizer import train_tokenizer
from plmkit.data.wordnet import corpus_path
from plmkit.plugins.bert import BertCollator


def read_sentences(n: int) -> list[str]:
    """The first ``n`` sentences of the bundled WordNet corpus (one per line)."""
    with gzip.open(corpus_path(), "rt", encoding="utf-8") as f:
        lines = (line.strip() for line in f)
        return [line for line, _ in zip(filter(None, lines), range(n))]


def main() -> None:
    torch.manual_seed(0)
    texts = read_sentences(2000)
    # Any PreTrainedTokenizerFast with [CLS] [SEP] [PAD] [MASK] works, e.g. one saved by
    # 'plmkit tokenizer train' and loaded with AutoTokenizer.from_pretrained(folder).
    tokenizer = train_tokenizer(texts, "wordpiece", vocab_size=2000, show_progress=False)

    # Examples hold token ids WITHOUT special tokens; the collator adds [CLS] ... [SEP].
    examples = []
    for text in texts:
        enc = tokenizer(text, add_special_tokens=False, truncation=True, max_length=62)
        word_ids = [-1 if w is None else w for w in enc.word_ids()]
        examples.append({"input_ids": enc["input_ids"], "word_ids": word_ids})

    collator = BertCollator(
        tokenizer, max_length=64, masking=MaskingConfig(whole_word=True), sentence_task=None,
        seed=0,
    )
    # Each worker draws its own masks (seed + worker id); the same seed gives the same run.
    loader = DataLoader(examples, batch_size=32, shuffle=True, num_workers=2,
                        collate_fn=collator)

    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=256,
                        max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    model = BertForMaskedLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    for step, batch in enumerate(loader):
        masked = (batch["labels"] != -100).sum().item()
        real = batch["attention_mask"].sum().item()
        loss = model(**batch).loss  # input_ids, attention_mask, token_type_ids, labels
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        print(f"step {step}: batch {tuple(batch['input_ids'].shape)}, "
              f"{masked / real:.1%} of tokens predicted, loss {loss.item():.3f}")
        if step == 4:
            break
    print("ok: collator_dataloader")


if __name__ == "__main__":  # the guard matters: DataLoader workers import this module
    main()
