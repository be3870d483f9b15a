"""Search passage embeddings: exact inner product over shards, or hnswlib.

Exact search multiplies the queries with each shard in blocks (memory-mapped, never loaded
whole), keeps each shard's top k, and merges the per-shard lists; the result is the same as
one search over all vectors.

hnswlib searches either in its own inner-product space ("ip") or, with DPR's transform ("l2"),
in L2 over passages augmented with sqrt(phi - ||p||^2) (phi = max ||p||^2); the default "auto"
picks by the spread of passage norms (`HNSWIndex`). Scores are always reported as the exact
inner products q.p recomputed from the stored vectors.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from .embeddings import EmbeddingError, read_meta
from .utils import atomic_path, write_json_atomic

logger = logging.getLogger(__name__)

_BLOCK_ROWS = 65536


@dataclass
class Shard:
    """One embedding shard: memory-mapped vectors [n, D], their passage ids and metadata."""

    path: str
    meta: dict
    vectors: np.ndarray
    ids: List[str]


def _shard_sort_key(path: str):
    m = re.search(r"_(\d+)$", path.rstrip("/"))
    return (int(m.group(1)) if m else -1, path)


def shard_paths(pattern: str) -> List[str]:
    """The shard directories `pattern` names (a glob, a shard dir, or the OUT_FILE prefix given to
    generate_dense_embedding.py), in shard order."""
    def find(pat):
        return sorted((p for p in glob.glob(pat) if os.path.isdir(p) and not p.endswith(".partial")), key=_shard_sort_key)

    paths = find(pattern)
    if paths == [pattern.rstrip("/")] or (not paths and os.path.isdir(pattern)):
        paths = [pattern]  # one shard directory named directly
    elif not paths:
        paths = find(glob.escape(pattern) + "_*")  # the --out_file prefix of generate_dense_embedding.py
    if not paths:
        raise EmbeddingError(f"no embedding shards match {pattern!r}")
    return paths


def load_shards(pattern: str) -> List[Shard]:
    """Open every complete shard matching `pattern` (see `shard_paths`) and check they belong together."""
    paths = shard_paths(pattern)
    shards = []
    for p in paths:
        meta = read_meta(p)
        if meta is None:
            raise EmbeddingError(f"{p}: incomplete shard (no meta.json); re-run generate_dense_embedding.py")
        vectors = np.load(os.path.join(p, "vectors.npy"), mmap_mode="r")
        with open(os.path.join(p, "ids.txt"), encoding="utf-8") as f:
            ids = f.read().splitlines()
        if vectors.shape[0] != len(ids) or len(ids) != meta["count"]:
            raise EmbeddingError(f"{p}: {vectors.shape[0]} vectors, {len(ids)} ids, meta count {meta['count']}")
        shards.append(Shard(p, meta, vectors, ids))
    first = shards[0].meta
    for s in shards[1:]:
        for key in ("dim", "model_fingerprint", "num_shards"):
            if s.meta.get(key) != first.get(key):
                raise EmbeddingError(f"shards disagree on {key}: {shards[0].path} has {first.get(key)!r}, "
                                     f"{s.path} has {s.meta.get(key)!r}")
    have = sorted(s.meta["shard_id"] for s in shards)
    want = list(range(first["num_shards"]))
    if have != want:
        missing = sorted(set(want) - set(have))
        raise EmbeddingError(f"{pattern!r}: found shards {have} of {first['num_shards']}; missing {missing}")
    return shards


def _topk(scores: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Top k per row of [n, m] scores, sorted descending: (scores [n, k'], columns [n, k'])."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part_scores, order, axis=1), np.take_along_axis(part, order, axis=1)


def merge_topk(lists: List[Tuple[np.ndarray, np.ndarray]], k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Merge per-shard (scores [n, k_i], global rows [n, k_i]) into the overall top k."""
    scores = np.concatenate([s for s, _ in lists], axis=1)
    rows = np.concatenate([r for _, r in lists], axis=1)
    best_scores, cols = _topk(scores, k)
    return best_scores, np.take_along_axis(rows, cols, axis=1)


class ExactIndex:
    """Exact maximum inner product search over shards (blocked matrix products)."""

    def __init__(self, shards: List[Shard]):
        self.shards = shards
        self.offsets = np.cumsum([0] + [len(s.ids) for s in shards])

    def search_shard(self, i: int, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """Top k of one shard: (scores [n, k'], global rows [n, k'])."""
        shard = self.shards[i]
        best = None
        for lo in range(0, shard.vectors.shape[0], _BLOCK_ROWS):
            block = np.asarray(shard.vectors[lo : lo + _BLOCK_ROWS], dtype=np.float32)  # [b, D]
            s, c = _topk(queries @ block.T, k)  # [n, b] -> [n, k]
            cur = (s, c + lo + self.offsets[i])
            best = cur if best is None else merge_topk([best, cur], k)
        return best

    def search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """Top k over all shards: (scores [n, k], global rows [n, k]); shards searched one by one and merged."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        lists = [self.search_shard(i, queries, k) for i in range(len(self.shards)) if len(self.shards[i].ids)]
        return merge_topk(lists, k)

    def row_id(self, row: int) -> str:
        """Passage id of a global row."""
        i = int(np.searchsorted(self.offsets, row, side="right") - 1)
        return self.shards[i].ids[row - self.offsets[i]]

    def vectors_of(self, rows: np.ndarray) -> np.ndarray:
        """Stored vectors of global rows (any shape) as float32 [..., D]."""
        flat = rows.ravel()
        out = np.empty((flat.size, self.shards[0].meta["dim"]), dtype=np.float32)
        shard_of = np.searchsorted(self.offsets, flat, side="right") - 1
        for i in np.unique(shard_of):
            sel = shard_of == i
            local = flat[sel] - self.offsets[i]
            order = np.argsort(local)
            got = np.asarray(self.shards[i].vectors[local[order]], dtype=np.float32)
            tmp = np.empty_like(got)
            tmp[order] = got
            out[sel] = tmp
        return out.reshape(rows.shape + (out.shape[1],))


class HNSWIndex:
    """hnswlib for maximum inner product search; returned scores are exact inner products.

    `space="ip"`: hnswlib's own inner-product space on the raw vectors.
    `space="l2"` (DPR's way; DPR needed it because faiss's HNSW is L2-only): each passage p gets
    an extra coordinate sqrt(phi - |p|^2), with phi the largest squared norm, and queries a 0, so
    the L2 nearest neighbour of the augmented query is the largest inner product.
    `space="auto"` (the default) picks by the spread of passage norms, measured in the pass that
    finds phi: "ip" when max/min norm <= AUTO_IP_MAX_NORM_RATIO, else "l2". Measured
    (docs/benchmarks.md): on real-encoder-like vectors (MiniLM norms spread 1.15-1.38x) "ip"
    reached recall@100 0.979 at 1M where "l2" reached 0.926 at the same ef; with norms spread 7x
    "l2" is the better one (tests/test_embeddings_index.py: 1.000 against 0.965).
    """

    SPACES = ("auto", "ip", "l2")
    AUTO_IP_MAX_NORM_RATIO = 2.0

    def __init__(self, exact: ExactIndex, m: int = 32, ef_construction: int = 200, space: str = "auto"):
        if space not in self.SPACES:
            raise ValueError(f"hnsw space must be one of {self.SPACES}, got {space!r}")
        self.exact = exact
        self.m = m
        self.ef_construction = ef_construction
        self.requested_space = space
        self.space = None if space == "auto" else space  # resolved by build() or load()
        self.index = None
        self.phi = None

    def _identity(self) -> dict:
        return {"shards": [os.path.abspath(s.path) for s in self.exact.shards],
                "model_fingerprint": self.exact.shards[0].meta.get("model_fingerprint"),
                "count": int(self.exact.offsets[-1]), "dim": self.exact.shards[0].meta["dim"],
                "m": self.m, "ef_construction": self.ef_construction, "space": self.requested_space}

    def build(self, batch: int = 50_000) -> "HNSWIndex":
        """Stream the vectors into the graph, after a first pass for the squared norms' range
        (phi = the largest, for "l2"; the spread, for "auto")."""
        from tqdm import tqdm

        dim = self.exact.shards[0].meta["dim"]
        n = int(self.exact.offsets[-1])
        phi, low = 0.0, np.inf
        for s in self.exact.shards if self.space != "ip" else []:
            for lo in range(0, len(s.ids), batch):
                v = np.asarray(s.vectors[lo : lo + batch], dtype=np.float32)
                sq = (v * v).sum(axis=1)
                phi, low = max(phi, float(sq.max(initial=0.0))), min(low, float(sq.min(initial=np.inf)))
        if self.space is None:
            ratio = np.sqrt(phi / low) if low > 0 else np.inf
            self.space = "ip" if ratio <= self.AUTO_IP_MAX_NORM_RATIO else "l2"
            logger.info("passage norms spread %.2fx: hnsw space %s", ratio, self.space)
        self.phi = phi
        index = self._hnswlib_index(dim)
        index.init_index(max_elements=max(n, 1), ef_construction=self.ef_construction, M=self.m, random_seed=100)
        t0 = time.perf_counter()
        with tqdm(total=n, desc="hnsw build", unit="vec", dynamic_ncols=True) as bar:
            for i, s in enumerate(self.exact.shards):
                for lo in range(0, len(s.ids), batch):
                    v = np.asarray(s.vectors[lo : lo + batch], dtype=np.float32)
                    labels = np.arange(lo, lo + len(v)) + self.exact.offsets[i]
                    index.add_items(self._augment(v, phi), labels)
                    bar.update(len(v))
        logger.info("hnsw index of %d vectors built in %.1f s (space=%s, M=%d, ef_construction=%d)", n,
                    time.perf_counter() - t0, self.space, self.m, self.ef_construction)
        self.index = index
        return self

    def save(self, path: str) -> None:
        """Write the graph to `path` and its identity (shards, phi, params) to `path`.json, atomically."""
        with atomic_path(path) as tmp:
            self.index.save_index(tmp)
        write_json_atomic(path + ".json", {**self._identity(), "phi": self.phi, "resolved_space": self.space})

    def load(self, path: str) -> bool:
        """Load a saved graph if it was built from these shards with these parameters."""
        meta_file = path + ".json"
        if not (os.path.isfile(path) and os.path.isfile(meta_file)):
            return False
        with open(meta_file, encoding="utf-8") as f:
            meta = json.load(f)
        if {k: meta.get(k) for k in self._identity()} != self._identity():
            logger.info("%s was built from other shards or parameters; rebuilding", path)
            return False
        self.space = meta.get("resolved_space") or self.requested_space
        index = self._hnswlib_index(meta["dim"])
        index.load_index(path, max_elements=meta["count"])
        self.index, self.phi = index, meta["phi"]
        logger.info("loaded hnsw index %s (%d vectors)", path, meta["count"])
        return True

    def _hnswlib_index(self, dim: int):
        """An empty hnswlib index for vectors of `dim` in the resolved space ("l2" adds a coordinate)."""
        import hnswlib

        return hnswlib.Index(space=self.space, dim=dim + 1 if self.space == "l2" else dim)

    def _augment(self, v: np.ndarray, phi: Optional[float]) -> np.ndarray:
        """The vectors hnswlib stores (phi given: passages) or searches with (phi None: queries)."""
        if self.space == "ip":
            return v
        if phi is None:
            extra = np.zeros((len(v), 1), dtype=np.float32)  # [n, 1]
        else:
            extra = np.sqrt(np.maximum(phi - (v * v).sum(axis=1), 0.0))[:, None]  # [b, 1]
        return np.hstack([v, extra.astype(np.float32)])

    def search(self, queries: np.ndarray, k: int, ef: int = 0) -> Tuple[np.ndarray, np.ndarray]:
        """Approximate top k: (exact inner products [n, k], global rows [n, k]), best first."""
        n_total = int(self.exact.offsets[-1])
        k = min(k, n_total)
        self.index.set_ef(max(ef or 0, k))  # hnswlib needs ef >= k
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        aug = self._augment(queries, None)
        rows, _ = self.index.knn_query(aug, k=k)
        rows = rows.astype(np.int64)
        scores = np.einsum("nd,nkd->nk", queries, self.exact.vectors_of(rows))  # exact q.p, not phi - d / 2
        order = np.argsort(-scores, axis=1, kind="stable")
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(rows, order, axis=1)


def recall_at_k(approx_rows: np.ndarray, exact_rows: np.ndarray, ks=(1, 20, 100)) -> dict:
    """Mean fraction of the exact top k found in the approximate top k."""
    out = {}
    for k in ks:
        k_ = min(k, exact_rows.shape[1])
        hits = [len(set(a[:k_]) & set(e[:k_])) / k_ for a, e in zip(approx_rows, exact_rows)]
        out[k] = float(np.mean(hits))
    return out
