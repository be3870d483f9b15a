"""Full-corpus retrieval and DPR's top-k evaluation (dense_retriever.py)."""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

from .data.readers import QAPair, iter_passage_chunks, read_qa
from .embeddings import EmbeddingError
from .errors import DprError
from .evaluation import DEFAULT_TOP_K, format_top_k_table, has_answer, top_k_accuracy
from .index import ExactIndex, HNSWIndex, load_shards, recall_at_k
from .utils import atomic_path, write_json_atomic

logger = logging.getLogger(__name__)


def encode_questions(encode_fn, tensorizer, questions: List[str], batch_size: int, progress: bool = True) -> np.ndarray:
    """[n, D] float32 question vectors, `batch_size` questions per forward (a bar with `progress`)."""
    from tqdm import tqdm

    out = []
    for i in tqdm(range(0, len(questions), batch_size), desc="questions", unit="batch", dynamic_ncols=True,
                  disable=not progress):
        out.append(encode_fn(tensorizer.encode_questions(questions[i : i + batch_size])))
    return np.concatenate(out, axis=0)


def fetch_passages(ctx_file: str, wanted: set) -> Dict[str, tuple]:
    """{id: (text, title)} for the wanted ids only, streaming the TSV (21M rows need not fit)."""
    found = {}
    for ids, texts, titles in iter_passage_chunks(ctx_file):
        for pid, text, title in zip(ids, texts, titles):
            if pid in wanted:
                found[pid] = (text, title)
    missing = wanted - found.keys()
    if missing:
        sample = sorted(missing)[:5]
        raise EmbeddingError(f"{ctx_file}: {len(missing)} retrieved passage ids are not in the ctx file "
                             f"(e.g. {sample}); were the embeddings made from another corpus?")
    return found


def passage_texts(ctx_file: str, wanted: set, store: Optional[str], shards_pattern: Optional[str]) -> Dict[str, tuple]:
    """{id: (text, title)}: from the passage store (`store`, or passages.sqlite beside the shards)
    when there is one, else by streaming the TSV."""
    from .index import shard_paths
    from .passage_store import PassageStore, default_store_path

    path = store or (default_store_path(shard_paths(shards_pattern)[0]) if shards_pattern else None)
    if not (path and PassageStore.is_complete(path)):
        if store:
            raise RetrieverError(f"--passage_store {store}: no complete store there; build it with "
                                 f"python -m dpr_paddle.passage_store {ctx_file} --output {store}")
        return fetch_passages(ctx_file, wanted)  # an unfinished store beside the shards is not used
    found = PassageStore.open(path, ctx_file).get(wanted)
    missing = wanted - found.keys()
    if missing:
        raise EmbeddingError(f"{path}: {len(missing)} retrieved passage ids are not in the passage store "
                             f"(e.g. {sorted(missing)[:5]}); were the embeddings made from another corpus?")
    logger.info("passage texts from %s", path)
    return found


def _match_one(job):
    (answers, texts), match = job
    return [has_answer(answers, text, match) for text in texts]


def match_answers(jobs, match: str, workers: int = 1) -> List[List[bool]]:
    """has_answer for each (answers, [passage texts]) job, in `workers` processes."""
    if workers <= 1:
        return [_match_one((job, match)) for job in jobs]
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return pool.map(_match_one, [(job, match) for job in jobs], chunksize=64)


def write_trec(path: str, qa: List[QAPair], ids: List[List[str]], scores: np.ndarray, run: str = "dpr_paddle") -> None:
    """A TREC run file: `qid Q0 docid rank score run` (qid = question's line number from 1)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for q, (row_ids, row_scores) in enumerate(zip(ids, scores)):
                for rank, (pid, s) in enumerate(zip(row_ids, row_scores), start=1):
                    f.write(f"{q + 1} Q0 {pid} {rank} {float(s):.6f} {run}\n")


class RetrieverError(DprError, RuntimeError):
    """The retriever's flags do not make a run (a missing input, a dense run without shards)."""


def retrieval_mode(bm25: bool, hybrid: bool) -> str:
    """dense (the default), bm25 (--bm25 wins) or hybrid."""
    return "bm25" if bm25 else "hybrid" if hybrid else "dense"


def default_ef(k: int, n_docs: int, ef_search: int = 0) -> int:
    """hnswlib's ef: `ef_search` when given, else max(8 * n_docs, 256) (docs/benchmarks.md: at 1M
    vectors, ip, M 32, recall@100 0.945 at ef 400 and 0.979 at 800); never below the depth k."""
    return max(ef_search or max(8 * min(k, n_docs), 256), k)


class DenseIndex:
    """Embedding shards and how they are searched: exact inner product, or hnswlib (built once,
    or loaded from `index_path` when it was built from these shards with these settings)."""

    def __init__(self, pattern: str, hnsw: bool = False, m: int = 32, ef_construction: int = 200, space: str = "auto",
                 index_path: Optional[str] = None, ef_search: int = 0):
        self.shards = load_shards(pattern)
        self.exact = ExactIndex(self.shards)
        self.ef_search = ef_search
        self.hnsw = None
        self.build_seconds = 0.0
        if hnsw:
            t0 = time.perf_counter()
            self.hnsw = HNSWIndex(self.exact, m=m, ef_construction=ef_construction, space=space)
            if not (index_path and self.hnsw.load(index_path)):
                self.hnsw.build()
                if index_path:
                    self.hnsw.save(index_path)
            self.build_seconds = time.perf_counter() - t0

    def __len__(self) -> int:
        return int(self.exact.offsets[-1])

    def ef_for(self, k: int, n_docs: int) -> int:
        """hnswlib's ef for a search of depth k (see `default_ef`)."""
        return default_ef(k, n_docs, self.ef_search)

    def search(self, q: np.ndarray, k: int, n_docs: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Top k of [n, D] question vectors: (exact scores [n, k], global rows [n, k]), best first."""
        k = min(k, len(self))
        if self.hnsw is None:
            return self.exact.search(q, k)
        return self.hnsw.search(q, k, ef=self.ef_for(k, n_docs or k))

    def ids(self, rows: np.ndarray) -> List[List[str]]:
        """Passage ids of [n, k] global rows."""
        return [[self.exact.row_id(int(r)) for r in row] for row in rows]

    def describe(self) -> dict:
        """What a metrics file records about the index."""
        out = {"index": "hnsw" if self.hnsw else "exact", "passages": len(self),
               "model_fingerprint": self.shards[0].meta.get("model_fingerprint")}
        if self.hnsw:
            out["hnsw"] = {"M": self.hnsw.m, "ef_construction": self.hnsw.ef_construction, "space": self.hnsw.space}
        return out


def dense_search(args, encode_fn, tensorizer, questions: List[str], depth: int, question_info: Optional[dict],
                 metrics: dict) -> Tuple[np.ndarray, List[List[str]]]:
    """Encode `questions` and search the shards (exact or hnsw): (scores [n, depth], ids [n][depth]).

    Adds what it measured (passages, index settings, hnsw recall, seconds) to `metrics`."""
    index = DenseIndex(args.encoded_ctx_file, args.hnsw_index, args.hnsw_m, args.ef_construction, args.hnsw_space,
                       args.index_path, args.ef_search)
    check_recipe(index.shards, question_info)
    logger.info("%d questions, %d passages in %d shard(s)", len(questions), len(index), len(index.shards))
    t0 = time.perf_counter()
    q = encode_questions(encode_fn, tensorizer, questions, args.batch_size)
    check_dim(q, index.shards)
    metrics["seconds"]["encode_questions"] = round(time.perf_counter() - t0, 3)
    metrics["seconds"]["build_index"] = round(index.build_seconds, 3)
    k = min(depth, len(index))
    t0 = time.perf_counter()
    scores, rows = index.search(q, k, args.n_docs)
    metrics["seconds"]["search"] = round(time.perf_counter() - t0, 3)
    described = index.describe()
    metrics.update({"passages": described["passages"], "index": described["index"]})
    if index.hnsw:
        metrics["hnsw"] = {**described["hnsw"], "ef_search": index.ef_for(k, args.n_docs)}
    if index.hnsw and args.validate_index:
        n = min(args.validate_index, len(q))
        _, exact_rows = index.exact.search(q[:n], k)
        recall = recall_at_k(rows[:n], exact_rows, ks=[x for x in (1, 5, 20, 100) if x <= k])
        logger.info("hnsw recall against exact search on %d questions: %s", n,
                    ", ".join(f"@{a}={b:.4f}" for a, b in recall.items()))
        metrics["hnsw_recall"] = {str(a): b for a, b in recall.items()}
    return scores, index.ids(rows)


def check_dim(q: np.ndarray, shards) -> None:
    """Question vectors must have the passages' dimension."""
    if q.shape[1] != shards[0].meta["dim"]:
        raise EmbeddingError(f"question vectors have dim {q.shape[1]} but the shards have dim {shards[0].meta['dim']}: "
                             "the question and context encoders do not belong together")


def check_encoders(pattern: str, context: Tuple[str, str], question: Optional[dict]) -> None:
    """The shards must come from the given context encoder (refused otherwise); a question encoder
    from another checkpoint than theirs is worth a warning (a DPR pair is trained together)."""
    from .embeddings import read_meta
    from .index import shard_paths

    meta = read_meta(shard_paths(pattern)[0]) or {}  # one meta.json: the ids of every shard need not be read
    path, fingerprint = context
    if meta.get("model_fingerprint") != fingerprint:
        raise EmbeddingError(f"{pattern}: the passages were encoded by {meta.get('model')} (fingerprint "
                             f"{meta.get('model_fingerprint')}), not by the context encoder {path} ({fingerprint}); "
                             "pass the context encoder that made them, or re-encode with this one")
    if question and os.path.dirname(question["model"]) != os.path.dirname(str(meta.get("model"))):
        logger.warning("the question encoder %s is not from the checkpoint of the shards' context encoder %s",
                       question["model"], meta.get("model"))


def check_recipe(shards, question_info: Optional[dict]) -> None:
    """Questions must be pooled and compared as the shards' passages were."""
    if not question_info:
        return
    meta = shards[0].meta
    for key, default in (("pooling", "cls"), ("similarity", "dot")):
        have, want = meta.get(key, default), question_info.get(key, default)
        if have != want:
            raise EmbeddingError(f"{shards[0].path} holds passages encoded with {key} {have}, but the question "
                                 f"encoder uses {want}; pass --{key} {have} or re-encode the passages")


def bm25_search(args, questions: List[str], depth: int, metrics: dict) -> Tuple[np.ndarray, List[List[str]]]:
    """BM25 over --ctx_file (index built once, then reused): (scores [n, k], ids [n][k])."""
    from .bm25 import BM25Index

    t0 = time.perf_counter()
    index = BM25Index.open(args.ctx_file, args.bm25_index)
    metrics["seconds"]["bm25_index"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    run = index.search(questions, depth)
    metrics["seconds"]["bm25_search"] = round(time.perf_counter() - t0, 3)
    metrics.setdefault("passages", len(index.ids))
    metrics["bm25"] = index.meta["params"]
    return run


def retrieve(args, encode_fn=None, tensorizer=None, question_info: Optional[dict] = None) -> Dict[str, float]:
    """Retrieve for every question in args.qa_file (dense, --bm25 or --hybrid); write results and
    return top-k accuracy with what was measured."""
    from .fusion import fuse

    mode = retrieval_mode(args.bm25, args.hybrid)
    if mode != "bm25" and not args.encoded_ctx_file:
        raise RetrieverError("--encoded_ctx_file is needed for dense and --hybrid retrieval (or pass --bm25)")
    qa = read_qa(args.qa_file)
    questions = [x.question for x in qa]
    no_answer = sum(1 for x in qa if not x.answers)
    if no_answer:
        logger.warning("%s: %d of %d questions have an empty answers list; they count as misses", args.qa_file,
                       no_answer, len(qa))
    k = args.n_docs
    depth = max(k, args.hybrid_depth) if mode == "hybrid" else k
    metrics = {"mode": mode, "questions": len(qa), "n_docs": k, "match": args.match, "seconds": {}}
    dense = dense_search(args, encode_fn, tensorizer, questions, depth, question_info, metrics) if mode != "bm25" else None
    sparse = bm25_search(args, questions, depth, metrics) if mode != "dense" else None
    if mode == "hybrid":
        scores, ids = fuse(dense, sparse, args.fusion, k, args.hybrid_alpha)
        metrics["fusion"] = {"method": args.fusion, "depth": depth,
                             **({"alpha": args.hybrid_alpha} if args.fusion == "weighted" else {"rrf_k": 60})}
    else:
        scores, ids = dense or sparse
    k = min(k, metrics["passages"])
    metrics["n_docs"] = k
    scores, ids = scores[:, :k], [row[:k] for row in ids]

    passages = passage_texts(args.ctx_file, {i for row in ids for i in row}, args.passage_store,
                             args.encoded_ctx_file if mode != "bm25" else None)
    hits = match_answers([(item.answers, [passages[pid][0] for pid in row]) for item, row in zip(qa, ids)],
                         args.match, args.validation_workers)
    ks = [x for x in DEFAULT_TOP_K if x <= k] or [k]
    acc = top_k_accuracy(hits, ks)
    label = mode if mode != "dense" else os.path.basename((args.encoded_ctx_file or "").rstrip("*_")) or "retriever"
    print(format_top_k_table({label: acc}, ks))
    metrics["top_k_accuracy"] = {str(a): b for a, b in acc.items()}

    if args.out_file:
        results = []
        for item, row_ids, row_scores, row_hits in zip(qa, ids, scores, hits):
            results.append({
                "question": item.question, "answers": item.answers,
                "ctxs": [{"id": pid, "title": passages[pid][1], "text": passages[pid][0], "score": f"{float(s):.6f}",
                          "has_answer": h} for pid, s, h in zip(row_ids, row_scores, row_hits)],
            })
        with atomic_path(args.out_file) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(results, f, indent=2, ensure_ascii=False)
        logger.info("wrote %s", args.out_file)
    metrics_file = args.metrics_file or (args.out_file + ".metrics.json" if args.out_file else None)
    if metrics_file:
        write_json_atomic(metrics_file, metrics)
    if args.trec_file:
        write_trec(args.trec_file, qa, ids, scores, run=f"dpr_paddle_{mode}")
    return metrics
