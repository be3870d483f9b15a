"""Questions to one ranked list: dense, BM25, or both fused (the one fusion path).

`Searcher` holds a DenseSearcher and/or a BM25Index and a `SearchSpec`; `search(questions, k)`
returns (scores [n, k], ids [n][k]), best first. In hybrid mode each retriever gives its top
`depth` (>= k) and `fusion.fuse` merges them. dense_retriever.py, the `Retriever` API, the HTTP
server and mining all search through it, so their results are the same for the same settings.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..common.options import InvalidValue, check_numbers
from .fusion import fuse

MODES = ("dense", "bm25", "hybrid")


def retrieval_mode(bm25: bool, hybrid: bool) -> str:
    """dense (the default), bm25 (--bm25 wins) or hybrid."""
    return "bm25" if bm25 else "hybrid" if hybrid else "dense"


@dataclass(frozen=True)
class SearchSpec:
    """How questions are searched: `mode` dense | bm25 | hybrid; in hybrid mode `fusion` (weighted |
    rrf) of each retriever's top `depth`, BM25 weighted by `alpha`; `bm25_index` where BM25's index
    is kept (default: a cache directory keyed by the corpus), `bm25_analyzer` how BM25 splits text
    (analyzers.py; `auto` picks by the corpus's script)."""

    mode: str = "dense"
    fusion: str = "weighted"
    alpha: float = 1.0
    depth: int = 1000
    bm25_index: Optional[str] = None
    bm25_analyzer: str = "auto"

    def __post_init__(self):
        from .analyzers import check_name
        from .fusion import FUSIONS

        if self.mode not in MODES or self.fusion not in FUSIONS:
            raise InvalidValue(f"mode {self.mode!r} / fusion {self.fusion!r}: one of {MODES} / {FUSIONS}")
        check_name(self.bm25_analyzer)
        check_numbers(self, ("alpha", "depth"))

    def describe(self) -> dict:
        """What a metrics file records about the fusion."""
        return {"method": self.fusion, "depth": self.depth,
                **({"alpha": self.alpha} if self.fusion == "weighted" else {"rrf_k": 60})}


class Searcher:
    """A dense searcher and/or a BM25 index, searched and fused as `spec` says."""

    def __init__(self, spec: SearchSpec, dense=None, bm25=None):
        self.spec, self.dense, self.bm25 = spec, dense, bm25

    @classmethod
    def load(cls, spec: SearchSpec, ctx_file: str, tower=None, shards: Optional[str] = None, index_spec=None,
             batch_size: int = 64, check_context: bool = False, timings: Optional[dict] = None) -> "Searcher":
        """Load what `spec.mode` needs: the question tower (an encoding.towers.TowerSpec) over `shards`
        for dense and hybrid, BM25 over `ctx_file` (built once, then reused) for bm25 and hybrid."""
        from .dense import DenseSearcher

        dense = bm25 = None
        if spec.mode != "bm25":
            dense = DenseSearcher.load(tower, shards, index_spec, batch_size, check_context=check_context)
            if timings is not None:
                timings["build_index"] = round(dense.index.build_seconds, 3)
        if spec.mode != "dense":
            from .bm25 import BM25Index

            t0 = time.perf_counter()
            bm25 = BM25Index.open(ctx_file, spec.bm25_index, spec.bm25_analyzer)
            if timings is not None:
                timings["bm25_index"] = round(time.perf_counter() - t0, 3)
        return cls(spec, dense, bm25)

    def search(self, questions: Sequence[str], k: int, trace: Optional[dict] = None) -> Tuple[np.ndarray, List[List[str]]]:
        """Top k of each question, best first: (scores [n, k], ids [n][k]); a `trace` dict receives
        what was measured (seconds; the dense vectors and rows)."""
        questions = list(questions)
        depth = max(k, self.spec.depth) if self.spec.mode == "hybrid" else k
        dense = sparse = None
        if self.dense is not None:
            dense = self.dense.search(questions, depth, n_docs=k, trace=trace)
        if self.bm25 is not None:
            t0 = time.perf_counter()
            sparse = self.bm25.search(questions, depth)
            if trace is not None:
                trace.setdefault("seconds", {})["bm25_search"] = round(time.perf_counter() - t0, 3)
        if self.spec.mode == "hybrid":
            return fuse(dense, sparse, self.spec.fusion, k, self.spec.alpha)
        return dense or sparse
