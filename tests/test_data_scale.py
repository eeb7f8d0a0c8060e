"""The sharded tokenized-corpus cache: shards equal one whole corpus, interrupted builds resume
byte for byte, damage is rebuilt, bad input is one line, and packing works shard by shard."""

from __future__ import annotations

import errno
import filecmp
import json
import random
from pathlib import Path

import numpy as np
import pytest

from plmkit.data import cache as cache_module
from plmkit.data import packing
from plmkit.data.cache import ShardedCorpus, build_cache, load_cache
from plmkit.data.corpus import load_documents, read_documents
from plmkit.data.packing import BlockDataset, Blocks, pack
from plmkit.data.preprocess import tokenize_corpus
from plmkit.errors import PlmkitError

SHARD_BYTES = 20_000  # a few dozen shards from 1,500 bundled documents


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory: pytest.TempPathFactory, documents: list[str]) -> Path:
    path = tmp_path_factory.mktemp("scale") / "corpus.txt"
    path.write_text("\n\n".join(documents) + "\n")
    return path


@pytest.fixture(scope="module")
def whole(corpus_file: Path, tokenizer):
    """The corpus tokenized at once, in memory."""
    return tokenize_corpus(load_documents(str(corpus_file)), tokenizer.backend_tokenizer)


@pytest.fixture(scope="module")
def sharded(corpus_file: Path, tokenizer, tmp_path_factory) -> ShardedCorpus:
    path = tmp_path_factory.mktemp("sharded") / "cache"
    return build_cache(lambda: read_documents(str(corpus_file)), tokenizer.backend_tokenizer,
                       path, num_proc=2, shard_bytes=SHARD_BYTES)


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def test_shards_hold_the_same_tokens_as_the_whole_corpus(whole, sharded):
    assert len(sharded.shards) > 10  # written by two worker processes
    assert sharded.num_documents == whole.num_documents
    assert np.array_equal(np.concatenate([s.ids for s in sharded.shards]), whole.ids)
    assert sharded.shards[0].ids.dtype == np.uint16  # a 2,000-entry vocabulary
    assert np.array_equal(np.concatenate([s.word_start for s in sharded.shards]),
                          whole.word_start)
    for a, b in zip(sharded.doc_token_bounds(), whole.doc_token_bounds()):
        assert np.array_equal(a, b)
    assert sharded.max_id == int(whole.ids.max())


@pytest.mark.parametrize("mode", ["document", "sentences", "stream"])
def test_packing_shard_by_shard_equals_packing_the_whole(whole, sharded, mode, tmp_path,
                                                         monkeypatch):
    # every third document held out, as a validation split would; blocks cross shards (and
    # windows of a few documents inside a shard) in "sentences" and "stream" packing and must
    # come out as if packed at once. The sharded corpus is packed into files (as the
    # DataModule does) from a mask of documents.
    docs = np.flatnonzero(np.arange(whole.num_documents) % 3 != 0)
    a = pack(whole, docs, 48, mode, separator_id=3)
    monkeypatch.setattr(packing, "WINDOW_TOKENS", 150)
    pack(sharded, np.arange(whole.num_documents) % 3 != 0, 48, mode, separator_id=3,
         path=tmp_path / "index")
    b = Blocks.load(tmp_path / "index", sharded)
    assert isinstance(b.starts, np.memmap) and isinstance(b.vstart, np.memmap)
    assert not list((tmp_path / "index").glob("*.bin"))  # no raw piece left behind
    assert np.array_equal(a.starts, b.starts) and np.array_equal(a.ends, b.ends)
    assert np.array_equal(a.vstart, b.vstart) and np.array_equal(a.docs, b.docs)
    assert b.num_tokens == int((np.asarray(a.ends) - np.asarray(a.starts)).sum()) > 0
    first, second = BlockDataset(a), BlockDataset(b)
    for i in range(0, len(first), 37):
        for key, value in first[i].items():
            assert np.array_equal(value, second[i][key]), (i, key)
    # a block's tokens are its documents' tokens, in order (separators aside)
    doc_starts, _ = whole.doc_token_bounds()
    item = second[5]
    doc = int(item["doc_ids"][0])
    start = int(b.starts[5] - b.vstart[np.searchsorted(b.docs, doc)] + doc_starts[doc])
    own = (item["doc_ids"] == doc) & (item["input_ids"] != 3)
    assert np.array_equal(item["input_ids"][own], whole.ids[start:start + int(own.sum())])


def test_an_interrupted_build_resumes_and_is_byte_identical(corpus_file, tokenizer, sharded,
                                                             tmp_path: Path):
    path = tmp_path / "cache"
    written = []

    def stop_after_three(index: int) -> None:
        written.append(index)
        if len(written) == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C

    docs = lambda: read_documents(str(corpus_file))  # noqa: E731
    with pytest.raises(KeyboardInterrupt):
        build_cache(docs, tokenizer.backend_tokenizer, path, shard_bytes=SHARD_BYTES,
                    on_shard=stop_after_three)
    assert load_cache(path) is None  # no manifest: never trained on
    (path / ".tmp-leftover").mkdir()  # a shard being written when the process died
    resumed = []
    build_cache(docs, tokenizer.backend_tokenizer, path, shard_bytes=SHARD_BYTES,
                on_shard=resumed.append)
    assert resumed[0] == 3 and 0 not in resumed  # shards 0-2 were kept
    reference = Path(sharded.shards[0].ids.filename).parent.parent
    assert _tree(path) == _tree(reference)
    for name in _tree(path):
        assert filecmp.cmp(path / name, reference / name, shallow=False), name


def test_a_damaged_shard_is_rebuilt_never_trained_on(corpus_file, tokenizer, tmp_path: Path):
    path = tmp_path / "cache"
    docs = lambda: read_documents(str(corpus_file))  # noqa: E731
    build_cache(docs, tokenizer.backend_tokenizer, path, shard_bytes=SHARD_BYTES * 10)
    ids = path / "shard-00001" / "ids.npy"
    ids.write_bytes(ids.read_bytes()[:-10])  # truncated
    assert load_cache(path) is None
    rebuilt = []
    corpus = build_cache(docs, tokenizer.backend_tokenizer, path,
                         shard_bytes=SHARD_BYTES * 10, on_shard=rebuilt.append)
    assert rebuilt == [1] and load_cache(path) is not None
    # same size, other content: found by the CRC32 check of an unfinished cache
    (path / "manifest.json").unlink()
    data = bytearray(ids.read_bytes())
    data[-1] ^= 0xFF
    ids.write_bytes(bytes(data))
    rebuilt.clear()
    build_cache(docs, tokenizer.backend_tokenizer, path, shard_bytes=SHARD_BYTES * 10,
                on_shard=rebuilt.append)
    assert rebuilt == [1] and corpus.num_tokens == load_cache(path).num_tokens


def test_a_full_disk_is_one_line_and_leaves_no_complete_cache(corpus_file, tokenizer,
                                                              tmp_path: Path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module.TokenizedCorpus, "save", full)
    path = tmp_path / "cache"
    with pytest.raises(PlmkitError, match="disk is full .* --data.cache_dir"):
        build_cache(lambda: read_documents(str(corpus_file)), tokenizer.backend_tokenizer,
                    path, shard_bytes=SHARD_BYTES)
    assert not (path / "manifest.json").exists()


def test_binary_files_and_bad_records_are_one_line_errors(tmp_path: Path):
    (tmp_path / "image.txt").write_bytes(bytes(range(256)) * 40)
    with pytest.raises(PlmkitError, match="image.txt is not text"):
        load_documents(str(tmp_path / "image.txt"))
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(PlmkitError, match="bad.jsonl is not JSON lines .* line 2"):
        load_documents(str(tmp_path / "bad.jsonl"))


def test_many_small_files_under_a_glob_are_read_in_sorted_order(tmp_path: Path):
    for folder in ("b", "a/deep"):
        for i in (2, 1):
            path = tmp_path / folder / f"{i}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"text": f"{folder}/{i}"}) + "\n")
    (tmp_path / "a" / "notes.md").write_text("not corpus")
    texts = [t for t, _ in read_documents(str(tmp_path / "**" / "*.jsonl"))]
    assert texts == ["a/deep/1", "a/deep/2", "b/1", "b/2"]
    assert [t for t, _ in read_documents(str(tmp_path))] == texts  # a folder: the same
    with pytest.raises(PlmkitError, match="does not exist"):
        load_documents(str(tmp_path / "*.parquet"))


def test_one_process_per_node_tokenizes_or_one_in_all(tmp_path: Path):
    from plmkit.data.datamodule import PretrainDataModule

    # Lightning runs prepare_data (the tokenization) on local rank 0 of every node, or on
    # global rank 0 only; the other ranks wait, then open the cache
    assert PretrainDataModule().prepare_data_per_node is True
    assert PretrainDataModule(shared_filesystem=True).prepare_data_per_node is False
    with pytest.raises(PlmkitError, match="num_proc must be at least 1"):
        PretrainDataModule(num_proc=0)


def test_a_corpus_file_that_vanishes_mid_read_is_one_line(tmp_path: Path):
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text("one document\n\nanother one\n")
    docs = read_documents(str(tmp_path))
    next(docs)
    (tmp_path / "b.txt").unlink()  # deleted while a.txt is being read
    with pytest.raises(PlmkitError, match="b.txt vanished while it was read"):
        list(docs)


def test_the_fast_encoding_paths_give_exactly_the_reference_arrays(documents, tokenizer,
                                                                   monkeypatch):
    # Two shortcuts: a document's lines encoded in one call, and ASCII text sent to the
    # tokenizer without its normalizer. The reference encodes one line at a time with the
    # full tokenizer. The extra documents hit the fallbacks: non-ASCII text, a control
    # character, and a line whose first character the normalizer removes.
    from plmkit.data import preprocess
    from plmkit.data.tokenizer import train_tokenizer

    texts = documents[:400] + ["  padded line \n\n\tsecond\u00a0line  \n\u200b\nlast",
                               "Caf\u00e9 NA\u00cfVE \u00c9t\u00e9\nUPPER Case", "bell\x07 char",
                               "\u200bstarts hidden\nthen Plain ASCII, e.g. U.S.A."]
    backend = tokenizer.backend_tokenizer
    assert preprocess.joins_lines(backend)  # WordPiece + BERT's normalizer
    assert preprocess._ascii_twin(backend) is not None  # which on ASCII only lowercases
    fast = preprocess.encode_documents(texts, backend)
    monkeypatch.setattr(preprocess, "joins_lines", lambda tokenizer: False)
    monkeypatch.setattr(preprocess, "_ascii_twin", lambda tokenizer: None)
    slow = preprocess.encode_documents(texts, backend)
    monkeypatch.undo()
    for name, array in slow.arrays().items():
        assert np.array_equal(array, fast.arrays()[name]), name
    # byte-level BPE turns the newline into a token: one line at a time there
    bpe = train_tokenizer(documents[:300], "bpe", 500, show_progress=False).backend_tokenizer
    assert not preprocess.joins_lines(bpe)
    assert [e.ids for e in preprocess.encode_batch(bpe, texts[-4:])] == [
        e.ids for e in bpe.encode_batch(texts[-4:], add_special_tokens=False)]


def test_a_killed_runs_half_written_block_index_is_swept(tmp_path, tokenizer):
    # what a killed writer of PATH left (.tmp-PATH-*) is swept by the next writer of PATH,
    # which holds PATH's lock; a folder being written for another path is kept
    from plmkit.data import datamodule

    killed, other = tmp_path / ".tmp-tokenizer-killed", tmp_path / ".tmp-packed-now"
    for folder in (killed, other):
        folder.mkdir()
        (folder / "starts.bin").write_bytes(b"\0" * 8)
    datamodule._save_atomically(tokenizer, tmp_path / "tokenizer")
    assert (tmp_path / "tokenizer" / "tokenizer.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [".tmp-packed-now",
                                                                         "tokenizer"]


def test_documents_split_across_read_blocks_are_whole(tmp_path: Path, monkeypatch):
    # the file is read a few characters at a time: every document must come out whole, as a
    # line-by-line reading gives it (a document is a run of lines ended by an empty line)
    from plmkit.data import corpus

    rng = random.Random(3)
    lines = [rng.choice(["", "", "  ", "one two", "three", "\u00e9t\u00e9 four"])
             for _ in range(3000)]
    text = "\n".join(lines)  # no newline at the end
    (tmp_path / "c.txt").write_text(text, encoding="utf-8")
    expected, block = [], []
    for line in text.split("\n"):
        if line == "":
            expected.append("\n".join(block).strip())
            block = []
        else:
            block.append(line)
    expected = [d for d in [*expected, "\n".join(block).strip()] if d]
    monkeypatch.setattr(corpus, "READ_BLOCK", 7)
    assert [d for d, _ in read_documents(str(tmp_path / "c.txt"))] == expected


def test_two_runs_that_tokenize_the_same_corpus_at_once_both_train(corpus_file, tokenizer,
                                                                    whole, tmp_path: Path):
    # two experiments launched together on one cache (or two nodes on a shared disk): the
    # second waits for the first instead of sweeping its half-written shards away
    import subprocess
    import sys

    tokenizer.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    script = (
        "import sys; from pathlib import Path; from tokenizers import Tokenizer\n"
        "from plmkit.data.cache import cached_tokenize\n"
        "from plmkit.data.corpus import read_documents\n"
        f"tok = Tokenizer.from_file({str(tmp_path / 'tokenizer.json')!r})\n"
        f"corpus, hit = cached_tokenize(lambda: read_documents({str(corpus_file)!r}), tok, "
        f"Path({str(tmp_path / 'cache')!r}), 'key', num_proc=1, shard_bytes={SHARD_BYTES // 4})\n"
        "print(corpus.num_tokens, hit)\n"
    )
    runs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [run.communicate(timeout=300) for run in runs]
    for run, (out, err) in zip(runs, results):
        assert run.returncode == 0, err[-2000:]
        assert int(out.split()[0]) == whole.num_tokens
    assert [out.split()[1] for out, _ in results].count("False") == 1  # tokenized once
    corpus = load_cache(tmp_path / "cache" / "tokenized" / "key")
    assert np.array_equal(np.concatenate([s.ids for s in corpus.shards]), whole.ids)
