"""Full-corpus retrieval and DPR's top-k evaluation (dense_retriever.py)."""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

from .data.readers import QAPair, iter_passage_chunks, read_qa
from .errors import DprError
from .evaluation import DEFAULT_TOP_K, format_top_k_table, has_answer, top_k_accuracy
from .index import ExactIndex, recall_at_k
from .index_factory import IndexSpec, open_index
from .shards import EmbeddingError, load_shards, read_meta, shard_paths
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
    """Embedding shards and the index that searches them, picked once by `index_factory.open_index`
    (exact, one hnsw graph, a graph per shard, or Milvus); loaded when saved, else built."""

    def __init__(self, pattern: str, spec: Optional[IndexSpec] = None, ef_search: int = 0, partial: bool = False):
        self.shards = load_shards(pattern, partial=partial)
        self.exact = ExactIndex(self.shards)
        self.spec = spec or IndexSpec()
        self.ef_search = ef_search
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
        """hnsw's ef for a search of depth k (see `default_ef`)."""
        return default_ef(k, n_docs, self.ef_search)

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


def dense_search(args, encode_fn, tensorizer, questions: List[str], depth: int, question_info: Optional[dict],
                 metrics: dict, partial: bool = False) -> Tuple[np.ndarray, List[List[str]]]:
    """Encode `questions` and search the shards with the index the flags name: (scores [n, depth],
    ids [n][depth]). Adds what it measured (passages, index settings, recall, seconds) to `metrics`."""
    from .config import index_spec

    index = DenseIndex(args.encoded_ctx_file, index_spec(args), args.ef_search, partial=partial)
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
    metrics.update({"passages": described.pop("passages"), "index": described.pop("index")})
    described.pop("model_fingerprint")
    if index.approximate:
        metrics[metrics["index"]] = {**described, "ef_search": index.ef_for(k, args.n_docs)}
    if index.approximate and args.validate_index:
        n = min(args.validate_index, len(q))
        _, exact_rows = index.exact.search(q[:n], k)
        recall = recall_at_k(rows[:n], exact_rows, ks=[x for x in (1, 5, 20, 100) if x <= k])
        logger.info("%s recall against exact search on %d questions: %s", metrics["index"], n,
                    ", ".join(f"@{a}={b:.4f}" for a, b in recall.items()))
        metrics["index_recall"] = {str(a): b for a, b in recall.items()}
        if metrics["index"].startswith("hnsw"):
            metrics["hnsw_recall"] = metrics["index_recall"]  # the name earlier metrics files used
    return scores, index.ids(rows)


def check_dim(q: np.ndarray, shards) -> None:
    """Question vectors must have the passages' dimension."""
    if q.shape[1] != shards[0].meta["dim"]:
        raise EmbeddingError(f"question vectors have dim {q.shape[1]} but the shards have dim {shards[0].meta['dim']}: "
                             "the question and context encoders do not belong together")


def check_encoders(pattern: str, context: Tuple[str, str], question: Optional[dict]) -> None:
    """The shards must come from the given context encoder (refused otherwise); a question encoder
    from another checkpoint than theirs is worth a warning (a DPR pair is trained together)."""
    meta = read_meta(shard_paths(pattern)[0]) or {}  # one meta.json: the ids of every shard need not be read
    path, fingerprint = context
    if meta.get("model_fingerprint") != fingerprint:
        raise EmbeddingError(f"{pattern}: the passages were encoded by {meta.get('model')} (fingerprint "
                             f"{meta.get('model_fingerprint')}), not by the context encoder {path} ({fingerprint}); "
                             "pass the context encoder that made them, or re-encode with this one")
    same = os.path.realpath(os.path.dirname(str(question["model"]))) == os.path.realpath(
        os.path.dirname(str(meta.get("model")))) if question else True  # SAVE_DIR/latest is a symlink
    if not same:
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
    return top-k accuracy with what was measured. With --topk_out, search only the shards given
    and write their top k for `python -m dpr_paddle.reduce` instead."""
    from .fusion import fuse

    mode = retrieval_mode(args.bm25, args.hybrid)
    if mode != "bm25" and not args.encoded_ctx_file:
        raise RetrieverError("--encoded_ctx_file is needed for dense and --hybrid retrieval (or pass --bm25)")
    if args.topk_out and mode != "dense":
        raise RetrieverError("--topk_out writes a dense search of some shards; it does not combine with --bm25/--hybrid")
    qa = read_qa(args.qa_file)
    questions = [x.question for x in qa]
    k = args.n_docs
    depth = max(k, args.hybrid_depth) if mode == "hybrid" else k
    metrics = {"mode": mode, "questions": len(qa), "n_docs": k, "match": args.match, "seconds": {}}
    if args.topk_out:
        return search_some_shards(args, encode_fn, tensorizer, questions, question_info, metrics)
    dense = dense_search(args, encode_fn, tensorizer, questions, depth, question_info, metrics) if mode != "bm25" else None
    sparse = bm25_search(args, questions, depth, metrics) if mode != "dense" else None
    if mode == "hybrid":
        scores, ids = fuse(dense, sparse, args.fusion, k, args.hybrid_alpha)
        metrics["fusion"] = {"method": args.fusion, "depth": depth,
                             **({"alpha": args.hybrid_alpha} if args.fusion == "weighted" else {"rrf_k": 60})}
    else:
        scores, ids = dense or sparse
    label = mode if mode != "dense" else os.path.basename((args.encoded_ctx_file or "").rstrip("*_")) or "retriever"
    return report(qa, scores, ids, metrics, qa_file=args.qa_file, ctx_file=args.ctx_file, passage_store=args.passage_store,
                  shards_pattern=args.encoded_ctx_file if mode != "bm25" else None, match=args.match,
                  workers=args.validation_workers, out_file=args.out_file, metrics_file=args.metrics_file,
                  trec_file=args.trec_file, label=label)


def search_some_shards(args, encode_fn, tensorizer, questions: List[str], question_info: Optional[dict],
                       metrics: dict) -> dict:
    """One machine's part of a sharded search: the top n_docs of the shards it was given, written to
    --topk_out with what the reduce step checks (same model, same questions, every shard once)."""
    from .topk_file import write_topk
    from .utils import file_fingerprint

    scores, ids = dense_search(args, encode_fn, tensorizer, questions, args.n_docs, question_info, metrics,
                               partial=True)
    metas = [read_meta(p) for p in shard_paths(args.encoded_ctx_file)]  # checked by dense_search's load
    meta = {"model_fingerprint": metas[0].get("model_fingerprint"), "num_shards": metas[0]["num_shards"],
            "shard_ids": sorted(m["shard_id"] for m in metas), "qa_file": os.path.abspath(args.qa_file),
            "qa": file_fingerprint(args.qa_file)["sha1_ends"], "questions": len(questions), "k": args.n_docs,
            "index": metrics.get("index"), "passages": metrics["passages"]}
    write_topk(args.topk_out, scores, ids, meta)
    logger.info("wrote the top %d of shard(s) %s for %d questions to %s; merge a full set with python -m "
                "dpr_paddle.reduce", scores.shape[1], meta["shard_ids"], len(questions), args.topk_out)
    return {**metrics, **meta}


def report(qa: List[QAPair], scores: np.ndarray, ids: List[List[str]], metrics: dict, *, qa_file: str, ctx_file: str,
           passage_store: Optional[str], shards_pattern: Optional[str], match: str, workers: int,
           out_file: Optional[str], metrics_file: Optional[str], trec_file: Optional[str], label: str) -> dict:
    """Score a finished retrieval (scores [n, >=k], ids): top-k accuracy printed and returned, and the
    results JSON, metrics JSON and TREC run written where asked."""
    no_answer = sum(1 for x in qa if not x.answers)
    if no_answer:
        logger.warning("%s: %d of %d questions have an empty answers list; they count as misses", qa_file, no_answer,
                       len(qa))
    k = min(metrics["n_docs"], metrics["passages"])
    metrics["n_docs"] = k
    scores, ids = scores[:, :k], [row[:k] for row in ids]

    passages = passage_texts(ctx_file, {i for row in ids for i in row}, passage_store, shards_pattern)
    hits = match_answers([(item.answers, [passages[pid][0] for pid in row]) for item, row in zip(qa, ids)],
                         match, workers)
    ks = [x for x in DEFAULT_TOP_K if x <= k] or [k]
    acc = top_k_accuracy(hits, ks)
    print(format_top_k_table({label: acc}, ks))
    metrics["top_k_accuracy"] = {str(a): b for a, b in acc.items()}

    if out_file:
        results = []
        for item, row_ids, row_scores, row_hits in zip(qa, ids, scores, hits):
            results.append({
                "question": item.question, "answers": item.answers,
                "ctxs": [{"id": pid, "title": passages[pid][1], "text": passages[pid][0], "score": f"{float(s):.6f}",
                          "has_answer": h} for pid, s, h in zip(row_ids, row_scores, row_hits)],
            })
        with atomic_path(out_file) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(results, f, indent=2, ensure_ascii=False)
        logger.info("wrote %s", out_file)
    metrics_file = metrics_file or (out_file + ".metrics.json" if out_file else None)
    if metrics_file:
        write_json_atomic(metrics_file, metrics)
    if trec_file:
        write_trec(trec_file, qa, ids, scores, run=f"dpr_paddle_{metrics['mode']}")
    return metrics
