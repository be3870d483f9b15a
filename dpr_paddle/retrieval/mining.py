"""Hard-negative mining: for each training question, the passages a retriever ranks high that do
not answer it.

For every record of a biencoder file, the top passages of the corpus are retrieved for its
question, with BM25 (`--retriever bm25`, bm25s), with a trained bi-encoder over our shards
(`--retriever dense`, exact inner product) or with both fused (`--retriever hybrid`, as
dense_retriever.py --hybrid: the negatives a hybrid first stage puts in front of a reranker). Dropped: the record's gold passages (by passage id,
or by text when a positive has no id) and every passage in which DPR's `has_answer` finds an
answer. From what is left within `--rank_range LO HI` (0-based ranks of the retrieved list),
`--num_negatives` are kept: the best ranked (`--sample top`) or a random draw seeded by
(seed, record index) (`--sample random`). The output is the same DPR JSON (or JSONL) with
`hard_negative_ctxs` replaced, each with its `passage_id` and retrieval `score`.

Denoised (`--denoise_model`, RocketQA's denoised hard negatives): a reranker (teacher.py) scores
each record's first positive and its candidates, and a candidate scored within `--denoise_margin`
of the positive, or above it, is taken for an unlabelled positive and dropped before the
`--num_negatives` cut (sentence-transformers' `absolute_margin`; NV-Retriever's margin to the
positive). Every kept passage then carries its `teacher_score` and the record its `teacher`, so the
output also serves distillation (train_dense_encoder.py --distill_weight).

Questions go in batches of `--batch_size`. Each finished batch is written to
OUTPUT.partial/part_NNNNNN.jsonl atomically, so an interrupted run resumes at the first
unfinished batch; the output appears by an atomic rename at the end.

Scale (NQ train: 59k questions, 21M passages; estimated, not measured at that size): memory is the
retriever's (BM25: the bm25s index, ~7 GB per million passages to build, see bm25.py; dense: one
shard's block of vectors at a time plus the passage ids, ~1.5 GB for 21M) plus one batch's
candidate texts (batch_size x HI passages, ~0.6 GB for 5,000 x 100). The TSV is streamed once per
batch to fetch candidate texts: 12 passes at --batch_size 5000.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import shutil
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..common.errors import DprError
from ..common.files import atomic_path
from ..common.jobs import open_job_dir
from ..data.passages import iter_passage_chunks
from ..data.readers import BiEncoderRecord, Passage
from ..index.shards import EmbeddingError
from .evaluation import has_answer
from .passage_store import fetch_passages

logger = logging.getLogger(__name__)


class MiningError(DprError, RuntimeError):
    """Mining cannot go on (gold passages missing from the corpus, bad ranges)."""


def gold_ids(record: BiEncoderRecord) -> set:
    """Passage ids of a record's positives (those that have one)."""
    return {p.id for p in record.positives if p.id is not None}


def records_from_qrels(qa_file: str, qrels_file: str, ctx_file: str) -> List[BiEncoderRecord]:
    """Training records from relevance labels: each query with its judged-relevant passages (rel > 0) as
    positives, answers as the queries carry them (none for BEIR / MS MARCO). Queries without a relevant
    passage are left out, with a count in the log; a label naming an unknown query is an error."""
    from ..data.questions import read_qa
    from .qrels import QrelsError, read_qrels

    queries, qrels = read_qa(qa_file), read_qrels(qrels_file)
    known = {q.qid for q in queries}
    for qid, line in qrels.qid_line.items():
        if qid not in known:
            raise QrelsError(f"{qrels_file}: line {line}: query {qid!r} is not in {qa_file}")
    gold = {pid for q in queries for pid, rel in qrels.get(q.qid, {}).items() if rel > 0}
    try:
        texts = fetch_passages(ctx_file, gold)
    except EmbeddingError:
        missing = sorted(gold - {i for ids, _, _ in iter_passage_chunks(ctx_file) for i in ids})
        raise QrelsError(f"{qrels_file}: line {qrels.pid_line[missing[0]]}: passage {missing[0]!r} is not in {ctx_file} "
                         f"({len(missing)} judged passages are missing): are these the qrels of another corpus?") from None
    records = [BiEncoderRecord(q.question, q.answers, [Passage(texts[pid][0], texts[pid][1], pid)
                                                       for pid, rel in qrels[q.qid].items() if rel > 0])
               for q in queries if any(rel > 0 for rel in qrels.get(q.qid, {}).values())]
    if not records:
        raise QrelsError(f"{qrels_file}: no query of {qa_file} has a relevant passage (relevance > 0): there is "
                         "nothing to mine negatives for")
    if len(records) < len(queries):
        logger.info("%s: %d of %d queries have no relevant passage in %s; left out", qa_file,
                    len(queries) - len(records), len(queries), qrels_file)
    return records


def check_gold_in_corpus(records: Sequence[BiEncoderRecord], corpus_ids: set, train_file: str, ctx_file: str) -> None:
    """Refuse a corpus that lacks the records' gold passages: mining against it cannot drop them."""
    missing = [(i, pid) for i, r in enumerate(records) for pid in sorted(gold_ids(r)) if pid not in corpus_ids]
    if missing:
        i, pid = missing[0]
        raise MiningError(f"{train_file}: record {i}: gold passage_id {pid!r} is not in {ctx_file} "
                          f"({len(missing)} gold ids missing); mine against the corpus the training data was made from")


def candidate_negatives(record: BiEncoderRecord, candidates: Sequence[Tuple[str, float, Passage]],
                        match: str = "auto") -> List[dict]:
    """Every candidate (id, score, passage) of one record that is neither one of its gold passages nor
    holds an answer, best ranked first, as a hard_negative_ctxs entry."""
    gold, gold_texts = gold_ids(record), {p.text.strip() for p in record.positives if p.id is None}
    kept = []
    for pid, score, passage in candidates:
        if pid in gold or passage.text.strip() in gold_texts or has_answer(record.answers, passage.text, match):
            continue
        kept.append({"title": passage.title, "text": passage.text, "score": float(score), "passage_id": pid})
    return kept


def select_negatives(kept: List[dict], num_negatives: int, sample: str, rng: np.random.Generator) -> List[dict]:
    """`num_negatives` of a record's candidate negatives: the best ranked, or a seeded random draw."""
    if sample == "random" and len(kept) > num_negatives:
        chosen = sorted(rng.choice(len(kept), size=num_negatives, replace=False))
        return [kept[i] for i in chosen]
    return kept[:num_negatives]


def record_to_json(record: BiEncoderRecord, hard_negatives: List[dict], teacher: Optional[str] = None) -> dict:
    """A DPR biencoder record with the mined hard negatives (and the teacher that scored them, if any)."""
    def ctx(p: Passage) -> dict:
        return {"title": p.title, "text": p.text, **({"passage_id": p.id} if p.id is not None else {}),
                **({"teacher_score": p.teacher_score} if p.teacher_score is not None else {})}

    out = {"question": record.question, "answers": record.answers,
           "positive_ctxs": [ctx(p) for p in record.positives],
           "negative_ctxs": [ctx(p) for p in record.negatives],
           "hard_negative_ctxs": hard_negatives}
    if teacher:
        out["teacher"] = teacher
    return out


def mine(records: Sequence[BiEncoderRecord], search, ctx_file: str, output: str, job: dict,
         rank_range: Tuple[int, int], num_negatives: int, sample: str = "top", seed: int = 0,
         batch_size: int = 5000, match: str = "auto", denoise=None) -> str:
    """Mine hard negatives for `records` with `search(questions, k) -> (scores [n, k], ids [n][k])`;
    write DPR JSON (or JSONL for a .jsonl output) to `output`, resumably. `denoise`: a
    teacher.Denoiser that scores and drops false negatives (module doc). Returns `output`."""
    lo, hi = rank_range
    if not 0 <= lo < hi:
        raise MiningError(f"--rank_range {lo} {hi}: needs 0 <= LO < HI")
    if not records:
        raise MiningError(f"no training records to mine negatives for; nothing was written to {output}")
    stats = {"negatives": 0, "short": 0, "candidates": 0, "dropped_false": 0}

    def process(b: int, batch: List[BiEncoderRecord]) -> List[str]:
        scores, ids = search([r.question for r in batch], hi)
        texts = fetch_passages(ctx_file, {pid for row in ids for pid in row[lo:hi]})  # {id: (text, title)}
        kept = [candidate_negatives(record, [(pid, s, Passage(text=texts[pid][0], title=texts[pid][1], id=pid))
                                             for pid, s in zip(row_ids[lo:hi], row_scores[lo:hi])], match)
                for record, row_ids, row_scores in zip(batch, ids, scores)]
        teacher = None
        if denoise is not None:
            stats["candidates"] += sum(len(k) for k in kept)
            batch, kept, dropped = denoise(batch, kept)
            stats["dropped_false"] += dropped
            teacher = denoise.fingerprint
        lines = []
        for j, (record, candidates) in enumerate(zip(batch, kept)):
            negs = select_negatives(candidates, num_negatives, sample, np.random.default_rng([seed, b * batch_size + j]))
            stats["negatives"] += len(negs)
            stats["short"] += len(negs) < num_negatives
            lines.append(json.dumps(record_to_json(record, negs, teacher), ensure_ascii=False))
        return lines

    resumable_batches(records, output, job, batch_size, process, "mine")
    logger.info("wrote %s: %d records; %d hard negatives (this run's batches); %d records got fewer than %d",
                output, len(records), stats["negatives"], stats["short"], num_negatives)
    if denoise is not None:
        logger.info("denoised: %d of %d candidate negatives (this run's batches) were scored within %g of their "
                    "positive or above it by the reranker, and dropped as false negatives", stats["dropped_false"],
                    stats["candidates"], denoise.margin)
    return output


def resumable_batches(records: Sequence, output: str, job: dict, batch_size: int, process, desc: str) -> None:
    """Write `process(b, batch) -> [JSON line]` for each batch of `records` to OUTPUT.partial/part_NNNNNN.jsonl
    atomically (a finished batch is skipped when the same `job` resumes), then assemble `output` (a JSON list,
    or JSONL for .jsonl) by an atomic rename and remove the partial directory."""
    from tqdm import tqdm

    partial = open_job_dir(output + ".partial", job)
    n_batches = (len(records) + batch_size - 1) // batch_size
    with tqdm(total=len(records), desc=desc, unit="q", dynamic_ncols=True) as bar:
        for b in range(n_batches):
            part = os.path.join(partial, f"part_{b:06d}.jsonl")
            batch = list(records[b * batch_size : (b + 1) * batch_size])
            if not os.path.isfile(part):
                lines = process(b, batch)
                with atomic_path(part) as tmp:
                    with open(tmp, "w", encoding="utf-8") as f:
                        f.write("\n".join(lines) + "\n")
            bar.update(len(batch))
    _assemble(partial, n_batches, output)
    shutil.rmtree(partial, ignore_errors=True)


def _assemble(partial: str, n_batches: int, output: str) -> None:
    parts = sorted(glob.glob(os.path.join(partial, "part_*.jsonl")))
    if len(parts) != n_batches:
        raise MiningError(f"{partial}: {len(parts)} of {n_batches} batches present; re-run to finish")
    jsonl = output.endswith(".jsonl")
    with atomic_path(output) as tmp:
        with open(tmp, "w", encoding="utf-8") as out:
            out.write("" if jsonl else "[\n")
            first = True
            for p in parts:
                with open(p, encoding="utf-8") as f:
                    for line in f:
                        if not line.strip():
                            continue
                        out.write(line if jsonl else ("" if first else ",\n") + line.rstrip("\n"))
                        first = False
            out.write("" if jsonl else "\n]\n")
