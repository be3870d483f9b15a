"""Exact search over embedding shards, and what every index backend shares: merging per-shard
top-k lists and measuring recall.

Exact search multiplies the queries with each shard in blocks (memory-mapped, never loaded
whole), keeps each shard's top k, and merges the per-shard lists; the result is the same as
one search over all vectors. The approximate backends (hnsw.py, milvus.py) return
the same kind of result: exact inner products recomputed from the stored vectors, global rows.
"""
from __future__ import annotations

import logging
from typing import List, Tuple

import numpy as np

from .shards import Shard, check_finite

logger = logging.getLogger(__name__)

_BLOCK_ROWS = 65536


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
            scores = queries @ block.T  # [n, b]
            # one sum over the smaller of the two clears the block: the scores for a few questions, else the vectors
            check_finite(shard.path, shard.ids, lo, block, scores if scores.size < block.size else None)
            s, c = _topk(scores, k)  # [n, k]
            cur = (s, c + lo + self.offsets[i])
            best = cur if best is None else merge_topk([best, cur], k)
        return best

    def search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """Top k over all shards: (scores [n, k], global rows [n, k]); shards searched one by one and merged."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        lists = [self.search_shard(i, queries, k) for i in range(len(self.shards)) if len(self.shards[i].ids)]
        return merge_topk(lists, k)

    def build(self) -> "ExactIndex":
        """Nothing to build: the shards are the index (kept for the backends' common interface)."""
        return self

    load = build

    def describe(self) -> dict:
        """What a metrics file records about this index."""
        return {"index": "exact"}

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


def recall_at_k(approx_rows: np.ndarray, exact_rows: np.ndarray, ks=(1, 20, 100)) -> dict:
    """Mean fraction of the exact top k found in the approximate top k."""
    out = {}
    for k in ks:
        k_ = min(k, exact_rows.shape[1])
        hits = [len(set(a[:k_]) & set(e[:k_])) / k_ for a, e in zip(approx_rows, exact_rows)]
        out[k] = float(np.mean(hits))
    return out
