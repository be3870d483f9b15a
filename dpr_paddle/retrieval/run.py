"""The batch run of dense_retriever.py: every question of a QA file searched, scored and written.

`retrieve` searches with a `Searcher` (dense, BM25 or hybrid), records what it measured (index
settings, recall against exact search, seconds) and hands the ranked lists to `report`, which
matches answers (evaluation.has_answer), prints and returns top-k accuracy, with relevance labels
(`--qrels`) also MRR@10, nDCG@10, MAP and Recall@k by pytrec_eval (qrels.py), and writes the
results JSON, the metrics JSON and a TREC run. `search_some_shards` is one machine's part of a sharded search
(its top k written for `python -m dpr_paddle.reduce`, which calls `report` on the merged parts).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from ..common.errors import DprError
from ..common.files import atomic_path, file_fingerprint, write_json_atomic
from ..data.corpora import query_layout
from ..data.questions import read_qa
from ..data.readers import QAPair
from ..index.exact import recall_at_k
from ..index.shards import read_meta, shard_paths
from .evaluation import DEFAULT_TOP_K, format_top_k_table, has_answer, top_k_accuracy
from .passage_store import passage_texts
from .qrels import Qrels, QrelsError, check_qrels, format_gold_table, gold_metrics, read_qrels
from .rerank import check_depth
from .searcher import RERANK, Searcher
from .topk_file import write_topk

logger = logging.getLogger(__name__)


class RetrieverError(DprError, RuntimeError):
    """The retriever's flags do not make a run (a missing input, a dense run without shards)."""


@dataclass(frozen=True)
class ReportSpec:
    """Where a run's passages come from (`ctx_file`, or a `passage_store`), how answers are matched
    (`match`, in `workers` processes) and which files are written."""

    ctx_file: str
    passage_store: Optional[str] = None
    match: str = "auto"
    workers: int = 1
    out_file: Optional[str] = None
    metrics_file: Optional[str] = None
    trec_file: Optional[str] = None
    qrels_file: Optional[str] = None


def load_questions(qa_file: str, qrels_file: Optional[str], corpus_ids,
                   qa: Optional[List[QAPair]] = None) -> Tuple[List[QAPair], Optional[Qrels], List[int]]:
    """(questions, relevance labels or None, the positions kept): with `qrels_file` the labels are checked
    against the questions and the corpus (`corpus_ids`, a set or a callable that makes one) before
    anything is searched. Of a BEIR queries.jsonl, which holds every split's queries, only the judged
    ones are kept (BEIR's rule). `qa`: the questions, when they were read already."""
    qa = qa if qa is not None else read_qa(qa_file)
    keep = list(range(len(qa)))
    if not qrels_file:
        return qa, None, keep
    qrels = read_qrels(qrels_file)
    if query_layout(qa_file) == "beir":
        keep = [i for i, x in enumerate(qa) if x.qid in qrels]
        if len(keep) < len(qa):
            logger.info("%s: %d of %d queries are judged in %s; the others are left out, as BEIR does", qa_file,
                        len(keep), len(qa), qrels_file)
        qa = [qa[i] for i in keep]
    check_qrels(qrels, [x.qid for x in qa], qa_file, corpus_ids() if callable(corpus_ids) else corpus_ids)
    return qa, qrels, keep


def corpus_ids_of(searcher: Searcher) -> set:
    """Every passage id the searcher can return."""
    if searcher.dense is not None:
        return {i for shard in searcher.dense.index.shards for i in shard.ids}
    return set(searcher.bm25.passage_ids())


def _match_one(job):
    (answers, texts), match = job
    return [has_answer(answers, text, match) for text in texts]


def match_answers(jobs, match: str, workers: int = 1) -> List[List[bool]]:
    """has_answer for each (answers, [passage texts]) job, in `workers` processes, with a bar (1,500
    questions x 100 passages take 15-25 s: without one the run seems to hang after its last line)."""
    from tqdm import tqdm

    jobs = [(job, match) for job in jobs]
    bar = dict(total=len(jobs), desc="match answers", unit="q", dynamic_ncols=True)
    if workers <= 1:
        return [_match_one(job) for job in tqdm(jobs, **bar)]
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return list(tqdm(pool.imap(_match_one, jobs, chunksize=64), **bar))


def ranked_scores(row_scores) -> np.ndarray:
    """A ranked list's scores as float32, made strictly decreasing: where the retriever ranked tied scores,
    each later one is the next float32 below the one before. trec_eval orders by score and breaks ties by
    document id, so only strictly decreasing scores make it read our order, and give the MAP that
    metrics.json reports; float32 steps, because trec_eval (and pytrec_eval) may hold scores in single
    precision, where a float64 step would tie again."""
    out = np.asarray(row_scores, dtype=np.float32).copy()
    for r in range(1, len(out)):
        if out[r] >= out[r - 1]:
            out[r] = np.nextafter(out[r - 1], np.float32(-np.inf))
    return out


def write_trec(path: str, qa: List[QAPair], ids: List[List[str]], scores: np.ndarray, run: str = "dpr_paddle") -> None:
    """A TREC run file as trec_eval reads it: `qid Q0 docid rank score run` (qid: the question's own id;
    for DPR's qa.csv its position from 1); scores in full precision, strictly decreasing (`ranked_scores`)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for q, (item, row_ids, row_scores) in enumerate(zip(qa, ids, scores)):
                qid = item.qid or str(q + 1)
                for rank, (pid, s) in enumerate(zip(row_ids, ranked_scores(row_scores)), start=1):
                    f.write(f"{qid} Q0 {pid} {rank} {float(s)!r} {run}\n")


def index_metrics(index, trace: dict, k: int, n_docs: int, validate: int) -> dict:
    """What a dense search records about its index: passages, kind and settings, and (with
    `validate` > 0 questions) its recall against exact search on the same vectors."""
    described = index.describe()
    described.pop("model_fingerprint")
    out = {"passages": described.pop("passages"), "index": described.pop("index")}
    if not index.approximate:
        return out
    out[out["index"]] = {**described, "ef_search": index.ef_for(k, n_docs)}
    if validate:
        n = min(validate, len(trace["vectors"]))
        _, exact_rows = index.exact.search(trace["vectors"][:n], k)
        recall = recall_at_k(trace["rows"][:n], exact_rows, ks=[x for x in (1, 5, 20, 100) if x <= k])
        logger.info("%s recall against exact search on %d questions: %s", out["index"], n,
                    ", ".join(f"@{a}={b:.4f}" for a, b in recall.items()))
        out["index_recall"] = {str(a): b for a, b in recall.items()}
        if out["index"].startswith("hnsw"):
            out["hnsw_recall"] = out["index_recall"]  # the name earlier metrics files used
    return out


def retrieve(searcher: Searcher, qa_file: str, n_docs: int, out: ReportSpec, shards: Optional[str] = None,
             validate_index: int = 0, seconds: Optional[dict] = None) -> dict:
    """Retrieve the top `n_docs` for every question of `qa_file` with `searcher`; write and return
    top-k accuracy (and with `out.qrels_file` the gold-passage metrics) with what was measured
    (`seconds` holds the loading times already spent)."""
    qa, qrels, _ = load_questions(qa_file, out.qrels_file, lambda: corpus_ids_of(searcher))
    questions = [x.question for x in qa]
    mode = searcher.spec.mode
    metrics = {"mode": mode, "questions": len(qa), "n_docs": n_docs, "match": out.match, "seconds": dict(seconds or {})}
    if searcher.dense is not None:
        index = searcher.dense.index
        logger.info("%d questions, %d passages in %d shard(s)", len(qa), len(index), len(index.shards))
    trace = {"seconds": metrics["seconds"]}
    if searcher.reranker is not None:
        check_depth(searcher.spec.rerank_depth, n_docs)
        metrics["rerank"] = {"model": searcher.reranker.info["model"], "depth": searcher.spec.rerank_depth,
                             "alpha": searcher.spec.rerank_alpha, "backend": searcher.reranker.info["backend"],
                             "max_length": searcher.reranker.info["max_length"],
                             **{k: searcher.reranker.info[k] for k in ("quantization", "members") if k in searcher.reranker.info}}
    scores, ids = searcher.search(questions, n_docs, trace, mode=RERANK if searcher.reranker is not None else None)
    if searcher.dense is not None:
        depth = max(n_docs, searcher.spec.depth) if mode == "hybrid" else n_docs
        metrics.update(index_metrics(searcher.dense.index, trace, min(depth, len(searcher.dense.index)), n_docs,
                                     validate_index))
    if searcher.bm25 is not None:
        metrics.setdefault("passages", len(searcher.bm25))
        metrics["bm25"] = searcher.bm25.meta["params"]
    if mode == "hybrid":
        metrics["fusion"] = searcher.spec.describe()
    # the system is named by what it is (dense, bm25, hybrid; "hybrid, reranked"), as in the API, the page and the
    # demo's table
    return report(qa, scores, ids, metrics, out, qa_file=qa_file, shards_pattern=shards if mode != "bm25" else None,
                  label=mode, qrels=qrels, first_stage=trace.get("first_stage"),
                  first_stage_scores=trace.get("first_stage_scores"))


def search_some_shards(dense, qa_file: str, n_docs: int, shards: str, topk_out: str) -> dict:
    """One machine's part of a sharded search: the top n_docs of the shards `dense` (a DenseSearcher
    over part of them) was given, written to `topk_out` with what the reduce step checks (same model,
    same questions, every shard once)."""
    questions = [x.question for x in read_qa(qa_file)]
    trace = {"seconds": {}}
    scores, ids = dense.search(questions, n_docs, trace=trace)
    metrics = {"mode": "dense", "questions": len(questions), "n_docs": n_docs, "seconds": trace["seconds"],
               **index_metrics(dense.index, trace, min(n_docs, len(dense.index)), n_docs, 0)}
    metas = [read_meta(p) for p in shard_paths(shards)]  # checked when the shards were loaded
    # what makes the parts one search: the shards' model, and the question tower that searched them
    asked = {key: dense.info.get(key) for key in ("pooling", "similarity")}
    meta = {"model_fingerprint": metas[0].get("model_fingerprint"), "num_shards": metas[0]["num_shards"],
            "question_fingerprint": dense.info["model_fingerprint"], "max_query_length": dense.tensorizer.max_query_length,
            "max_passage_length": metas[0].get("max_length"), "corpus": (metas[0].get("corpus") or {}).get("sha1"),
            **asked,
            "shard_ids": sorted(m["shard_id"] for m in metas), "qa_file": os.path.abspath(qa_file),
            "qa": file_fingerprint(qa_file)["sha1"], "questions": len(questions), "k": n_docs,
            "index": metrics.get("index"), "passages": metrics["passages"]}
    write_topk(topk_out, scores, ids, meta)
    logger.info("wrote the top %d of shard(s) %s for %d questions to %s; merge a full set with python -m "
                "dpr_paddle.reduce", scores.shape[1], meta["shard_ids"], len(questions), topk_out)
    return {**metrics, **meta}


def report(qa: List[QAPair], scores: np.ndarray, ids: List[List[str]], metrics: dict, out: ReportSpec, *, qa_file: str,
           shards_pattern: Optional[str], label: str, qrels: Optional[Qrels] = None,
           first_stage: Optional[Tuple[np.ndarray, List[List[str]]]] = None,
           first_stage_scores: Optional[np.ndarray] = None) -> dict:
    """Score a finished retrieval (scores [n, >=k], ids): answer-match top-k accuracy (when the questions
    have answers) and gold-passage metrics (with `qrels`) printed and returned, and the results JSON,
    metrics JSON and TREC run written where `out` asks. A reranked run also gives its `first_stage`
    ((scores, ids) before reranking: a row of its own in every table, under `metrics["first_stage"]`)
    and each returned passage's `first_stage_scores` [n, k] (kept in the results JSON)."""
    k = min(metrics["n_docs"], metrics["passages"])
    metrics["n_docs"] = k
    scores, ids = scores[:, :k], [row[:k] for row in ids]
    systems = {label: ids}
    if first_stage is not None:  # the first stage's own row first, then the reranked one
        systems = {label: [row[:k] for row in first_stage[1]], f"{label}, reranked": ids}
        metrics["first_stage"] = {"system": label}
    by_answers = qrels is None or any(x.answers for x in qa)
    passages = None
    if by_answers or out.out_file:
        wanted = {i for rows in systems.values() for row in rows for i in row}
        passages = passage_texts(out.ctx_file, wanted, out.passage_store, shards_pattern)
    hits = [[False] * len(row) for row in ids]
    if by_answers:
        ks = [x for x in DEFAULT_TOP_K if x <= k] or [k]
        # each retrieved passage is matched once, however many systems list it (a reranked run's two lists
        # hold nearly the same passages): the systems' hits are read from one match per (question, passage)
        union = [list(dict.fromkeys(pid for rows in systems.values() for pid in rows[q])) for q in range(len(qa))]
        matched = [dict(zip(u, h)) for u, h in zip(union, answer_hits(qa, union, passages, out, qa_file))]
        table = {}
        for name, rows in systems.items():  # the last system's hits (the run's output) are kept
            hits = [[m[pid] for pid in row] for m, row in zip(matched, rows)]
            table[name] = top_k_accuracy(hits, ks)
        print(format_top_k_table(table, ks))
        acc = table[list(systems)[-1]]
        metrics["top_k_accuracy"] = {str(a): b for a, b in acc.items()}
        if first_stage is not None:
            metrics["first_stage"]["top_k_accuracy"] = {str(a): b for a, b in table[label].items()}
    judged = list(range(len(qa)))
    if qrels is not None:
        judged = qrels.with_relevant([x.qid for x in qa])
        if not judged:
            raise QrelsError(f"{qrels.path}: no question has a passage judged relevant (> 0): MRR, nDCG, MAP and "
                             "recall are not defined")
        if len(judged) < len(qa):  # no right answer to rank: leaving them in would pull every metric down
            first = next(x.qid for i, x in enumerate(qa) if i not in set(judged))
            logger.warning("%s: %d of %d questions (first: %r) have no passage judged relevant (> 0); they are left "
                           "out of the gold-passage metrics and the TREC run", qrels.path, len(qa) - len(judged),
                           len(qa), first)
        gold_rows = {name: gold_metrics(qrels, [qa[i].qid for i in judged], [rows[i] for i in judged])
                     for name, rows in systems.items()}
        print(format_gold_table(gold_rows))
        gold = gold_rows[list(systems)[-1]]
        metrics.update(gold, qrels=os.path.abspath(qrels.path), gold_questions=len(judged))
        if first_stage is not None:
            metrics["first_stage"].update(gold_rows[label])
    if out.out_file:
        write_results(out.out_file, qa, ids, scores, hits, passages,
                      None if first_stage_scores is None else first_stage_scores[:, :k])
    metrics_file = out.metrics_file or (out.out_file + ".metrics.json" if out.out_file else None)
    if metrics_file:
        write_json_atomic(metrics_file, metrics)
    if out.trec_file:
        write_trec(out.trec_file, [qa[i] for i in judged], [ids[i] for i in judged], scores[judged],
                   run=f"dpr_paddle_{metrics['mode']}")
    return metrics


def answer_hits(qa: List[QAPair], ids: List[List[str]], passages: dict, out: ReportSpec, qa_file: str):
    """has_answer of every retrieved passage ([n][k] booleans); questions without answers count as misses."""
    no_answer = sum(1 for x in qa if not x.answers)
    if no_answer:
        logger.warning("%s: %d of %d questions have an empty answers list; they count as misses", qa_file, no_answer,
                       len(qa))
    return match_answers([(item.answers, [passages[pid][0] for pid in row]) for item, row in zip(qa, ids)],
                         out.match, out.workers)


def write_results(path: str, qa: List[QAPair], ids, scores, hits, passages, first_scores=None) -> None:
    """The retrieval results JSON in DPR's format; a reranked run adds each passage's `first_stage_score`."""
    results = []
    for q, (item, row_ids, row_scores, row_hits) in enumerate(zip(qa, ids, scores, hits)):
        ctxs = [{"id": pid, "title": passages[pid][1], "text": passages[pid][0], "score": f"{float(s):.6f}",
                 "has_answer": h} for pid, s, h in zip(row_ids, row_scores, row_hits)]
        if first_scores is not None:
            for c, f in zip(ctxs, first_scores[q]):
                c["first_stage_score"] = f"{float(f):.6f}"
        results.append({"question": item.question, "answers": item.answers, "ctxs": ctxs})
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2, ensure_ascii=False)
    logger.info("wrote %s", path)
