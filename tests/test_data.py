"""Data pipeline: corpus readers, tokenizer, tokenize-once cache, packing, loader state."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from plmkit.data.corpus import load_documents
from plmkit.data.datamodule import PretrainDataModule
from plmkit.data.loader import POSITION_KEY, ResumableLoader
from plmkit.data.packing import BlockDataset, pack
from plmkit.data.preprocess import tokenize_corpus
from plmkit.data.tokenizer import load_tokenizer, train_tokenizer
from plmkit.errors import PlmkitError


def _texts(docs):
    return [text for text, _ in docs]


DOCS = ["The cat sat.\nIt purred.", "Dogs bark loudly.\nThey run.\nThey sleep.", "One line."]


def test_txt_paragraphs_lines_gzip_folder_glob(tmp_path: Path):
    text = "\n\n".join(DOCS) + "\n"
    (tmp_path / "a.txt").write_text(text)
    with gzip.open(tmp_path / "b.txt.gz", "wt") as f:
        f.write(text)
    assert _texts(load_documents(str(tmp_path / "a.txt"))) == DOCS
    assert len(load_documents(str(tmp_path / "a.txt"), line_per_document=True)) == 6
    assert _texts(load_documents(str(tmp_path / "b.txt.gz"))) == DOCS
    assert len(load_documents(str(tmp_path))) == 6  # a folder: both files
    assert len(load_documents(str(tmp_path / "*.txt*"))) == 6  # a glob
    assert len(load_documents([str(tmp_path / "a.txt"), str(tmp_path / "b.txt.gz")])) == 6


def test_jsonl_parquet_and_saved_dataset(tmp_path: Path):
    rows = [{"body": d, "id": i} for i, d in enumerate(DOCS)]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert _texts(load_documents(str(tmp_path / "c.jsonl"), text_field="body")) == DOCS
    with pytest.raises(PlmkitError, match="text_field"):
        load_documents(str(tmp_path / "c.jsonl"))
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    assert _texts(load_documents(str(tmp_path / "d.parquet"), text_field="body")) == DOCS
    ds.rename_column("body", "text").save_to_disk(str(tmp_path / "saved"))
    assert _texts(load_documents(str(tmp_path / "saved"))) == DOCS


def test_undecodable_bytes_are_replaced_and_counted(tmp_path: Path, caplog):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9 ok\n\nna\u00efve text\n".encode("latin-1"))
    with caplog.at_level(logging.WARNING, logger="plmkit"):
        docs = load_documents(str(path))
    assert len(docs) == 2 and "\ufffd" in docs[0][0]
    assert any("2 undecodable" in r.getMessage() for r in caplog.records)


def test_bad_corpus_paths(tmp_path: Path):
    with pytest.raises(PlmkitError, match="does not exist"):
        load_documents(str(tmp_path / "missing.txt"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(PlmkitError, match="cannot read corpus file"):
        load_documents(str(tmp_path / "x.csv"))


def test_tokenizer_types_and_loading(tmp_path: Path, documents):
    for kind in ("wordpiece", "bpe", "unigram"):
        tok = train_tokenizer(documents[:300], kind, 500, show_progress=False)
        assert len(tok) <= 500 + 5
        assert tok.mask_token == "[MASK]" and tok.pad_token_id is not None
        enc = tok("a dog barks", add_special_tokens=False)
        assert enc.input_ids and None not in enc.word_ids()
        tok.save_pretrained(str(tmp_path / kind))
        again = load_tokenizer(tmp_path / kind)
        assert again("a dog barks").input_ids == tok("a dog barks").input_ids
        assert load_tokenizer(tmp_path / kind / "tokenizer.json").mask_token == "[MASK]"
    with pytest.raises(PlmkitError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")


class _StubObjective:
    packing = "document"

    def special_tokens(self):
        return []


def test_tokenized_corpus_is_cached(tmp_path: Path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(DOCS * 50))
    dm = PretrainDataModule(corpus=str(corpus), vocab_size=300, cache_dir=str(tmp_path / "c"))
    first = dm.prepare(_StubObjective())
    assert dm.cache_hit is False
    dm2 = PretrainDataModule(corpus=str(corpus), vocab_size=300, cache_dir=str(tmp_path / "c"))
    second = dm2.prepare(_StubObjective())
    assert dm2.cache_hit is True
    assert len(first.shards) == len(second.shards) == 1
    assert np.array_equal(first.shards[0].ids, second.shards[0].ids)
    assert first.num_documents == 150
    # a change to the corpus invalidates the cache
    corpus.write_text("\n\n".join(DOCS * 51))
    dm3 = PretrainDataModule(corpus=str(corpus), vocab_size=300, cache_dir=str(tmp_path / "c"))
    assert dm3.prepare(_StubObjective()).num_documents == 153 and dm3.cache_hit is False


@pytest.fixture(scope="module")
def tokenized(documents, tokenizer):
    ds = datasets.Dataset.from_dict({"text": documents[:200]})
    return tokenize_corpus(ds, tokenizer.backend_tokenizer, num_proc=1)


def test_tokenized_offsets_are_consistent(tokenized, documents):
    assert tokenized.num_documents == 200
    assert tokenized.sent_offsets[-1] == len(tokenized.ids)
    sentences_per_doc = np.diff(tokenized.doc_offsets)
    expected = [len([ln for ln in d.split("\n") if ln.strip()]) for d in documents[:200]]
    assert sentences_per_doc.tolist() == expected
    assert tokenized.word_start[tokenized.sent_offsets[:-1]].all()  # sentences start words


def _sentence_starts(blocks) -> np.ndarray:
    starts = np.ones(len(blocks.ids), dtype=bool)
    starts[1:] = blocks.sent_index[1:] != blocks.sent_index[:-1]
    return starts


def test_document_packing_fills_blocks_with_whole_sentences(tokenized):
    blocks = pack(tokenized, np.arange(200), 50, "document", min_length=1)
    ds = BlockDataset(blocks)
    # every token exactly once, in order
    assert blocks.starts[0] == 0 and blocks.ends[-1] == len(tokenized.ids)
    assert np.array_equal(blocks.starts[1:], blocks.ends[:-1])
    assert (blocks.ends - blocks.starts).max() <= 50
    # one document per block; doc_ids are the corpus's document index
    doc_starts, _ = tokenized.doc_token_bounds()
    first_doc = np.searchsorted(doc_starts, blocks.starts, side="right") - 1
    for i in range(len(ds)):
        assert set(ds[i]["doc_ids"].tolist()) == {first_doc[i]}
    # blocks start at sentence starts and hold whole sentences, as many as fit; only a
    # sentence longer than a block is cut
    sentence_of = np.searchsorted(tokenized.sent_offsets, blocks.starts, side="right") - 1
    sentence_length = np.diff(tokenized.sent_offsets)
    at_start = _sentence_starts(blocks)[blocks.starts]
    assert (at_start | (sentence_length[sentence_of] > 50)).all()
    assert 0 < (~at_start).sum() < 0.02 * len(ds)
    following = np.searchsorted(tokenized.sent_offsets, blocks.ends[:-1], side="right") - 1
    whole = (tokenized.sent_offsets[following] == blocks.ends[:-1])
    whole &= (first_doc[1:] == first_doc[:-1]) & (sentence_length[following] <= 50)
    sentences = np.searchsorted(tokenized.sent_offsets, blocks.ends) - sentence_of
    gave = sentences[1:] == 2  # (or it gave its last sentence to a one-sentence block)
    grown = tokenized.sent_offsets[following + 1] - blocks.starts[:-1]
    assert (whole & ~gave).sum() > 100 and (grown[whole & ~gave] > 50).all()  # would not fit
    item = ds[0]
    assert item["word_ids"][0] == 0 and (item["word_ids"].diff() >= 0).all()
    assert item["sentence_ids"][0] == 0


def _toy_corpus(*documents: list[int]):
    """Documents given as sentence lengths (default: 3, 4, 12, 2 tokens, then 5, 1); inside
    a sentence of 12 tokens a word starts at every other token."""
    from plmkit.data.preprocess import TokenizedCorpus

    documents = documents or ([3, 4, 12, 2], [5, 1])
    lengths = [n for document in documents for n in document]
    sent_offsets = np.concatenate([[0], np.cumsum(lengths)])
    word_start = np.ones(sent_offsets[-1], dtype=np.uint8)
    for start, n in zip(sent_offsets, lengths):
        if n == 12:
            word_start[start : start + n] = np.arange(n) % 2 == 0
    doc_offsets = np.concatenate([[0], np.cumsum([len(d) for d in documents])])
    return TokenizedCorpus(ids=np.arange(100, 100 + sent_offsets[-1], dtype=np.int32),
                           word_start=word_start, sent_offsets=sent_offsets,
                           doc_offsets=doc_offsets)


def test_only_a_sentence_longer_than_a_block_is_cut_at_word_starts():
    blocks = pack(_toy_corpus(), np.arange(2), 5, "document", min_length=1)
    cut = list(zip(blocks.starts.tolist(), blocks.ends.tolist()))
    # the long sentence (7, 19) is cut after 4 and 8 tokens, where words start
    assert cut == [(0, 3), (3, 7), (7, 11), (11, 15), (15, 19), (19, 21), (21, 26), (26, 27)]
    # the default min_length drops the one-token block
    assert len(pack(_toy_corpus(), np.arange(2), 5, "document")) == 7


def test_a_one_sentence_block_takes_a_sentence_from_the_block_before():
    # greedy: (0, 6) and a tail of one sentence (6, 8); the tail takes the sentence (4, 6)
    blocks = pack(_toy_corpus([2, 2, 2, 2], [2, 2, 2]), np.arange(2), 7, "document")
    assert list(zip(blocks.starts.tolist(), blocks.ends.tolist())) == [
        (0, 4), (4, 8), (8, 14)]
    # not when the block before would be left with one sentence, nor across documents
    blocks = pack(_toy_corpus([3, 3, 2], [2, 2]), np.arange(2), 7, "document")
    assert list(zip(blocks.starts.tolist(), blocks.ends.tolist())) == [
        (0, 6), (6, 8), (8, 12)]


def test_sentences_packing_fills_blocks_across_documents():
    blocks = pack(_toy_corpus(), np.arange(2), 5, "sentences", separator_id=3)
    cut = list(zip(blocks.starts.tolist(), blocks.ends.tolist()))
    # a separator closes each document (positions 21 and 28) as part of its last sentence
    assert blocks.ids[21] == 3 and blocks.ids[28] == 3
    assert cut == [(0, 3), (3, 7), (7, 11), (11, 15), (15, 19), (19, 22), (22, 27), (27, 29)]
    crossing = pack(_toy_corpus(), np.arange(2), 12, "sentences", separator_id=3)
    assert list(zip(crossing.starts.tolist(), crossing.ends.tolist())) == [
        (0, 7), (7, 19), (19, 29)]
    assert BlockDataset(crossing)[2]["doc_ids"].tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="separator"):
        pack(_toy_corpus(), np.arange(2), 5, "sentences")


def test_sentences_packing_on_a_real_corpus(tokenized):
    blocks = pack(tokenized, np.arange(200), 64, "sentences", separator_id=3)
    ds = BlockDataset(blocks)
    lengths = blocks.ends - blocks.starts
    assert lengths.max() <= 64 and np.array_equal(blocks.starts[1:], blocks.ends[:-1])
    assert int((blocks.ids == 3).sum()) == 200  # one separator per document
    assert _sentence_starts(blocks)[blocks.starts].mean() > 0.98  # else a long sentence
    assert lengths[:-1].mean() > 50  # blocks are filled up to a sentence (~10 tokens here)
    assert any(len(set(ds[i]["doc_ids"].tolist())) > 1 for i in range(len(ds)))


def test_stream_packing_fills_blocks_with_separators(tokenized):
    blocks = pack(tokenized, np.arange(200), 64, "stream", separator_id=3)
    ds = BlockDataset(blocks)
    lengths = {len(ds[i]["input_ids"]) for i in range(len(ds))}
    assert lengths == {64}
    joined = torch.cat([ds[i]["input_ids"] for i in range(len(ds))])
    assert int((joined == 3).sum()) >= len(ds) * 64 // (len(tokenized.ids) // 200 + 1) - 1
    assert any(len(set(ds[i]["doc_ids"].tolist())) > 1 for i in range(len(ds)))
    with pytest.raises(ValueError, match="unknown packing mode"):
        pack(tokenized, np.arange(200), 64, "lines")


def _ids_loader(n: int, batch: int, rank: int = 0, world: int = 1, **kw) -> ResumableLoader:
    data = [{"input_ids": torch.tensor([i])} for i in range(n)]
    return ResumableLoader(data, lambda ex: {"ids": torch.cat([e["input_ids"] for e in ex])},
                           batch, seed=5, rank=rank, world_size=world, **kw)


def _epoch(loader: ResumableLoader) -> list[torch.Tensor]:
    out = []
    for batch in loader:
        loader.mark_consumed(batch.pop(POSITION_KEY))
        out.append(batch["ids"])
    return out


def test_loader_shards_ranks_disjointly_and_resumes():
    ranks = [_epoch(_ids_loader(103, 4, rank=r, world=2)) for r in range(2)]
    seen = [torch.cat(r).tolist() for r in ranks]
    assert not set(seen[0]) & set(seen[1])
    assert len(seen[0]) == len(seen[1]) == (103 // 8) * 4
    full = _ids_loader(103, 4)
    epoch0, epoch1 = _epoch(full), _epoch(full)
    assert [b.tolist() for b in epoch0] != [b.tolist() for b in epoch1]  # reshuffled per epoch
    resumed = _ids_loader(103, 4)
    it = iter(resumed)
    for _ in range(7):
        resumed.mark_consumed(next(it).pop(POSITION_KEY))
    state = resumed.state_dict()
    fresh = _ids_loader(103, 4)
    fresh.load_state_dict(state)
    rest = _epoch(fresh)
    assert [b.tolist() for b in rest] == [b.tolist() for b in epoch0[7:]]


def test_validation_split_is_deterministic_and_disjoint():
    dm = PretrainDataModule(val_fraction=0.1, seed=3)
    train, val = dm.split_documents(1000)
    again = PretrainDataModule(val_fraction=0.1, seed=3).split_documents(1000)
    assert np.array_equal(val, again[1]) and not (train & val).any() and (train | val).all()
    assert 50 < val.sum() < 150
