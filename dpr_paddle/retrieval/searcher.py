"""Questions to one ranked list: dense, BM25, or both fused (the one fusion path), then optionally
reranked by a cross-encoder.

`Searcher` holds a DenseSearcher and/or a BM25Index and a `SearchSpec`; `search(questions, k)`
returns (scores [n, k], ids [n][k]), best first. In hybrid mode each retriever gives its top
`depth` (>= k) and `fusion.fuse` merges them. With a `Reranker` loaded, mode `rerank` takes the
spec's first stage (dense, bm25 or hybrid) to max(k, `rerank_depth`) and reorders its top
`rerank_depth` (rerank.py). dense_retriever.py, the `Retriever` API, the HTTP server and mining
all search through it, so their results are the same for the same settings.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..common.options import InvalidValue, check_numbers
from .fusion import fuse
from .jvm import DEFAULT_HEAP

MODES = ("dense", "bm25", "hybrid")
ENGINES = ("auto", "bm25s", "lucene")
RERANK = "rerank"  # a mode of a Searcher with a reranker: its first stage (MODES), then the cross-encoder


def retrieval_mode(bm25: bool, hybrid: bool) -> str:
    """dense (the default), bm25 (--bm25 wins) or hybrid."""
    return "bm25" if bm25 else "hybrid" if hybrid else "dense"


@dataclass(frozen=True)
class SearchSpec:
    """How questions are searched: `mode` dense | bm25 | hybrid; in hybrid mode `fusion` (weighted |
    rrf) of each retriever's top `depth`, BM25 weighted by `alpha`; `bm25_index` where BM25's index
    is kept (default: a cache directory keyed by the corpus), `bm25_analyzer` how BM25 splits text
    (analyzers.py; `auto` picks by the corpus's script), `bm25_engine` bm25s | lucene | auto (`choose_engine`),
    `bm25_k1` / `bm25_b` (None: the engine's defaults), and Lucene's Java heap and search threads."""

    mode: str = "dense"
    fusion: str = "weighted"
    alpha: float = 1.0
    depth: int = 1000
    bm25_index: Optional[str] = None
    bm25_analyzer: str = "auto"
    rerank_model: Optional[str] = None  # a reranker directory (train_reranker.py): adds the `rerank` mode
    rerank_depth: int = 20  # how many of the first stage's best it reorders (rerank.DEFAULT_RERANK_DEPTH)
    rerank_batch_size: int = 32  # pairs per cross-encoder forward
    rerank_alpha: float = 0.0  # > 0: the cross-encoder's score interpolated with the first stage's (rerank.py)
    bm25_engine: str = "auto"
    bm25_k1: Optional[float] = None
    bm25_b: Optional[float] = None
    bm25_heap: str = DEFAULT_HEAP
    bm25_threads: int = 2
    rerank_backend: Optional[str] = None  # None: the towers' backend when it is float32's, else auto
    rerank_max_length: int = 0  # tokens of a (question, passage) pair the reranker reads; 0: its own

    def __post_init__(self):
        from ..encoding.spec import check_backend
        from .analyzers import check_name
        from .fusion import FUSIONS
        from .jvm import check_heap

        if self.mode not in MODES or self.fusion not in FUSIONS:
            raise InvalidValue(f"mode {self.mode!r} / fusion {self.fusion!r}: one of {MODES} / {FUSIONS}")
        check_name(self.bm25_analyzer)
        if self.bm25_engine not in ENGINES:
            raise InvalidValue(f"--bm25_engine {self.bm25_engine!r}: one of {', '.join(ENGINES)}")
        check_numbers(self, ("alpha", "depth", "rerank_depth", "rerank_batch_size", "rerank_alpha", "bm25_k1",
                             "bm25_b", "bm25_threads", "rerank_max_length"))
        check_heap(self.bm25_heap)
        check_backend(self.rerank_backend, name="rerank_backend")

    def describe(self) -> dict:
        """What a metrics file records about the fusion."""
        return {"method": self.fusion, "depth": self.depth,
                **({"alpha": self.alpha} if self.fusion == "weighted" else {"rrf_k": 60})}


def rerank_backend(spec: "SearchSpec", tower=None) -> str:
    """The reranker's backend: `spec.rerank_backend` when given, else the towers' backend unless it changes
    vectors (int8, bf16: a reranker in lower precision is its own opt-in), else auto."""
    from ..encoding.towers import QUANTIZATION

    if spec.rerank_backend:
        return spec.rerank_backend
    backend = tower.backend if tower is not None else "auto"
    return "auto" if backend in QUANTIZATION else backend


class Searcher:
    """A dense searcher and/or a BM25 index, searched and fused as `spec` says."""

    def __init__(self, spec: SearchSpec, dense=None, bm25=None, reranker=None, passages=None):
        self.spec, self.dense, self.bm25 = spec, dense, bm25
        self.reranker = reranker  # a rerank.Reranker, or None
        self.passages = passages  # ids -> {id: (text, title)}: what the reranker reads

    @classmethod
    def load(cls, spec: SearchSpec, ctx_file: str, tower=None, shards: Optional[str] = None, index_spec=None,
             batch_size: int = 64, timings: Optional[dict] = None,
             index=None, bm25=None) -> "Searcher":
        """Load what `spec.mode` needs: the question tower (an encoding.towers.TowerSpec) over `shards`
        for dense and hybrid, BM25 over `ctx_file` (built once, then reused) for bm25 and hybrid, and
        `spec.rerank_model` with the passages of `ctx_file` to read (the API gives its store instead).
        `index` (a loaded DenseIndex) and `bm25` (a loaded BM25Index) are used instead of loading
        them: the server's workers share them (see `preload`)."""
        from .dense import DenseSearcher

        dense = None
        if spec.mode != "bm25":
            dense = DenseSearcher.load(tower, shards, index_spec, batch_size, index=index)
            if timings is not None:
                timings["build_index"] = round(dense.index.build_seconds, 3)
        if spec.mode != "dense" and bm25 is None:
            t0 = time.perf_counter()
            bm25 = open_bm25(spec, ctx_file)
            if timings is not None:
                timings["bm25_index"] = round(time.perf_counter() - t0, 3)
        searcher = cls(spec, dense, bm25 if spec.mode != "dense" else None)
        if spec.rerank_model:
            from .passage_store import passage_texts
            from .rerank import Reranker

            reranker = Reranker.load(spec.rerank_model, rerank_backend(spec, tower), spec.rerank_batch_size,
                                     spec.rerank_max_length)
            searcher.with_reranker(reranker, lambda wanted: passage_texts(ctx_file, wanted, None, shards))
        return searcher

    @property
    def size(self) -> int:
        """How many passages it searches (dense and BM25 cover one corpus)."""
        return len(self.dense.index) if self.dense is not None else len(self.bm25)

    @property
    def modes(self) -> List[str]:
        """The modes this searcher can answer in: dense and/or bm25, and hybrid when it has both."""
        have = [m for m, part in (("dense", self.dense), ("bm25", self.bm25)) if part is not None]
        return have + ["hybrid"] * (len(have) == 2) + [RERANK] * (self.reranker is not None)

    def with_reranker(self, reranker, passages) -> "Searcher":
        """This searcher with a second stage: `reranker` (rerank.Reranker) reading `passages(ids)`."""
        self.reranker, self.passages = reranker, passages
        return self

    def search(self, questions: Sequence[str], k: int, trace: Optional[dict] = None,
               mode: Optional[str] = None) -> Tuple[np.ndarray, List[List[str]]]:
        """Top k of each question, best first: (scores [n, k], ids [n][k]); a `trace` dict receives
        what was measured (seconds; the dense vectors and rows). `mode` (default: the spec's) is
        one of `modes`: a hybrid searcher also answers as dense or BM25 alone, one with a reranker as
        `rerank` (its first stage's scores go to `trace["first_stage_scores"]`, [n, k])."""
        mode = mode or self.spec.mode
        if mode not in self.modes:
            raise InvalidValue(f"mode {mode!r} is not available here; one of {self.modes}")
        questions = list(questions)
        if mode == RERANK:
            depth = min(self.spec.rerank_depth, self.size)
            scores, ids = self.search(questions, max(k, depth), trace, mode=self.spec.mode)
            k = min(k, self.size)
            if trace is not None:
                trace["first_stage"] = (scores[:, :k], [row[:k] for row in ids])
            t0 = time.perf_counter()
            texts = self.passages({pid for row in ids for pid in row[:depth]})
            scores, ids, first = self.reranker.rerank(questions, ids, scores, texts, depth,
                                                      progress=len(questions) > 50, alpha=self.spec.rerank_alpha)
            if trace is not None:
                trace.setdefault("seconds", {})["rerank"] = round(time.perf_counter() - t0, 3)
                trace["first_stage_scores"] = first[:, :k]
            return scores[:, :k], [row[:k] for row in ids]
        # every allocation below is sized by k or depth: asking for more than the corpus holds gives the
        # whole corpus (what a user of --n_docs 10**12 meant), never an array of that many rows
        k = min(k, self.size)
        depth = min(max(k, self.spec.depth), self.size) if mode == "hybrid" else k
        dense = sparse = None
        if mode != "bm25":
            dense = self.dense.search(questions, depth, n_docs=k, trace=trace)
        if mode != "dense":
            t0 = time.perf_counter()
            sparse = self.bm25.search(questions, depth)
            if trace is not None:
                trace.setdefault("seconds", {})["bm25_search"] = round(time.perf_counter() - t0, 3)
        if mode == "hybrid":
            return fuse(dense, sparse, self.spec.fusion, k, self.spec.alpha)
        return dense or sparse


def choose_engine(spec: SearchSpec, ctx_file: str, analyzer: str) -> str:
    """The BM25 engine `spec` means. `auto`: the engine of the index `--bm25_index` (or the cache) already
    holds; else bm25s when its in-memory build fits (it is the faster of the two below a few million
    passages, and every figure in the README was measured with it), else Lucene, which needs a small heap
    whatever the corpus's size. The choice is logged with its reason."""
    import logging
    import os

    from . import bm25, lucene

    if spec.bm25_engine != "auto":
        return spec.bm25_engine
    log = logging.getLogger(__name__)
    candidates = [spec.bm25_index] if spec.bm25_index else [bm25.default_index_path(ctx_file, analyzer),
                                                            lucene.default_index_path(ctx_file, analyzer)]
    for path in candidates:
        dirs = lucene.index_dirs(path)
        if dirs and all(os.path.isfile(os.path.join(d, "meta.json")) for d in dirs):
            engine = "lucene" if all(lucene.holds_index(d) for d in dirs) else "bm25s"
            log.info("bm25 engine auto -> %s (the index at %s)", engine, path)
            return engine
    plan = bm25.memory_plan(ctx_file)
    if not plan.fits:
        log.info("bm25 engine auto -> lucene (%s: a bm25s build would not fit)", plan.line())
        return "lucene"
    return "bm25s"


def bm25_plan(spec: SearchSpec, ctx_file: str) -> Tuple[str, str]:
    """(analyzer, engine) that `spec` means for `ctx_file`, `auto` resolved for both (each reads the corpus or
    the disk and logs its choice, so callers resolve once and hand the plan to `open_bm25`)."""
    from .bm25 import corpus_analyzer

    analyzer = corpus_analyzer(ctx_file, spec.bm25_analyzer)
    return analyzer, choose_engine(spec, ctx_file, analyzer)


def open_bm25(spec: SearchSpec, ctx_file: str, plan: Optional[Tuple[str, str]] = None):
    """The BM25 index of `ctx_file` that `spec` names (built once, then reused), on its engine; `plan` is
    `bm25_plan`'s answer when the caller already has it."""
    from .bm25 import BM25Index

    analyzer, engine = plan or bm25_plan(spec, ctx_file)
    if engine == "bm25s":
        return BM25Index.open(ctx_file, spec.bm25_index, analyzer, spec.bm25_k1, spec.bm25_b)
    from .lucene import DEFAULT_B, DEFAULT_K1, LuceneIndex

    return LuceneIndex.open(ctx_file, spec.bm25_index, analyzer, spec.bm25_heap, spec.bm25_threads,
                            DEFAULT_K1 if spec.bm25_k1 is None else spec.bm25_k1,
                            DEFAULT_B if spec.bm25_b is None else spec.bm25_b)


def preload(spec: SearchSpec, ctx_file: str, shards: Optional[str], index_spec=None) -> dict:
    """The parts of a searcher that processes forked afterwards can share read-only: the dense index
    when it lives in this process (exact: memory-mapped shards; hnsw: the graph) and BM25. A Milvus
    index is left out: its client connection must not cross a fork, so each process opens its own.
    Loads no model (Paddle must not start before a fork). Returns Searcher.load's `index`/`bm25`."""
    from ..index.factory import DenseIndex, IndexSpec

    index_spec = index_spec or IndexSpec()
    parts = {}
    if spec.mode != "bm25" and index_spec.kind != "milvus":
        parts["index"] = DenseIndex(shards, index_spec)
    if spec.mode != "dense":
        # Lucene's JVM must not cross the fork: each process opens the index itself (the first builds it while
        # the others wait on its lock)
        plan = bm25_plan(spec, ctx_file)
        if plan[1] == "bm25s":
            parts["bm25"] = open_bm25(spec, ctx_file, plan)
    return parts
