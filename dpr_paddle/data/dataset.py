"""Datasets return text; the collator makes tensors (Tevatron's split).

Every random choice (epoch order, which positive, which hard negatives) is a pure function of
(seed, epoch, index), so a run resumed in mid-epoch sees exactly the batches it would have seen.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .readers import BiEncoderRecord, DataFormatError

logger = logging.getLogger(__name__)


@dataclass
class TrainExample:
    """One question with its positive first, then its hard negatives, as (title, text) pairs."""

    question: str
    passages: List[Tuple[str, str]]
    teacher_scores: Optional[List[float]] = None  # one per passage, when the run distils a teacher


class BiEncoderDataset:
    """DPR training examples: 1 positive + `hard_negatives` passages per question.

    Hard negatives come from `hard_negative_ctxs`, topped up from `negative_ctxs` when a record
    has too few (DPR's `hard_neg_fallback`), and repeated if even that is not enough so every
    question brings the same number of passages. The positive is `positive_ctxs[0]` (DPR's
    default) unless `shuffle_positives`. With `teacher` (distillation) every example carries its
    passages' teacher scores: only scored hard negatives are used (repeated when too few), and the
    records must all have been scored by one teacher (`check_teacher`).
    """

    def __init__(self, records: Sequence[BiEncoderRecord], hard_negatives: int = 1, seed: int = 0,
                 shuffle_positives: bool = False, shuffle_negatives: bool = True, teacher: bool = False,
                 path: str = "records"):
        if hard_negatives < 0:
            raise ValueError("hard_negatives must be >= 0")
        self.teacher = teacher
        if teacher:  # only scored passages: records the teacher left without a hard negative sit out
            check_teacher(records, path)
            before = len(records)
            records = [r for r in records if r.hard_negatives]
            if len(records) < before:
                logger.info("%s: %d of %d records have no hard negative left to distil from; they are left out",
                            path, before - len(records), before)
        self.records = list(records)
        self.hard_negatives = hard_negatives
        self.seed = seed
        self.shuffle_positives = shuffle_positives
        self.shuffle_negatives = shuffle_negatives
        short = sum(1 for r in self.records if len(r.hard_negatives) + len(r.negatives) < hard_negatives)
        if hard_negatives and short:
            logger.info("%d records have fewer than %d negatives; their negatives are repeated", short, hard_negatives)

    def __len__(self) -> int:
        return len(self.records)

    def example(self, index: int, epoch: int = 0) -> TrainExample:
        """The example for record `index` in `epoch` (deterministic)."""
        rec = self.records[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        pos = rec.positives[int(rng.integers(len(rec.positives)))] if self.shuffle_positives else rec.positives[0]
        negs = list(rec.hard_negatives)
        if self.shuffle_negatives and len(negs) > 1:
            negs = [negs[i] for i in rng.permutation(len(negs))]
        if len(negs) < self.hard_negatives and not self.teacher:  # negative_ctxs carry no teacher scores
            extra = list(rec.negatives)
            if self.shuffle_negatives and len(extra) > 1:
                extra = [extra[i] for i in rng.permutation(len(extra))]
            negs += extra
        if negs and len(negs) < self.hard_negatives:
            negs = (negs * self.hard_negatives)[: self.hard_negatives]
        if len(negs) < self.hard_negatives:
            # No negatives at all: the positive of another record stands in (an in-batch negative), the next
            # one that is another passage (consecutive records often share one: a reranker's group would
            # otherwise be taught its own positive as a negative)
            n = len(self.records)
            others = (self.records[(index + k) % n].positives[0] for k in range(1, n))
            same = (pos.title, pos.text)
            negs = [next((p for p in others if (p.title, p.text) != same), pos)] * self.hard_negatives
        chosen = [pos] + negs[: self.hard_negatives]
        scores = [p.teacher_score for p in chosen] if self.teacher else None
        return TrainExample(question=rec.question, passages=[(p.title, p.text) for p in chosen],
                            teacher_scores=scores)


def epoch_batches(num_examples: int, global_batch: int, epoch: int, seed: int, shuffle: bool = True,
                  world_size: int = 1) -> List[List[int]]:
    """The global batches of one epoch as lists of record indices.

    The order is a permutation seeded by (seed, epoch). A last partial batch is kept on one
    process; with several ranks it is kept only if it splits evenly across them.
    """
    if global_batch < 1:
        raise ValueError(f"batch size must be >= 1, got {global_batch}")
    order = np.random.default_rng([seed, epoch]).permutation(num_examples) if shuffle else np.arange(num_examples)
    batches = [order[i : i + global_batch].tolist() for i in range(0, num_examples, global_batch)]
    if batches and len(batches[-1]) < global_batch and len(batches[-1]) % world_size:
        batches.pop()
    return batches


def rank_slice(batch: List[int], rank: int, world_size: int) -> List[int]:
    """This rank's contiguous part of a global batch (rank order = single-process order)."""
    per = len(batch) // world_size
    return batch[rank * per : (rank + 1) * per]


def check_teacher(records: Sequence[BiEncoderRecord], path: str) -> None:
    """Refuse records that cannot be distilled from, in one line: a passage without its `teacher_score`
    (the file was not scored, or only partly), or records scored by different teachers (files joined
    after scoring: their scores are not on one scale)."""
    unscored = next((i for i, r in enumerate(records) if r.teacher is None), None)
    if unscored is not None:
        raise DataFormatError(path, f"record {unscored}", "carries no teacher (no 'teacher' field): score the records "
                              "first (python -m dpr_paddle.score_records)")
    teachers = {r.teacher for r in records}
    if len(teachers) != 1:
        raise DataFormatError(path, "records", f"were scored by {len(teachers)} different teachers "
                              f"({', '.join(sorted(teachers))}); score the whole file with one")
    for i, r in enumerate(records):  # negative_ctxs are not scored: distillation does not use them
        for kind, ps in (("positive_ctxs", r.positives), ("hard_negative_ctxs", r.hard_negatives)):
            for j, p in enumerate(ps):
                if p.teacher_score is None:
                    raise DataFormatError(path, f"record {i}", f"{kind}[{j}] has no teacher_score: the file was "
                                          "scored only in part; score it again (python -m dpr_paddle.score_records)")
