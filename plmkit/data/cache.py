"""The tokenized-corpus cache: shards of memory-mapped arrays, written in bounded memory.

A corpus is tokenized once into ``<cache>/tokenized/<key>/``::

    plan.json        how the corpus is cut into shards (written first)
    shard-00000/     one TokenizedCorpus (see plmkit.data.preprocess) + meta.json
    shard-00001/     ...
    manifest.json    written last: the cache is complete

Documents are streamed from the corpus (:func:`plmkit.data.corpus.read_documents`) and cut
into chunks of about ``shard_bytes`` of text; each chunk is tokenized by one of ``num_proc``
worker processes, which writes its shard atomically (temporary folder, rename) with the arrays'
sizes and CRC32s. At most ``num_proc + 1`` chunks are in flight, so memory does not grow with
the corpus. A shard never splits a document.

An interrupted build resumes: the next run keeps every complete shard (CRC32 checked), skips
the documents they hold and tokenizes the rest; the finished cache is byte-identical to an
uninterrupted one. A damaged or partial shard is rebuilt, never trained on. A complete cache is
opened by memory map, shard headers and sizes only, so a second run starts at once whatever
the corpus size.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from itertools import chain
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from plmkit.data.corpus import Document
from plmkit.data.preprocess import TokenizedCorpus, encode_documents
from plmkit.errors import PlmkitError

log = logging.getLogger("plmkit")

CACHE_VERSION = 3
#: text per shard: a shard's arrays (and the packing temporaries) stay well under 1 GB
SHARD_BYTES = 32 * 2**20


class ShardedCorpus:
    """Shards of a tokenized corpus seen as one: global document and token numbering."""

    def __init__(self, shards: list[TokenizedCorpus], max_id: int | None = None) -> None:
        self.shards = shards
        self.doc_base = np.cumsum([0] + [s.num_documents for s in shards])
        self.token_base = np.cumsum([0] + [s.num_tokens for s in shards])
        self.sent_base = np.cumsum([0] + [s.num_sentences for s in shards])
        self.max_id = max_id
        self.has_entities = bool(shards) and shards[0].entity_id is not None

    @classmethod
    def of(cls, corpus: TokenizedCorpus | ShardedCorpus) -> ShardedCorpus:
        return corpus if isinstance(corpus, ShardedCorpus) else cls([corpus])

    @property
    def num_documents(self) -> int:
        return int(self.doc_base[-1])

    @property
    def num_tokens(self) -> int:
        return int(self.token_base[-1])

    def doc_token_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Global token start and end of every document."""
        if not self.shards:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        parts = [self.shard_doc_bounds(k) for k in range(len(self.shards))]
        starts = np.concatenate([a + base for (a, _), base in zip(parts, self.token_base)])
        ends = np.concatenate([b + base for (_, b), base in zip(parts, self.token_base)])
        return starts, ends

    def shard_doc_bounds(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Token start and end (within shard ``k``) of each of its documents, read through
        maps of their own (see :func:`transient`)."""
        s = self.shards[k]
        return TokenizedCorpus(*map(transient, (s.ids, s.word_start, s.sent_offsets,
                                                s.doc_offsets))).doc_token_bounds()

    def shard_of_token(self, token: int) -> int:
        return int(np.searchsorted(self.token_base, token, side="right")) - 1

    def read(self, start: int, end: int) -> dict[str, np.ndarray]:
        """Tokens ``[start, end)`` (global, inside one shard): ``ids``, ``word_start``,
        ``sent_index`` (global sentence number) and, with entities, ``entity_id``."""
        k = self.shard_of_token(start)
        shard, base = self.shards[k], int(self.token_base[k])
        a, b = start - base, end - base
        out = {
            "ids": np.asarray(shard.ids[a:b], dtype=np.int64),
            "word_start": np.asarray(shard.word_start[a:b]).astype(bool),
            "sent_index": np.searchsorted(shard.sent_offsets, np.arange(a, b), side="right")
            - 1 + int(self.sent_base[k]),
        }
        if shard.entity_id is not None:
            out["entity_id"] = np.asarray(shard.entity_id[a:b])
        return out


def transient(array: np.ndarray) -> np.ndarray:
    """A new memory map of the file behind ``array`` (``array`` itself when in memory).

    Pages read through a memory map count in the process's resident memory while the map
    lives; a pass over a whole shard (packing) reads through a map of its own, dropped after,
    so the long-lived maps the loader reads blocks from stay small.
    """
    filename = getattr(array, "filename", None)
    return np.load(filename, mmap_mode="r") if filename else array


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def load_cache(path: Path) -> ShardedCorpus | None:
    """The complete cache at ``path`` opened by memory map; None if it is absent, partial,
    of another version, or a shard is missing or damaged (sizes checked)."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("version") != CACHE_VERSION:
        return None
    shards = []
    for index in range(int(manifest["shards"])):
        shard = TokenizedCorpus.load(path / _shard_name(index))
        if shard is None:
            log.warning("tokenized corpus %s: shard %d is missing or damaged; rebuilding it",
                        path, index)
            (path / "manifest.json").unlink(missing_ok=True)
            return None
        shards.append(shard)
    return ShardedCorpus(shards, max_id=int(manifest["max_id"]))


# ----------------------------------------------------------------------------- building
_WORKER_TOKENIZER: list[Tokenizer] = []


def _init_worker(tokenizer_json: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker process
    _WORKER_TOKENIZER[:] = [Tokenizer.from_str(tokenizer_json)]


def _write_shard(path: Path, documents: list[Document], tokenizer: Tokenizer | None = None
                 ) -> dict:
    tokenizer = tokenizer or _WORKER_TOKENIZER[0]
    texts = [text for text, _ in documents]
    spans = [s for _, s in documents] if documents and documents[0][1] is not None else None
    return encode_documents(texts, tokenizer, spans).save(path, text_bytes=_size(documents))


def _size(documents: list[Document]) -> int:
    return sum(len(text.encode()) for text, _ in documents)


def _chunks(documents: Iterable[Document], shard_bytes: int) -> Iterator[list[Document]]:
    chunk: list[Document] = []
    size = 0
    for doc in documents:
        chunk.append(doc)
        size += len(doc[0].encode())
        if size >= shard_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _prepare_folder(path: Path, plan: dict) -> set[int]:
    """Clear what another plan or an interrupted write left; the complete shards kept."""
    path.mkdir(parents=True, exist_ok=True)
    plan_file = path / "plan.json"
    try:
        same = json.loads(plan_file.read_text()) == plan
    except (OSError, ValueError):
        same = False
    if not same:
        for child in path.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        plan_file.write_text(json.dumps(plan, sort_keys=True))
    done = set()
    for child in sorted(path.iterdir()):
        if child.name.startswith(".tmp-"):
            shutil.rmtree(child, ignore_errors=True)
        elif child.name.startswith("shard-"):
            if TokenizedCorpus.load(child, verify=True) is None:
                log.warning("tokenized corpus: %s is damaged; rebuilding it", child.name)
                shutil.rmtree(child)
            else:
                done.add(int(child.name.split("-")[1]))
    return done


def build_cache(
    documents: Callable[[], Iterable[Document]],
    tokenizer: Tokenizer,
    path: Path,
    num_proc: int = 1,
    shard_bytes: int = SHARD_BYTES,
    total_bytes: int | None = None,
    on_shard: Callable[[int], None] | None = None,
) -> ShardedCorpus:
    """Tokenize ``documents()`` into the sharded cache at ``path`` (resuming a partial one).

    ``total_bytes`` sizes the progress bar; ``on_shard(index)`` is called after every shard
    is written (tests interrupt a build with it).
    """
    plan = {"version": CACHE_VERSION, "shard_bytes": shard_bytes,
            "tokenizer_crc32": _text_crc(tokenizer.to_str())}
    done = _prepare_folder(path, plan)
    if done:
        log.info("tokenized corpus %s: resuming, %d shard(s) already written", path, len(done))
    pool: ProcessPoolExecutor | None = None
    pending: dict[Future, int] = {}
    metas: dict[int, dict] = {}
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenizing",
               dynamic_ncols=True, leave=False)

    def finish(futures: Iterable[Future]) -> None:
        for future in futures:
            index = pending.pop(future)
            metas[index] = future.result()
            bar.update(metas[index]["text_bytes"])
            if on_shard is not None:
                on_shard(index)

    began = time.perf_counter()
    chunks = _chunks(documents(), shard_bytes)
    head = [c for c in (next(chunks, None), next(chunks, None)) if c is not None]
    if len(head) < 2:
        num_proc = 1  # one shard: the Rust encoder in this process uses every core
    try:
        count = 0
        for index, chunk in enumerate(chain(head, chunks)):
            count = index + 1
            target = path / _shard_name(index)
            if index in done:
                bar.update(_size(chunk))
                continue
            if num_proc <= 1:
                metas[index] = _write_shard(target, chunk, tokenizer)
                bar.update(metas[index]["text_bytes"])
                if on_shard is not None:
                    on_shard(index)
                continue
            if pool is None:
                pool = ProcessPoolExecutor(num_proc, mp_context=multiprocessing.get_context(
                    "spawn"), initializer=_init_worker, initargs=(tokenizer.to_str(),))
            while len(pending) > num_proc:
                finish(wait(pending, return_when=FIRST_COMPLETED).done)
            pending[pool.submit(_write_shard, target, chunk)] = index
        finish(list(pending))
        if count == 0:
            raise PlmkitError("the corpus is empty (no non-blank text); "
                              "point --data.corpus at files with text")
        for index in range(count):  # shards written by an earlier, interrupted run
            if index not in metas:
                metas[index] = json.loads((path / _shard_name(index) / "meta.json").read_text())
        manifest = {
            "version": CACHE_VERSION, "shards": count,
            "documents": sum(m["documents"] for m in metas.values()),
            "tokens": sum(m["tokens"] for m in metas.values()),
            "text_bytes": sum(m["text_bytes"] for m in metas.values()),
            "max_id": max(m["max_id"] for m in metas.values()),
        }
        (path / "manifest.json").write_text(json.dumps(manifest, sort_keys=True))
        seconds = time.perf_counter() - began
        megabytes = manifest["text_bytes"] / 1e6
        log.info("tokenized %.1f MB of text (%d shards) in %.1f s with %d process(es): "
                 "%.2f MB/s, %.2f MB/s per process", megabytes, count, seconds, num_proc,
                 megabytes / seconds, megabytes / seconds / num_proc)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise PlmkitError(f"the disk is full while writing the tokenized corpus to {path}; "
                              "free space or set --data.cache_dir to a larger disk") from exc
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    corpus = load_cache(path)
    if corpus is None:
        raise PlmkitError(f"the tokenized corpus at {path} could not be read back; "
                          "delete the folder and run again")
    return corpus


def _text_crc(text: str) -> int:
    return zlib.crc32(text.encode())


def cached_tokenize(
    documents: Callable[[], Iterable[Document]],
    tokenizer: Tokenizer,
    cache_dir: Path,
    key: str,
    num_proc: int | None = None,
    total_bytes: int | None = None,
    shard_bytes: int = SHARD_BYTES,
) -> tuple[ShardedCorpus, bool]:
    """Open the tokenized corpus for ``key`` under ``cache_dir`` or build it.

    ``documents`` is called only on a cache miss. Returns ``(corpus, hit)``.
    """
    path = cache_dir / "tokenized" / key
    cached = load_cache(path)
    if cached is None:
        with exclusive(path, "tokenizes this corpus"):
            cached = load_cache(path)  # another run may have built it while this one waited
            if cached is None:
                num_proc = num_proc or default_num_proc()
                return build_cache(documents, tokenizer, path, num_proc, shard_bytes,
                                   total_bytes), False
    log.debug("tokenized corpus opened from the cache %s", path)
    return cached, True


@contextlib.contextmanager
def exclusive(path: Path, doing: str) -> Iterator[None]:
    """Hold the lock file ``<path>.lock`` while this process writes ``path``.

    Two runs on one cache (experiments launched together, nodes on a shared disk) would
    otherwise tear each other's half-written files; the second waits, then reads what the
    first wrote. ``doing`` completes the log line "waiting for another process that ...".
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{path}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process that %s (%s.lock)", doing, path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def staged(path: Path) -> Iterator[Path]:
    """A temporary folder beside ``path``, renamed to ``path`` when the block ends without an
    error (readers never see it half written). Call it under :func:`exclusive`, which makes
    it safe to sweep what killed writers of ``path`` left and to replace a damaged ``path``."""
    for leftover in path.parent.glob(f".tmp-{path.name}-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".tmp-{path.name}-"))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def default_num_proc() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
