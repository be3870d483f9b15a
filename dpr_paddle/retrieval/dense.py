"""The dense searcher: a question tower over an index of embedding shards.

One copy, used by dense_retriever.py's batch run, the `Retriever` API (and so the HTTP server)
and dense hard-negative mining: questions are encoded `batch_size` at a time, checked against
the shards (same pooling and similarity, same dimension), searched with the index the IndexSpec
names, and the rows turned into passage ids.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..index.factory import DenseIndex, IndexSpec
from ..index.shards import EmbeddingError, read_meta, shard_paths

logger = logging.getLogger(__name__)


def encode_questions(encode_fn, tensorizer, questions: List[str], batch_size: int, progress: bool = True) -> np.ndarray:
    """[n, D] float32 question vectors, `batch_size` questions per forward (a bar with `progress`)."""
    from tqdm import tqdm

    out = []
    for i in tqdm(range(0, len(questions), batch_size), desc="questions", unit="batch", dynamic_ncols=True,
                  disable=not progress):
        out.append(encode_fn(tensorizer.encode_questions(questions[i : i + batch_size])))
    return np.concatenate(out, axis=0)


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


class DenseSearcher:
    """A question encoder (`encode_fn`, `tensorizer`, its `info`) and the DenseIndex it searches."""

    def __init__(self, encode_fn, tensorizer, info: dict, index: DenseIndex, batch_size: int = 64):
        check_recipe(index.shards, info)
        self.encode_fn, self.tensorizer, self.info, self.index = encode_fn, tensorizer, info, index
        self.batch_size = batch_size
        self._lock = threading.Lock()  # Paddle Inference predictors are not re-entrant

    @classmethod
    def load(cls, tower, shards: str, index_spec: Optional[IndexSpec] = None, batch_size: int = 64,
             partial: bool = False, check_context: bool = False, index: Optional[DenseIndex] = None) -> "DenseSearcher":
        """The question tower of `tower` (an encoding.towers.TowerSpec) over the shards `shards`; with
        `check_context` the spec's context encoder must be the one that made them (checked before
        any index is built). `partial`: a subset of the shards (one machine's part). `index`: the
        DenseIndex of `shards` already loaded (shared by the server's workers)."""
        from ..encoding.towers import load_tower, tower_fingerprint
        from ..modeling.model import CONTEXT, QUESTION

        shard_paths(shards)  # a wrong pattern is one line before the model loads
        encode_fn, tensorizer, info = load_tower(QUESTION, tower)
        if check_context:
            check_encoders(shards, tower_fingerprint(CONTEXT, tower), info)
        index = index or DenseIndex(shards, index_spec, partial=partial)
        return cls(encode_fn, tensorizer, info, index, batch_size)

    def encode(self, questions: Sequence[str], progress: bool = False) -> np.ndarray:
        """[n, D] float32 question vectors, checked against the shards' dimension."""
        with self._lock:
            q = encode_questions(self.encode_fn, self.tensorizer, list(questions), self.batch_size, progress)
        check_dim(q, self.index.shards)
        if not np.isfinite(q).all():
            raise EmbeddingError(f"the question encoder {self.info.get('model')} gives non-finite vectors (NaN or inf): "
                                 "the model is broken (a training run that diverged?)")
        return q

    def search(self, questions: Sequence[str], k: int, n_docs: Optional[int] = None,
               trace: Optional[dict] = None) -> Tuple[np.ndarray, List[List[str]]]:
        """Top k passages of each question: (scores [n, k], ids [n][k]), best first. `n_docs` (default k)
        sets hnsw's ef; a `trace` dict receives the seconds spent, the vectors and the rows."""
        t0 = time.perf_counter()
        q = self.encode(questions, progress=trace is not None)
        t1 = time.perf_counter()
        scores, rows = self.index.search(q, k, n_docs)
        if not np.isfinite(scores).all():
            raise EmbeddingError(f"{self.index.shards[0].path}: the shards hold non-finite vectors (NaN or inf), so "
                                 "scores are too; re-encode them with a working model")
        if trace is not None:
            trace.setdefault("seconds", {}).update(encode_questions=round(t1 - t0, 3),
                                                    search=round(time.perf_counter() - t1, 3))
            trace.update(vectors=q, rows=rows)
        return scores, self.index.ids(rows)
