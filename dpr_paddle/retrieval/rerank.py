"""The second stage: a cross-encoder reads each question with each of its first-stage candidates and
reorders the top `depth` (sentence-transformers' CrossEncoder.rank, Tevatron's reranker, RocketQA).

`Reranker.score` scores (question, passage) pairs in batches of similar length; `Reranker.rerank`
reorders ranked lists. A reranked list keeps its first-stage order past `depth`: those passages come
after the reranked ones, with scores below them (the lowest rerank score minus 1, 2, ...), so every
list stays strictly ranked by its `score`; the first-stage score of every passage is kept beside it.
With `alpha` > 0 the new order is by min-max-normalised cross-encoder score + alpha x min-max-
normalised first-stage score over the reranked candidates (the interpolation rerankers are often
deployed with; on SQuAD-open's dev questions a reranker trained here gained top-1 only with it).
The Searcher (dense / bm25 / hybrid, then rerank), mining's denoising and the teacher scores of
distillation all score through this one class.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..common.errors import DprError

logger = logging.getLogger(__name__)

DEFAULT_RERANK_DEPTH = 20  # the top 20 of the first stage: hybrid's top-20 holds the answer 99.5 % of the time


class RerankError(DprError, ValueError):
    """The reranker cannot be used as asked (a depth out of range, non-finite scores)."""


def check_depth(depth: int, first_stage: Optional[int] = None) -> int:
    """`depth` if it is an integer >= 1 and no deeper than the first stage's `first_stage` results."""
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise RerankError(f"--rerank_depth must be an integer >= 1, got {depth!r}")
    if first_stage is not None and depth > first_stage:
        raise RerankError(f"--rerank_depth {depth} is deeper than the first stage's {first_stage} results "
                          f"(--n_docs): rerank at most {first_stage}, or retrieve more")
    return int(depth)


def minmax(x: np.ndarray) -> np.ndarray:
    """`x` scaled to [0, 1] (all zeros when it is constant)."""
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


class Reranker:
    """A loaded cross-encoder: `score` pairs, `rerank` ranked lists."""

    def __init__(self, score_fn, tensorizer, info: dict, batch_size: int = 32, members=None):
        """One model (`score_fn`, `tensorizer`, `info`), or an ensemble's `members`, each (score_fn, tensorizer,
        info), with `info` naming the whole."""
        self.members = members or [(score_fn, tensorizer, info)]
        self.info, self.batch_size = info, batch_size

    @property
    def tensorizer(self):
        """The (first) model's tensorizer: what counts a pair's tokens."""
        return self.members[0][1]

    @classmethod
    def load(cls, path: str, backend: str = "auto", batch_size: int = 32, max_length: int = 0) -> "Reranker":
        """The reranker directory `path` (train_reranker.py's checkpoint, or an ensemble of them), on `backend`,
        reading pairs up to each model's own max length (or `max_length` tokens when > 0)."""
        from ..encoding.reranker import load_rerankers

        members, info = load_rerankers(path, backend, max_length)
        logger.info("reranker %s (%s, max length %d%s)", path, info["backend"], info["max_length"],
                    f"; the mean of {len(members)} rerankers" if len(members) > 1 else "")
        return cls(None, None, info, batch_size, members)

    def score(self, questions: Sequence[str], passages: Sequence[Tuple[str, str]], progress: bool = False) -> np.ndarray:
        """Scores [N] of N (question, (title, text)) pairs, computed in batches of pairs of similar
        token length (longest first), returned in the pairs' order; an ensemble's is the mean of its
        models' scores. Non-finite scores are refused."""
        from tqdm import tqdm

        out = np.zeros(len(questions), dtype=np.float32)  # [N]
        for score_fn, tensorizer, info in self.members:
            encoded = tensorizer.encode_pairs_ids(questions, passages, info["max_length"])
            order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))  # little padding per batch
            one = np.empty(len(encoded), dtype=np.float32)  # [N]
            batches = range(0, len(order), self.batch_size)
            for start in tqdm(batches, desc="rerank", unit="batch", disable=not progress, dynamic_ncols=True):
                rows = order[start : start + self.batch_size]
                one[rows] = np.asarray(score_fn(tensorizer.pad([encoded[i] for i in rows])), dtype=np.float32).reshape(-1)
            out += one / len(self.members)
        bad = np.flatnonzero(~np.isfinite(out))
        if bad.size:
            raise RerankError(f"{self.info['model']}: the reranker gave {bad.size} non-finite scores (the first for "
                              f"question {questions[bad[0]]!r}); the model is damaged: use another checkpoint")
        return out

    def rerank(self, questions: Sequence[str], ids: List[List[str]], scores: np.ndarray, passages: Dict[str, tuple],
               depth: int, progress: bool = False, alpha: float = 0.0) -> Tuple[np.ndarray, List[List[str]], np.ndarray]:
        """Reorder the top `depth` of each ranked list (ids [n][m], first-stage scores [n, m]) by the
        cross-encoder (interpolated with the first stage by `alpha`); `passages` maps id -> (text, title).
        Returns (scores [n, m], ids, first-stage scores [n, m]) in the new order (see the module doc
        for the scores past `depth`)."""
        depth = check_depth(depth)
        pairs_q, pairs_p, spans = [], [], []
        for q, row in zip(questions, ids):
            d = min(depth, len(row))
            spans.append(d)
            pairs_q += [q] * d
            pairs_p += [(passages[pid][1], passages[pid][0]) for pid in row[:d]]
        flat = self.score(pairs_q, pairs_p, progress=progress)
        first = np.asarray(scores, dtype=np.float64)
        new_scores = np.empty(first.shape, dtype=np.float64)
        new_first = np.empty(first.shape, dtype=np.float64)
        new_ids, at = [], 0
        for r, (row, d) in enumerate(zip(ids, spans)):
            s = flat[at : at + d].astype(np.float64)
            at += d
            if alpha and d:
                s = minmax(s) + alpha * minmax(first[r, :d])
            order = np.argsort(-s, kind="stable")  # ties keep the first stage's order
            m = len(row)
            new_ids.append([row[i] for i in order] + list(row[d:]))
            new_scores[r, :d] = s[order]
            new_scores[r, d:m] = (s.min() if d else 0.0) - np.arange(1, m - d + 1)  # below every reranked one
            new_first[r, :d] = first[r, order]
            new_first[r, d:m] = first[r, d:m]
        return new_scores, new_ids, new_first
