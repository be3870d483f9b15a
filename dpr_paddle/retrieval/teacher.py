"""A reranker as a teacher of training records: it scores each record's positives and hard negatives
(`teacher_score` per passage, the record's `teacher` = the reranker's fingerprint), and with a margin
drops the hard negatives it scores like the positive (RocketQA's denoising: an unlabelled positive
taught as a negative hurts the bi-encoder).

`Denoiser` is what mining calls per batch (mining.py --denoise_model); `score_records` scores a
file's existing hard negatives (python -m dpr_paddle.score_records), resumably, in the same batch
files mining writes. Distillation (train_dense_encoder.py --distill_weight) reads the scores back
(data/dataset.py refuses records scored in part or by different teachers).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import List, Optional, Sequence

from ..data.readers import BiEncoderRecord
from .mining import record_to_json, resumable_batches
from .rerank import Reranker

logger = logging.getLogger(__name__)


class Denoiser:
    """Scores records' positives and candidate negatives with `reranker`; with `margin` set, drops a
    candidate scored at or above (best positive's score - margin)."""

    def __init__(self, reranker: Reranker, margin: Optional[float] = 0.0):
        self.reranker, self.margin = reranker, margin
        # scores in bfloat16 are another teacher's: records scored both ways are not mixed in one training set
        # (as are scores read at another length than the one it was trained at)
        quantized, info = reranker.info.get("quantization"), reranker.info
        self.fingerprint = (info["model_fingerprint"] + (f"-{quantized}" if quantized else "")
                            + (f"-L{info['max_length']}" if "trained_max_length" in info else ""))

    def __call__(self, records: Sequence[BiEncoderRecord], candidates: Sequence[List[dict]]):
        """(records with scored positives, candidates with `teacher_score` and false negatives dropped,
        how many were dropped)."""
        questions, passages = [], []
        for record, cands in zip(records, candidates):
            for p in record.positives:
                questions.append(record.question)
                passages.append((p.title, p.text))
            for c in cands:
                questions.append(record.question)
                passages.append((c["title"], c["text"]))
        scores = iter(self.reranker.score(questions, passages).tolist())
        out_records, out_cands, dropped = [], [], 0
        for record, cands in zip(records, candidates):
            positives = [dataclasses.replace(p, teacher_score=next(scores)) for p in record.positives]
            best = max(p.teacher_score for p in positives)
            kept = []
            for c in cands:
                c = {**c, "teacher_score": next(scores)}
                if self.margin is not None and c["teacher_score"] >= best - self.margin:
                    dropped += 1
                    continue
                kept.append(c)
            out_records.append(dataclasses.replace(record, positives=positives))
            out_cands.append(kept)
        return out_records, out_cands, dropped


def hard_negative_dicts(record: BiEncoderRecord) -> List[dict]:
    """A record's hard negatives as hard_negative_ctxs entries."""
    return [{"title": p.title, "text": p.text, **({"passage_id": p.id} if p.id is not None else {})}
            for p in record.hard_negatives]


def score_records(records: Sequence[BiEncoderRecord], reranker: Reranker, output: str, job: dict,
                  margin: Optional[float] = None, batch_size: int = 1000) -> dict:
    """Write `records` to `output` with every positive and hard negative scored by `reranker` (and, with
    `margin`, the hard negatives scored like the positive dropped), resumably; returns the counts."""
    denoise = Denoiser(reranker, margin)
    stats = {"records": len(records), "hard_negatives": 0, "dropped": 0, "left_without_negatives": 0}

    def process(b: int, batch: List[BiEncoderRecord]) -> List[str]:
        scored, kept, dropped = denoise(batch, [hard_negative_dicts(r) for r in batch])
        stats["hard_negatives"] += sum(len(r.hard_negatives) for r in batch)
        stats["dropped"] += dropped
        stats["left_without_negatives"] += sum(1 for r, k in zip(batch, kept) if r.hard_negatives and not k)
        return [json.dumps(record_to_json(r, k, denoise.fingerprint), ensure_ascii=False) for r, k in zip(scored, kept)]

    resumable_batches(records, output, job, batch_size, process, "score")
    logger.info("wrote %s: %d records scored by %s%s", output, len(records), reranker.info["model"],
                "" if margin is None else f"; {stats['dropped']} of {stats['hard_negatives']} hard negatives (this "
                f"run's batches) scored within {margin:g} of their positive or above it were dropped as false negatives")
    return stats

