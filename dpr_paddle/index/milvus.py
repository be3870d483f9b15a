"""Milvus as the index engine: milvus-lite embedded in a local file by default, or a Milvus
standalone server or cluster by URI (`http://host:19530`), through the same client code.

A collection holds one set of shards: primary key `row` (the global row over the shards in
order), `pid` (the passage id) and `vector`. Its properties record what it holds (model
fingerprint, dimension, count, a digest of every shard's meta.json), so shards of another model
never mix into it. Loading streams the shards in batches of `LOAD_BATCH` rows in row order; an
interrupted load resumes at the last whole batch, which is upserted, so nothing is lost or
duplicated. Scores returned are exact inner products recomputed from the stored vectors, as
for every backend; Milvus only proposes the candidates.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from typing import Optional, Tuple

import numpy as np

from ..common.errors import DprError
from .shards import check_finite, meta_digest
from .exact import ExactIndex

logger = logging.getLogger(__name__)

INDEX_TYPES = ("HNSW", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "FLAT")
LOAD_BATCH = 5000  # rows per insert: 5000 x 768 float32 = 15 MB, well under gRPC's 64 MB
SEARCH_BATCH = 256  # questions per search request
_IDENTITY, _INDEX, _BATCH = "dpr_paddle.identity", "dpr_paddle.index", "dpr_paddle.load_batch"


@contextlib.contextmanager
def _quiet(logger_name: str):
    log = logging.getLogger(logger_name)
    level, log.level = log.level, logging.CRITICAL + 1
    try:
        yield
    finally:
        log.level = level


class MilvusIndexError(DprError, RuntimeError):
    """Milvus cannot be reached, or a collection does not hold what these shards are."""


# A search's consistency. "Strong" makes a server wait for its next time tick (200 ms by default) before
# every search: measured, one client got 3.8 searches/s at p50 200 ms. The collection is complete once
# `build` returns (a strong count has seen every row), so bounded staleness (Milvus' default: at most 5 s
# old) reads all of it without waiting.
SEARCH_CONSISTENCY = "Bounded"


def is_remote(uri: str) -> bool:
    """A server URI (http, https, tcp, unix) rather than a milvus-lite file."""
    return uri.split("://")[0] in ("http", "https", "tcp", "unix", "grpc")


def default_uri(shard_dir: str) -> str:
    """milvus-lite's file beside the shards (one file can hold the collections of several models)."""
    return os.path.join(os.path.dirname(os.path.abspath(shard_dir)), "milvus.db")


LITE_SEGMENT_ROWS = 100_000  # milvus-lite seals a segment at 100k rows (MAX_SEGMENT_ROWS)
SERVER_SEGMENT_ROWS = 1_000_000  # a server's 1 GB segments hold ~0.3-0.7M vectors of 384-768 floats


def default_nlist(n: int) -> int:
    """IVF cells for a segment of n vectors: ~4 sqrt(n), and at least 39 training points per cell
    (k-means needs them). Milvus builds one IVF index per segment, so n is a segment's size."""
    return int(max(1, min(4 * math.sqrt(max(n, 1)), n // 39 or 1, 65536)))


def connect(uri: str):
    """A MilvusClient for `uri`, or one line that names the URI and the fix."""
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    for name in ("faiss", "milvus_lite"):  # their start-up INFO lines say nothing a user can act on
        logging.getLogger(name).setLevel(logging.WARNING)
    if not is_remote(uri) and not uri.endswith(".db"):
        raise MilvusIndexError(f"--milvus_uri {uri}: a local Milvus file must end in .db (milvus-lite), or give a "
                               "server as http://host:19530")
    try:
        with _quiet("milvus_lite"):  # it logs a traceback of its own before raising the exception handled here
            return MilvusClient(uri=uri)
    except MilvusException as e:
        if is_remote(uri):
            raise MilvusIndexError(f"cannot open Milvus at {uri} ({e.message}); start the server (docker compose up "
                                   "-d, or python -m dpr_paddle.milvus_server: see README) or leave --milvus_uri out "
                                   "for a local milvus-lite file") from None
        raise MilvusIndexError(f"cannot open the milvus-lite database {uri}: {lite_problem(uri)}") from None


def lite_problem(uri: str) -> str:
    """Why milvus-lite could not open `uri` (it says only "Open local milvus failed"), and what to do."""
    import fcntl

    if os.path.exists(uri) and not os.path.isdir(uri):
        return ("it is a file, not a milvus-lite database (a directory): move it away or pass another "
                "--milvus_uri, and the index is built again from the shards")
    lock = os.path.join(uri, "LOCK")
    if os.path.isfile(lock):
        try:
            with open(lock, "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return ("another process has it open (milvus-lite serves one process at a time); wait for it, or use a "
                    "Milvus server (--milvus_uri http://HOST:19530) for several processes")
        except OSError as e:
            return f"{e.strerror}; check the permissions"
    return f"check that {os.path.dirname(os.path.abspath(uri))} is writable, or delete {uri} to build it again"


@contextlib.contextmanager
def milvus_errors(uri: str, collection: str):
    """What Milvus raises while a collection is built, loaded or searched, as one MilvusIndexError: a
    damaged milvus-lite database (a truncated parquet segment, an emptied schema) or a server's refusal."""
    from pymilvus.exceptions import MilvusException

    try:
        # each logs a traceback of what is raised here, then turned into one line
        with _quiet("grpc._server"), _quiet("pymilvus.decorators"), _quiet("milvus_lite"):
            yield
    except MilvusException as e:
        fix = ("see the server's log" if is_remote(uri) else f"the milvus-lite database is damaged: delete {uri} "
               "(rm -r) and it is built again from the shards")
        raise MilvusIndexError(f"Milvus collection {collection!r} at {uri}: {' '.join(str(e.message).split())[:300]}; "
                               f"{fix}") from None


class MilvusIndex:
    """Shards loaded into a Milvus collection and searched there (see the module doc)."""

    def __init__(self, exact: ExactIndex, uri: Optional[str] = None, collection: Optional[str] = None,
                 index_type: str = "HNSW", m: int = 32, ef_construction: int = 200, nlist: int = 0,
                 nprobe: int = 32, pq_m: int = 0):
        if index_type not in INDEX_TYPES:
            raise MilvusIndexError(f"--milvus_index_type {index_type}: one of {', '.join(INDEX_TYPES)}")
        self.exact = exact
        self.uri = uri or default_uri(exact.shards[0].path)
        self.dim = int(exact.shards[0].meta["dim"])
        self.count = int(exact.offsets[-1])
        self.identity = {"model_fingerprint": exact.shards[0].meta.get("model_fingerprint"), "dim": self.dim,
                         "count": self.count, "shards": [meta_digest(s.meta) for s in exact.shards]}
        self.collection = collection or "dpr_" + hashlib.sha1(json.dumps(self.identity).encode()).hexdigest()[:16]
        self.index_type = index_type
        self.nprobe = nprobe
        params = {"HNSW": {"M": m, "efConstruction": ef_construction}, "FLAT": {}}.get(index_type)
        if params is None:
            segment = LITE_SEGMENT_ROWS if not is_remote(self.uri) else SERVER_SEGMENT_ROWS
            params = {"nlist": nlist or default_nlist(min(self.count, segment))}
            if index_type == "IVF_PQ":  # pq_m sub-vectors of 8 bits: dim / pq_m floats share one byte
                params.update({"m": pq_m or max(1, self.dim // 4), "nbits": 8})
        self.params = params
        self.client = None

    # ------------------------------------------------------------------ build / load

    def build(self) -> "MilvusIndex":
        """Create or reopen the collection, load whatever rows are missing, make the index, load it
        into memory for search. Safe to call again: a complete collection is only checked."""
        from ..common.files import cache_root, process_lock

        self.client = connect(self.uri)
        # processes building one collection at once (a server's workers) take turns: one loads, the rest check
        key = hashlib.sha1(f"{self.uri}|{self.collection}".encode()).hexdigest()[:16]
        with process_lock(os.path.join(cache_root(), "locks", f"milvus_{key}.lock")), \
                milvus_errors(self.uri, self.collection):
            self._build()
        return self

    def _build(self) -> None:
        if self.client.has_collection(self.collection):
            self._check_identity()
        else:
            self._create()
        if is_remote(self.uri):
            # a server counts and searches only a loaded collection, and loads only an indexed one: index
            # and load first, then insert (rows join the loaded collection; their segments are indexed
            # as they seal). milvus-lite queries unloaded collections and trains IVF on what it holds.
            self._ensure_index()
            self.client.load_collection(self.collection)
            added = self._load_rows()
            waited = self._wait_indexed()
            if added or waited:
                # the query node took the new rows in as they came (growing, then unindexed sealed segments,
                # searched by brute force) and swaps in indexed ones only in the background: load again
                self.client.release_collection(self.collection)
        else:
            self._load_rows()
            self._ensure_index()
        self.client.load_collection(self.collection)  # a collection must be loaded before a search

    load = build  # reopening is building: every step is skipped when already done

    def _properties(self) -> dict:
        return self.client.describe_collection(self.collection).get("properties") or {}

    def _check_identity(self) -> None:
        have = json.loads(self._properties().get(_IDENTITY, "null") or "null")
        if have != self.identity:
            what = ("no dpr_paddle identity" if not have else
                    f"{have.get('count')} passages of model {have.get('model_fingerprint')} (dim {have.get('dim')})")
            raise MilvusIndexError(
                f"Milvus collection {self.collection!r} at {self.uri} holds {what}, not these shards' {self.count} "
                f"passages of model {self.identity['model_fingerprint']} (dim {self.dim}); leave --milvus_collection "
                "out (each set of shards gets its own collection) or name a new one")

    def _create(self) -> None:
        from pymilvus import DataType

        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("row", DataType.INT64, is_primary=True)
        schema.add_field("pid", DataType.VARCHAR, max_length=512)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        self.client.create_collection(self.collection, schema=schema, properties={
            _IDENTITY: json.dumps(self.identity), _BATCH: str(LOAD_BATCH)})
        logger.info("created Milvus collection %s at %s", self.collection, self.uri)

    def _rows_present(self) -> int:
        # Strong: a server's default (bounded staleness) may not count rows inserted a moment ago
        got = self.client.query(self.collection, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return int(got[0]["count(*)"])

    def _load_rows(self, stop_after: Optional[int] = None) -> int:
        """Insert rows [done, count) in batches, row order; how many were sent. A crash leaves whole
        batches and at most one part of a batch: the resume starts at that batch and upserts it."""
        from tqdm import tqdm

        batch = int(self._properties().get(_BATCH, LOAD_BATCH))
        done = self._rows_present()
        if done > self.count:
            raise MilvusIndexError(f"Milvus collection {self.collection!r} has {done} rows for {self.count} passages; "
                                   "drop it and load again")
        if done == self.count:
            return 0
        start = done // batch * batch
        if done:
            logger.info("resuming the load of %s at row %d of %d", self.collection, start, self.count)
        with tqdm(total=self.count, initial=start, desc="milvus load", unit="vec", dynamic_ncols=True) as bar:
            for i, lo in enumerate(range(start, self.count, batch)):
                if stop_after is not None and i >= stop_after:
                    return lo - start  # tests: an interrupted load
                hi = min(lo + batch, self.count)
                rows = [{"row": r, "pid": pid, "vector": vec} for r, pid, vec in self._rows(lo, hi)]
                (self.client.upsert if i == 0 and done else self.client.insert)(self.collection, rows)
                bar.update(hi - lo)
        self.client.flush(self.collection)
        got = self._rows_present()
        if got != self.count:
            raise MilvusIndexError(f"Milvus collection {self.collection!r}: {got} rows after loading {self.count}; "
                                   "drop it and load again")
        return self.count - start

    def _wait_indexed(self, poll_s: float = 1.0) -> bool:
        """Wait until a server's index covers every row (it builds sealed segments' indexes in the
        background, after `create_index` and `flush` have returned). True when it had to wait."""
        import time

        from tqdm import tqdm

        def complete(state: dict) -> bool:
            return state.get("indexed_rows", 0) >= self.count and not state.get("pending_index_rows", 0)

        state = self.client.describe_index(self.collection, "vector")
        if complete(state):
            return False
        with tqdm(total=self.count, desc="milvus index", unit="vec", dynamic_ncols=True) as bar:
            while True:
                if state.get("state") == "Failed":
                    raise MilvusIndexError(f"Milvus collection {self.collection!r}: building its {self.index_type} "
                                           f"index failed ({state.get('index_state_fail_reason', 'no reason given')})")
                # a server may merge indexed segments (compaction) and index the merged one again: pending rows
                done = min(self.count, state.get("indexed_rows", 0), self.count - state.get("pending_index_rows", 0))
                bar.update(max(0, done) - bar.n)
                if complete(state):
                    return True
                time.sleep(poll_s)
                state = self.client.describe_index(self.collection, "vector")

    def _rows(self, lo: int, hi: int):
        """(global row, passage id, float32 vector) for rows [lo, hi)."""
        rows = np.arange(lo, hi)
        vectors = self.exact.vectors_of(rows)  # [b, D] float32, also from float16 shards
        for i, shard in enumerate(self.exact.shards):  # refuse a NaN or inf row before Milvus stores it
            a, b = max(lo, int(self.exact.offsets[i])), min(hi, int(self.exact.offsets[i + 1]))
            if a < b:
                check_finite(shard.path, shard.ids, a - int(self.exact.offsets[i]), vectors[a - lo : b - lo])
        for r, vec in zip(rows, vectors):
            yield int(r), self.exact.row_id(int(r)), vec

    def _ensure_index(self) -> None:
        wanted = {"index_type": self.index_type, "metric_type": "IP", "params": self.params}
        have = json.loads(self._properties().get(_INDEX, "null") or "null")
        if have == wanted and self.client.list_indexes(self.collection):
            return
        self.client.release_collection(self.collection)
        for name in self.client.list_indexes(self.collection):
            logger.info("dropping the collection's %s index for %s %s", have and have.get("index_type"),
                        self.index_type, self.params)
            self.client.drop_index(self.collection, name)
        index_params = self.client.prepare_index_params()
        # pymilvus 3 sends build parameters as flat keys, which Milvus servers read; milvus-lite 3.2
        # reads only a JSON "params" key and would silently build with its defaults (M 16, nlist 128)
        params = self.params if is_remote(self.uri) else {"params": self.params}
        index_params.add_index(field_name="vector", index_type=self.index_type, metric_type="IP", params=params)
        from pymilvus.exceptions import MilvusException

        try:
            with _quiet("grpc._server"):  # milvus-lite logs a traceback for a call it lacks; the index is made
                self.client.create_index(self.collection, index_params)
        except MilvusException as e:
            # a long build can outlive the RPC deadline; the client's retry then finds the index made
            made = self.client.describe_index(self.collection, "vector") if "already exists" in str(e) else {}
            if made.get("index_type") != self.index_type:
                raise MilvusIndexError(f"Milvus collection {self.collection!r}: creating its {self.index_type} "
                                       f"index failed ({e.message})") from None
        self.client.alter_collection_properties(self.collection, properties={_INDEX: json.dumps(wanted)})
        logger.info("Milvus index %s %s on %s", self.index_type, self.params, self.collection)

    # ------------------------------------------------------------------ search

    def search(self, queries: np.ndarray, k: int, ef: int = 0) -> Tuple[np.ndarray, np.ndarray]:
        """Top k: (exact inner products [n, k], global rows [n, k]), best first. Searched with bounded
        staleness (SEARCH_CONSISTENCY): `build` has already seen every row with a strong count."""
        k = min(k, self.count)
        params = {"ef": max(ef, k)} if self.index_type == "HNSW" else {"nprobe": self.nprobe}
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        rows = np.empty((len(queries), k), dtype=np.int64)
        short = []
        for lo in range(0, len(queries), SEARCH_BATCH):
            with milvus_errors(self.uri, self.collection):
                hits = self.client.search(self.collection, data=list(queries[lo : lo + SEARCH_BATCH]), limit=k,
                                          search_params={"metric_type": "IP", "params": params},
                                          output_fields=["row"], consistency_level=SEARCH_CONSISTENCY)
            for j, found in enumerate(hits):
                got = [hit.id for hit in found]
                if len(got) < k:  # the probed IVF cells held fewer than k passages
                    short.append(lo + j)
                    continue
                rows[lo + j] = got
        if short:
            logger.warning("%d of %d questions found fewer than %d passages in %d probed cells; searched exactly "
                           "instead (raise --milvus_nprobe)", len(short), len(queries), k, self.nprobe)
            rows[short] = self.exact.search(queries[short], k)[1]
        scores = np.einsum("nd,nkd->nk", queries, self.exact.vectors_of(rows))
        order = np.argsort(-scores, axis=1, kind="stable")
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(rows, order, axis=1)

    def describe(self) -> dict:
        """What a metrics file records about this index."""
        where = self.uri if is_remote(self.uri) else f"milvus-lite {self.uri}"
        return {"index": "milvus", "uri": where, "collection": self.collection, "index_type": self.index_type,
                "params": self.params, **({} if self.index_type in ("HNSW", "FLAT") else {"nprobe": self.nprobe})}
