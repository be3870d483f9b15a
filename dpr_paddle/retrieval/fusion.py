"""Fusing ranked lists from two retrievers (dense and BM25) into one, per question.

- `weighted_sum`: pyserini's hybrid (HybridSearcher with normalization): each list's scores are
  min-max normalised around their midpoint, a passage missing from a list gets that list's
  minimum, and the fused score is alpha * sparse + dense.
- `rrf`: reciprocal-rank fusion (Cormack et al., 2009): sum over lists of 1 / (rrf_k + rank),
  ranks from 1, rrf_k = 60; a passage missing from a list contributes nothing from it.

Both take and return a run as (scores [n, k] float32, ids [n][k]), best first; ties keep the
order in which passages were first seen (dense list first).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

Run = Tuple[np.ndarray, List[List[str]]]
FUSIONS = ("weighted", "rrf")


def _top(fused: Dict[str, float], k: int) -> Tuple[List[float], List[str]]:
    order = sorted(fused.items(), key=lambda kv: -kv[1])[:k]  # sorted() is stable: first seen wins ties
    return [s for _, s in order], [pid for pid, _ in order]


def _normalise(scores: Sequence[float]) -> Tuple[Dict[int, float], float]:
    lo, hi = float(min(scores)), float(max(scores))
    span = hi - lo or 1.0
    return {i: (float(s) - (lo + hi) / 2) / span for i, s in enumerate(scores)}, (lo - (lo + hi) / 2) / span


def weighted_sum(dense: Run, sparse: Run, alpha: float, k: int) -> Run:
    """alpha * normalised sparse + normalised dense, over the union of both lists."""
    out_scores, out_ids = [], []
    for d_scores, d_ids, s_scores, s_ids in zip(dense[0], dense[1], sparse[0], sparse[1]):
        d_norm, d_min = _normalise(d_scores)
        s_norm, s_min = _normalise(s_scores)
        d_of = {pid: d_norm[i] for i, pid in enumerate(d_ids)}
        s_of = {pid: s_norm[i] for i, pid in enumerate(s_ids)}
        fused = {pid: alpha * s_of.get(pid, s_min) + d_of.get(pid, d_min) for pid in [*d_ids, *s_ids]}
        scores, ids = _top(fused, k)
        out_scores.append(scores)
        out_ids.append(ids)
    return _pad(out_scores, k), out_ids


def rrf(runs: Sequence[Run], k: int, rrf_k: int = 60) -> Run:
    """Reciprocal-rank fusion of several runs."""
    out_scores, out_ids = [], []
    for q in range(len(runs[0][1])):
        fused: Dict[str, float] = {}
        for _, ids in runs:
            for rank, pid in enumerate(ids[q], start=1):
                fused[pid] = fused.get(pid, 0.0) + 1.0 / (rrf_k + rank)
        scores, ids = _top(fused, k)
        out_scores.append(scores)
        out_ids.append(ids)
    return _pad(out_scores, k), out_ids


def _pad(rows: List[List[float]], k: int) -> np.ndarray:
    out = np.full((len(rows), k), -np.inf, dtype=np.float32)  # [n, k]; lists shorter than k keep -inf
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def fuse(dense: Run, sparse: Run, method: str, k: int, alpha: float = 0.1) -> Run:
    """Fuse a dense and a sparse run with `method` (weighted | rrf)."""
    if method == "weighted":
        return weighted_sum(dense, sparse, alpha, k)
    if method == "rrf":
        return rrf([dense, sparse], k)
    raise ValueError(f"unknown fusion {method!r}: choose one of {', '.join(FUSIONS)}")
