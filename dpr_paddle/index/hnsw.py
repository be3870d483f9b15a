"""hnswlib backends: one graph over all shards (`HNSWIndex`), or one graph per shard searched in
turn and merged (`ShardGraphs`).

hnswlib searches either in its own inner-product space ("ip") or, with DPR's transform ("l2"),
in L2 over passages augmented with sqrt(phi - ||p||^2) (phi = max ||p||^2); the default "auto"
picks by the spread of passage norms. Scores are always reported as the exact inner products
q.p recomputed from the stored vectors, so lists from different graphs merge exactly.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import List, Optional, Tuple

import numpy as np

from ..common.files import ArtefactError, atomic_path, reading, write_json_atomic
from .exact import ExactIndex, merge_topk
from .shards import check_finite, meta_digest

# Graph defaults, chosen from the 1M real-anchored curve (docs/benchmarks.md 3e): with ef 800 (the
# retriever's default for 100 documents) M 48 / efc 400 reaches recall@100 0.991 at 7.7x a warm exact
# search, where M 32 / efc 200 stops at 0.979 (10.1x); M 64 adds 0.001 for 7 % more memory. The
# price is a build ~2.5x as long (394 s against 160 s at 1M on 2 cores).
DEFAULT_M = 48
DEFAULT_EF_CONSTRUCTION = 400

logger = logging.getLogger(__name__)


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

    def __init__(self, exact: ExactIndex, m: int = DEFAULT_M, ef_construction: int = DEFAULT_EF_CONSTRUCTION,
                 space: str = "auto"):
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
        # what the shards hold (their meta.json), not where they lie: a graph built beside a shard
        # on the machine that encoded it stays valid when shard and graph are copied elsewhere
        return {"shards": [meta_digest(s.meta) for s in self.exact.shards],
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
                    check_finite(s.path, s.ids, lo, v)
                    labels = np.arange(lo, lo + len(v)) + self.exact.offsets[i]
                    index.add_items(self._augment(v, phi), labels)
                    bar.update(len(v))
        logger.info("hnsw index of %d vectors built in %.1f s (space=%s, M=%d, ef_construction=%d)", n,
                    time.perf_counter() - t0, self.space, self.m, self.ef_construction)
        self.index = index
        return self

    def open(self, path: Optional[str] = None) -> "HNSWIndex":
        """Load the graph saved at `path` when it was built from these shards with these settings;
        else build it (and save it there)."""
        if not (path and self.load(path)):
            self.build()
            if path:
                self.save(path)
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
        fix = f"delete {path} and {meta_file} to rebuild the graph"
        with reading(meta_file, "hnsw graph sidecar", fix), open(meta_file, encoding="utf-8") as f:
            meta = json.load(f)
            meta["dim"], meta["count"], meta["phi"]  # noqa: B018 - a KeyError here is a damaged file
        if {k: meta.get(k) for k in self._identity()} != self._identity():
            logger.warning("%s was built from other shards or parameters; rebuilding it", path)
            return False
        self.space = meta.get("resolved_space") or self.requested_space
        if self.space not in ("ip", "l2") or not isinstance(meta["phi"], (int, float, type(None))):
            raise ArtefactError(f"{meta_file}: damaged hnsw graph sidecar (space {self.space!r}); {fix}")
        with reading(path, "hnsw graph", fix):
            index = self._hnswlib_index(meta["dim"])
            index.load_index(path, max_elements=meta["count"])
        self.index, self.phi = index, meta["phi"]
        self._check_holds_these_vectors(path, fix)
        logger.info("loaded hnsw index %s (%d vectors)", path, meta["count"])
        return True

    def _check_holds_these_vectors(self, path: str, fix: str, samples: int = 16) -> None:
        """The sidecar says which shards the graph was built from; the graph file itself must agree:
        its count, and the stored vectors of a few spread-out rows (a .bin of other shards of the same
        dimension would otherwise load and return nonsense)."""
        n = int(self.exact.offsets[-1])
        if self.index.get_current_count() != n:
            raise ArtefactError(f"{path}: the graph holds {self.index.get_current_count()} vectors, the shards {n}; {fix}")
        rows = np.unique(np.linspace(0, n - 1, num=min(samples, n)).astype(np.int64))
        with reading(path, "hnsw graph", fix):
            stored = np.asarray(self.index.get_items(rows), dtype=np.float32)  # [s, dim(+1)]
        want = self._augment(np.asarray(self.exact.vectors_of(rows[None, :])[0], dtype=np.float32), self.phi)
        if stored.shape != want.shape or not np.allclose(stored, want, rtol=1e-4, atol=1e-5):
            raise ArtefactError(f"{path}: the graph's vectors are not these shards' (rows {rows[:3].tolist()}...): it "
                                f"was built from other shards or was damaged; {fix}")

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

    def describe(self) -> dict:
        """What a metrics file records about this index."""
        return {"index": "hnsw", "M": self.m, "ef_construction": self.ef_construction, "space": self.space}

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


class ShardGraphs:
    """One hnswlib graph per shard, saved inside the shard directory, so that K machines can build
    K graphs at once right after encoding (generate_dense_embedding.py --hnsw_per_shard). A search
    visits the shards one by one and merges their top-k lists; unless `resident`, each graph is
    loaded for its turn and freed after it, so peak memory is one shard's graph."""

    def __init__(self, exact: ExactIndex, m: int = DEFAULT_M, ef_construction: int = DEFAULT_EF_CONSTRUCTION,
                 space: str = "auto", resident: bool = False):
        self.exact, self.m, self.ef_construction, self.space = exact, m, ef_construction, space
        self.resident = resident
        self.graphs: List[Optional[HNSWIndex]] = [None] * len(exact.shards)
        self.spaces: List[Optional[str]] = [None] * len(exact.shards)

    def graph_path(self, i: int) -> str:
        """Where shard i's graph lives: inside its directory, named by the build parameters."""
        return graph_path(self.exact.shards[i].path, self.m, self.ef_construction, self.space)

    def _graph(self, i: int) -> HNSWIndex:
        return HNSWIndex(ExactIndex([self.exact.shards[i]]), self.m, self.ef_construction, self.space)

    def build(self) -> "ShardGraphs":
        """Load every shard's graph, building (and saving beside the shard) any that is missing or stale."""
        for i, shard in enumerate(self.exact.shards):
            if not os.path.exists(self.graph_path(i)):
                logger.warning("%s has no hnsw graph for M %d, ef_construction %d, space %s: building it here "
                               "(build it where the shard is encoded: generate_dense_embedding.py --hnsw_per_shard)",
                               shard.path, self.m, self.ef_construction, self.space)
            graph = self._graph(i).open(self.graph_path(i))  # a stale one is rebuilt, with its own warning
            self.spaces[i] = graph.space
            self.graphs[i] = graph if self.resident else None
        return self

    def search(self, queries: np.ndarray, k: int, ef: int = 0) -> Tuple[np.ndarray, np.ndarray]:
        """Top k over all shards: (exact scores [n, k], global rows [n, k]); one graph at a time."""
        lists = []
        for i, shard in enumerate(self.exact.shards):
            if not len(shard.ids):
                continue
            graph = self.graphs[i]
            if graph is None:
                graph = self._graph(i)
                if not graph.load(self.graph_path(i)):
                    raise FileNotFoundError(f"{self.graph_path(i)}: the graph of {shard.path} is gone or stale; "
                                            "re-open the index to rebuild it")
            scores, rows = graph.search(queries, min(k, len(shard.ids)), ef)
            lists.append((scores, rows + self.exact.offsets[i]))
            del graph  # not resident: freed before the next shard's graph is loaded
        return merge_topk(lists, k)

    def describe(self) -> dict:
        """What a metrics file records about this index."""
        spaces = sorted({s for s in self.spaces if s})
        return {"index": "hnsw_per_shard", "M": self.m, "ef_construction": self.ef_construction,
                "space": spaces[0] if len(spaces) == 1 else spaces, "graphs": len(self.graphs)}


def graph_path(shard_dir: str, m: int, ef_construction: int, space: str) -> str:
    """The file of a shard's own hnsw graph (its identity sits beside it as .json)."""
    return os.path.join(shard_dir, f"hnsw_M{m}_efc{ef_construction}_{space}.bin")


def build_shard_graph(shard, m: int = DEFAULT_M, ef_construction: int = DEFAULT_EF_CONSTRUCTION,
                      space: str = "auto") -> str:
    """Build and save one shard's graph (unless a current one is there); returns its path."""
    path = graph_path(shard.path, m, ef_construction, space)
    HNSWIndex(ExactIndex([shard]), m, ef_construction, space).open(path)
    return path
