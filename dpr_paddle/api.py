"""Ask a trained retriever questions from Python: load once, search many times.

    from dpr_paddle import Retriever
    r = Retriever.load("save_biencoder/latest", index="runs/emb", passages="psgs.tsv")
    hits = r.search(["who wrote hamlet"], k=10)  # [[{"id", "title", "text", "score"}, ...]]

`mode="bm25"` needs only `passages`; `mode="hybrid"` fuses both (as dense_retriever.py --hybrid).
The results equal dense_retriever.py's for the same settings: the same question encoder, index and
fusion code. Passage texts come from the SQLite passage store (built beside the shards on first
load when missing), never from streaming the TSV.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Dict, List, Optional, Sequence

from .hnsw_index import DEFAULT_EF_CONSTRUCTION, DEFAULT_M

logger = logging.getLogger(__name__)

MODES = ("dense", "bm25", "hybrid")


class Retriever:
    """A loaded retriever: question encoder + dense index and/or BM25, and the passage store."""

    def __init__(self, mode: str, store, encoder=None, dense=None, bm25=None, fusion: str = "weighted",
                 alpha: float = 1.0, depth: int = 1000, batch_size: int = 64, info: Optional[dict] = None):
        self.mode, self.store, self.dense, self.bm25 = mode, store, dense, bm25
        self._encode, self._tensorizer = encoder or (None, None)
        self.fusion, self.alpha, self.depth, self.batch_size = fusion, alpha, depth, batch_size
        self.info = info or {}
        self._lock = threading.Lock()  # Paddle Inference predictors are not re-entrant

    @classmethod
    def load(cls, model: Optional[str] = None, index: Optional[str] = None, passages: Optional[str] = None,
             question_encoder: Optional[str] = None, context_encoder: Optional[str] = None, mode: str = "dense",
             hnsw: bool = False, index_path: Optional[str] = None, hnsw_m: int = DEFAULT_M,
             ef_construction: int = DEFAULT_EF_CONSTRUCTION, hnsw_space: str = "auto", ef_search: int = 0,
             bm25_index: Optional[str] = None,
             fusion: str = "weighted", alpha: float = 1.0, depth: int = 1000, store: Optional[str] = None,
             index_spec=None, **tower_kw) -> "Retriever":
        """Load the model, index and passage store once. `model` is a checkpoint directory or an encoder
        name/dir (or give `question_encoder`/`context_encoder`); `index` the embedding shards; `passages`
        the TSV. `index_spec` (an index_factory.IndexSpec) picks any backend; without it `hnsw` and its
        settings pick between exact search and one hnsw graph. Extra keyword arguments go to
        `inference.load_tower` (pooling, backend, max lengths...)."""
        from .passage_store import PassageStore, default_store_path

        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not passages:
            raise ValueError("passages (the TSV) is needed: it is what hits are read from")
        encoder = dense = bm25 = None
        info = {"mode": mode}
        if mode != "bm25":
            from .inference import load_tower
            from .model import QUESTION
            from .retriever import DenseIndex, check_recipe

            if not index:
                raise ValueError("index (the embedding shards) is needed for dense and hybrid retrieval")
            is_checkpoint = bool(model) and os.path.isdir(os.path.join(model, "question_encoder"))
            encode, tensorizer, tower_info = load_tower(
                QUESTION, model_file=model if is_checkpoint else None, que_model_path=question_encoder,
                con_model_path=context_encoder, model_name_or_path=model or "minilm", **tower_kw)
            from .index_factory import IndexSpec

            spec = index_spec or IndexSpec("hnsw" if hnsw else "exact", hnsw_m, ef_construction, hnsw_space, index_path)
            dense = DenseIndex(index, spec, ef_search)
            check_recipe(dense.shards, tower_info)
            encoder = (encode, tensorizer)
            info.update(dense.describe())
            info["question_model_fingerprint"] = tower_info["model_fingerprint"]
        if mode != "dense":
            from .bm25 import BM25Index

            bm25 = BM25Index.open(passages, bm25_index)
            info["bm25_passages"] = len(bm25.ids)
        if store is None:
            from .pretrained import cache_root
            from .utils import file_fingerprint

            store = (default_store_path(dense.shards[0].path) if dense else
                     os.path.join(cache_root(), "passages", file_fingerprint(passages)["sha1_ends"][:16] + ".sqlite"))
            os.makedirs(os.path.dirname(store), exist_ok=True)
        passage_store = PassageStore.open_or_build(passages, store)
        info["passages"] = len(passage_store)
        return cls(mode, passage_store, encoder, dense, bm25, fusion, alpha, depth, info=info)

    def encode_questions(self, questions: Sequence[str]):
        """[n, D] float32 question vectors, in batches of `batch_size`, as dense_retriever.py encodes them."""
        from .retriever import encode_questions

        with self._lock:
            return encode_questions(self._encode, self._tensorizer, list(questions), self.batch_size, progress=False)

    def search(self, questions: Sequence[str], k: int = 10) -> List[List[Dict]]:
        """The top k passages for each question: [[{"id", "title", "text", "score"}, ...], ...], best first."""
        from .fusion import fuse

        questions = list(questions)
        if not questions:
            return []
        depth = max(k, self.depth) if self.mode == "hybrid" else k
        dense = sparse = None
        if self.dense is not None:
            scores, rows = self.dense.search(self.encode_questions(questions), depth, n_docs=k)
            dense = (scores, self.dense.ids(rows))
        if self.bm25 is not None:
            sparse = self.bm25.search(questions, depth)
        if self.mode == "hybrid":
            scores, ids = fuse(dense, sparse, self.fusion, k, self.alpha)
        else:
            scores, ids = dense or sparse
        texts = self.store.get(pid for row in ids for pid in row[:k])
        return [[{"id": pid, "title": texts[pid][1], "text": texts[pid][0], "score": float(s)}
                 for pid, s in zip(row_ids[:k], row_scores[:k])] for row_ids, row_scores in zip(ids, scores)]


def from_args(args) -> Retriever:
    """A Retriever from the flags of dense_retriever.py (config.SearchArgs)."""
    from .config import index_spec
    from .inference import tower_options
    from .retriever import retrieval_mode

    mode = retrieval_mode(args.bm25, args.hybrid)
    kw = {k: v for k, v in tower_options(args).items() if k not in ("model_file", "model_name_or_path",
                                                                     "que_model_path", "con_model_path")}
    retriever = Retriever.load(args.model_file or args.model_name_or_path, index=args.encoded_ctx_file,
                               passages=args.ctx_file, question_encoder=args.que_model_path,
                               context_encoder=args.con_model_path, mode=mode, index_spec=index_spec(args),
                               ef_search=args.ef_search, bm25_index=args.bm25_index,
                               fusion=args.fusion, alpha=args.hybrid_alpha, depth=args.hybrid_depth,
                               store=args.passage_store, **kw)
    retriever.batch_size = args.batch_size
    return retriever
