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
from .evaluation import DEFAULT_TOP_K, format_top_k_table, has_answer, top_k_accuracy
from .index import ExactIndex, HNSWIndex, load_shards, recall_at_k
from .utils import atomic_path, write_json_atomic
from .errors import DprError

logger = logging.getLogger(__name__)


def encode_questions(encode_fn, tensorizer, questions: List[str], batch_size: int) -> np.ndarray:
    """[n, D] float32 question vectors."""
    from tqdm import tqdm

    out = []
    for i in tqdm(range(0, len(questions), batch_size), desc="questions", unit="batch", dynamic_ncols=True):
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


def dense_search(args, encode_fn, tensorizer, questions: List[str], depth: int, question_info: Optional[dict],
                 metrics: dict) -> Tuple[np.ndarray, List[List[str]]]:
    """Encode `questions` and search the shards (exact or hnsw): (scores [n, depth], ids [n][depth]).

    Adds what it measured (passages, index settings, hnsw recall, seconds) to `metrics`."""
    shards = load_shards(args.encoded_ctx_file)
    check_recipe(shards, question_info)
    exact = ExactIndex(shards)
    n_passages = int(exact.offsets[-1])
    logger.info("%d questions, %d passages in %d shard(s)", len(questions), n_passages, len(shards))
    t0 = time.perf_counter()
    q = encode_questions(encode_fn, tensorizer, questions, args.batch_size)
    if q.shape[1] != shards[0].meta["dim"]:
        raise EmbeddingError(f"question vectors have dim {q.shape[1]} but the shards have dim {shards[0].meta['dim']}: "
                             "the question and context encoders do not belong together")
    metrics["seconds"]["encode_questions"] = round(time.perf_counter() - t0, 3)
    k = min(depth, n_passages)
    # measured at 1M vectors (docs/benchmarks.md, ip, M 32): recall@100 0.945 at ef 400, 0.979 at 800
    ef = args.ef_search or max(8 * min(k, args.n_docs), 256)

    t0 = time.perf_counter()
    if args.hnsw_index:
        hnsw = HNSWIndex(exact, m=args.hnsw_m, ef_construction=args.ef_construction, space=args.hnsw_space)
        if not (args.index_path and hnsw.load(args.index_path)):
            hnsw.build()
            if args.index_path:
                hnsw.save(args.index_path)
        metrics["seconds"]["build_index"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        scores, rows = hnsw.search(q, k, ef=ef)
        metrics["hnsw"] = {"M": args.hnsw_m, "ef_construction": args.ef_construction, "ef_search": max(ef, k),
                           "space": hnsw.space}
    else:
        scores, rows = exact.search(q, k)
    metrics["seconds"]["search"] = round(time.perf_counter() - t0, 3)
    metrics.update({"passages": n_passages, "index": "hnsw" if args.hnsw_index else "exact"})

    if args.hnsw_index and args.validate_index:
        n = min(args.validate_index, len(q))
        _, exact_rows = exact.search(q[:n], k)
        recall = recall_at_k(rows[:n], exact_rows, ks=[x for x in (1, 5, 20, 100) if x <= k])
        logger.info("hnsw recall against exact search on %d questions: %s", n,
                    ", ".join(f"@{a}={b:.4f}" for a, b in recall.items()))
        metrics["hnsw_recall"] = {str(a): b for a, b in recall.items()}
    return scores, [[exact.row_id(int(r)) for r in row] for row in rows]


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

    mode = "bm25" if args.bm25 else "hybrid" if args.hybrid else "dense"
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

    passages = fetch_passages(args.ctx_file, {i for row in ids for i in row})
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
