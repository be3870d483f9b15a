"""Pick the index once: exact, hnsw (one graph), hnsw_per_shard, or milvus, after a memory plan.

Every backend has `build()` (which loads what was saved and makes only what is missing),
`search(q, k, ef)` -> (exact inner products [n, k], global rows [n, k]) and `describe()`.
Before anything is built, `plan_memory` sets the bytes the chosen backend will hold against the
memory this machine has; an index that cannot fit is refused in one line naming what would fit
(`force` builds anyway).
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from ..common.errors import DprError
from ..common.options import check_numbers
from .hnsw import DEFAULT_EF_CONSTRUCTION, DEFAULT_M
from .exact import ExactIndex
from .shards import load_shards
from .milvus import is_remote

logger = logging.getLogger(__name__)

KINDS = ("exact", "hnsw", "hnsw_per_shard", "milvus")
GB = 2**30


class IndexMemoryError(DprError, MemoryError):
    """The chosen index will not fit in this machine's memory; the message names what would."""


@dataclass
class IndexSpec:
    """Which index, with which settings (the commands build it from their flags)."""

    kind: str = "exact"
    hnsw_m: int = DEFAULT_M
    ef_construction: int = DEFAULT_EF_CONSTRUCTION
    space: str = "auto"
    index_path: Optional[str] = None  # the single hnsw graph's file
    milvus_uri: Optional[str] = None
    milvus_collection: Optional[str] = None
    milvus_index_type: str = "HNSW"
    milvus_nlist: int = 0
    milvus_nprobe: int = 32
    milvus_pq_m: int = 0
    force: bool = False
    resident: Optional[bool] = None  # hnsw_per_shard: keep every graph loaded (None: when they fit easily)
    ef_search: int = 0  # hnsw ef at query time (0: `default_ef`)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise DprError(f"--index {self.kind}: one of {', '.join(KINDS)}")
        check_numbers(self, ("hnsw_m", "ef_construction", "milvus_nlist", "milvus_nprobe", "milvus_pq_m", "ef_search"))


# --------------------------------------------------------------------------- memory

def available_memory() -> int:
    """Bytes this process can still use: MemAvailable, or the cgroup's limit when lower, or
    DPR_PADDLE_MEMORY_GB when set (a share of a machine that others use too)."""
    avail = None
    cap = os.environ.get("DPR_PADDLE_MEMORY_GB")
    if cap:
        try:
            return int(float(cap) * GB)
        except ValueError:
            raise DprError(f"DPR_PADDLE_MEMORY_GB={cap!r}: a number of GB, e.g. 16") from None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            avail = min(avail or math.inf, int(limit) - used)
    except (OSError, ValueError):
        pass
    return int(avail) if avail is not None else 0


def hnsw_bytes(n: int, dim: int, m: int) -> int:
    """hnswlib's memory for n vectors: each element stores its vector (+1 float for the l2
    transform), 2M level-0 links, a label and a count, ~1/ln(M) upper levels of M links, and
    ~100 bytes of bookkeeping (lock, level, lookup entry); checked against RSS in bench/index.py."""
    per = (dim + 1) * 4 + 2 * m * 4 + 12 + (4 * m + 4) / math.log(m) + 100
    return int(n * per)


# milvus-lite (pure Python + faiss, in this process) measured at 100k and 1M x 384 (bench/index.py
# --engines, docs/benchmarks.md 3d): ~1.5 GB of its own plus these multiples of the raw float32
# vectors as anonymous memory, and the shards' pages mapped while loading. IVF_SQ8 saves little
# there: milvus-lite keeps the raw vectors of every segment beside the codes.
_LITE_FIXED = 1.5 * 2**30
_LITE_FACTOR = {"HNSW": 1.75, "IVF_FLAT": 1.75, "IVF_SQ8": 1.4, "IVF_PQ": 1.4, "FLAT": 1.0}


def milvus_lite_bytes(n: int, dim: int, index_type: str) -> int:
    """Peak memory of milvus-lite loading and indexing n vectors of dim (see _LITE_FACTOR)."""
    raw = n * dim * 4
    return int(_LITE_FIXED + (1 + _LITE_FACTOR[index_type]) * raw)


def milvus_server_bytes(n: int, dim: int, index_type: str, m: int, pq_m: int) -> int:
    """What a Milvus server's query nodes hold for a collection of n vectors: the index (raw vectors and
    links for HNSW, the codes for IVF_SQ8 and IVF_PQ, the raw vectors for FLAT/IVF_FLAT), plus per row
    the key, timestamp, passage id and segment bookkeeping, plus a fixed part. The per-row and fixed
    parts are fitted to a Milvus 2.3.5 standalone server's memory at 100k and 1M x 384, indexes built
    (docs/benchmarks.md 10c): 60 bytes a row for HNSW, 160 for the IVF types (their inverted lists
    keep 8-byte ids), 24 MB. An indexed IVF segment does not keep its raw vectors in memory."""
    raw = n * dim * 4
    index = {"HNSW": raw + n * (2 * m * 4 + 4 * m / math.log(m)), "IVF_FLAT": raw, "FLAT": raw,
             "IVF_SQ8": n * dim, "IVF_PQ": n * (pq_m or max(1, dim // 4))}[index_type]
    return int(index + n * (60 if index_type == "HNSW" else 160) + 24 * 2**20)


@dataclass
class MemoryPlan:
    """Bytes the chosen backend holds at its peak, against what is available."""

    backend: str
    needed: int
    available: int
    detail: str
    alternatives: List[str]

    @property
    def fits(self) -> bool:
        return self.needed <= 0.9 * self.available  # leave room for the model, the queries and the OS

    def line(self) -> str:
        return (f"memory plan: {self.backend} needs ~{self.needed / GB:.2f} GB ({self.detail}); "
                f"{self.available / GB:.1f} GB available")


def plan_memory(spec: IndexSpec, sizes: List[int], dim: int, available: Optional[int] = None) -> MemoryPlan:
    """What `spec` would hold for shards of `sizes` vectors of `dim`, and what would fit instead."""
    available = available_memory() if available is None else available
    n = sum(sizes)
    vec_gb = n * dim * 4 / GB
    # a build reads every vector through the memory map (resident while it runs) and copies it into
    # the graph: vectors + graph, as measured (1M x 384, M 32: 3.5 GB peak RSS, bench/index.py)
    one = n * dim * 4 + hnsw_bytes(n, dim, spec.hnsw_m)
    per_shard = max(sizes, default=0) * dim * 4 + hnsw_bytes(max(sizes, default=0), dim, spec.hnsw_m)
    lite_sq8 = milvus_lite_bytes(n, dim, "IVF_SQ8")
    remote = spec.milvus_uri and is_remote(spec.milvus_uri)
    if spec.kind == "exact":
        needed, detail = 0, "streams the memory-mapped shards block by block"
    elif spec.kind == "hnsw":
        needed, detail = one, f"{n:,} vectors x {dim} ({vec_gb:.2f} GB) mapped, and one graph of M {spec.hnsw_m}"
    elif spec.kind == "hnsw_per_shard":
        needed, detail = per_shard, f"the largest of {len(sizes)} shards and its graph, one at a time"
    elif remote:
        server = milvus_server_bytes(n, dim, spec.milvus_index_type, spec.hnsw_m, spec.milvus_pq_m)
        needed, detail = 0, (f"the Milvus server at {spec.milvus_uri} holds ~{server / GB:.1f} GB of "
                             f"{spec.milvus_index_type} index, not this machine")
    else:
        needed = milvus_lite_bytes(n, dim, spec.milvus_index_type)
        detail = f"milvus-lite {spec.milvus_index_type}: its own 1.5 GB, the raw vectors ({vec_gb:.2f} GB) and the index"
    alternatives = []
    if len(sizes) > 1 and per_shard < one:
        alternatives.append(f"--hnsw_per_shard (~{per_shard / GB:.2f} GB: one of {len(sizes)} shard graphs at a time)")
    if lite_sq8 < one:
        alternatives.append(f"--index milvus --milvus_index_type IVF_SQ8 (~{lite_sq8 / GB:.2f} GB in milvus-lite)")
    alternatives.append("--index milvus --milvus_uri http://HOST:19530 (a Milvus server or cluster holds it)")
    alternatives.append("exact search (streams the shards; slower per question, no index memory)")
    return MemoryPlan(spec.kind if spec.kind != "milvus" else f"milvus {spec.milvus_index_type}", needed, available,
                      detail, alternatives)


def check_memory(plan: MemoryPlan, force: bool) -> None:
    """Log the plan; refuse in one line when it does not fit, unless `force`."""
    logger.info(plan.line())
    if plan.fits:
        return
    if force:
        logger.warning("%s; building anyway (--force)", plan.line())
        return
    raise IndexMemoryError(f"{plan.line()}. What would fit: {'; '.join(plan.alternatives)}. Or pass --force "
                           "to build it anyway")


# --------------------------------------------------------------------------- the factory

def open_index(spec: IndexSpec, exact: ExactIndex):
    """The backend `spec` names over `exact`'s shards: loaded if it was saved, else built."""
    if spec.kind not in KINDS:
        raise DprError(f"--index {spec.kind}: one of {', '.join(KINDS)}")
    if spec.kind == "exact":
        return exact  # streams the shards: nothing to plan or build
    sizes = [len(s.ids) for s in exact.shards]
    dim = int(exact.shards[0].meta["dim"])
    plan = plan_memory(spec, sizes, dim)
    check_memory(plan, spec.force)
    if spec.kind == "hnsw":
        from .hnsw import HNSWIndex

        return HNSWIndex(exact, m=spec.hnsw_m, ef_construction=spec.ef_construction, space=spec.space).open(
            spec.index_path)
    if spec.kind == "hnsw_per_shard":
        from .hnsw import ShardGraphs

        # all graphs stay loaded when they fit together (a server answering many requests)
        together = sum(hnsw_bytes(n, dim, spec.hnsw_m) for n in sizes)
        resident = spec.resident if spec.resident is not None else together <= 0.5 * plan.available
        return ShardGraphs(exact, spec.hnsw_m, spec.ef_construction, spec.space, resident=resident).build()
    from .milvus import MilvusIndex

    return MilvusIndex(exact, spec.milvus_uri, spec.milvus_collection, spec.milvus_index_type, spec.hnsw_m,
                       spec.ef_construction, spec.milvus_nlist, spec.milvus_nprobe, spec.milvus_pq_m).build()


# --------------------------------------------------------------------------- shards + backend

def default_ef(k: int, n_docs: int, ef_search: int = 0) -> int:
    """hnswlib's ef: `ef_search` when given, else max(8 * n_docs, 256) (docs/benchmarks.md: at 1M
    vectors, ip, M 32, recall@100 0.945 at ef 400 and 0.979 at 800); never below the depth k."""
    return max(ef_search or max(8 * min(k, n_docs), 256), k)


class DenseIndex:
    """Embedding shards and the index that searches them, picked once by `open_index`
    (exact, one hnsw graph, a graph per shard, or Milvus); loaded when saved, else built."""

    def __init__(self, pattern: str, spec: Optional[IndexSpec] = None, partial: bool = False):
        self.shards = load_shards(pattern, partial=partial)
        self.exact = ExactIndex(self.shards)
        self.spec = spec or IndexSpec()
        t0 = time.perf_counter()
        self.backend = open_index(self.spec, self.exact)
        self.build_seconds = time.perf_counter() - t0

    @property
    def approximate(self) -> bool:
        """Whether search may miss what exact search finds (recall can be measured)."""
        return self.backend is not self.exact

    def __len__(self) -> int:
        return int(self.exact.offsets[-1])

    def ef_for(self, k: int, n_docs: int) -> int:
        """hnsw's ef for a search of depth k (see `default_ef`), never more than the index holds."""
        return max(min(default_ef(k, n_docs, self.spec.ef_search), len(self)), k)

    def search(self, q: np.ndarray, k: int, n_docs: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Top k of [n, D] question vectors: (exact scores [n, k], global rows [n, k]), best first."""
        k = min(k, len(self))
        if not self.approximate:
            return self.exact.search(q, k)
        return self.backend.search(q, k, ef=self.ef_for(k, n_docs or k))

    def ids(self, rows: np.ndarray) -> List[List[str]]:
        """Passage ids of [n, k] global rows."""
        return [[self.exact.row_id(int(r)) for r in row] for row in rows]

    def describe(self) -> dict:
        """What a metrics file records about the index."""
        return {**self.backend.describe(), "passages": len(self),
                "model_fingerprint": self.shards[0].meta.get("model_fingerprint")}
