"""The dense searcher: a question tower over an index of embedding shards.

One copy, used by dense_retriever.py's batch run, the `Retriever` API (and so the HTTP server)
and dense hard-negative mining: questions are encoded `batch_size` at a time, checked against
the shards (same pooling and similarity, same dimension), searched with the index the IndexSpec
names, and the rows turned into passage ids.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from ..index.factory import DenseIndex, IndexSpec
from ..index.shards import EmbeddingError, read_meta, shard_paths


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


def check_pair(pattern: str, meta: dict, question: dict, context: Optional[Callable[[], Tuple[str, str]]]) -> None:
    """The one check where shards meet a question tower (every search goes through DenseSearcher): the
    question encoder `question` (load_tower's info) must be the one the shards' passages were encoded to
    pair with, or every ranking is noise with the right shapes. Shards record that encoder's fingerprint
    (`question_fingerprint`, written since round four); older shards, or shards made from a lone
    --con_model_path, are checked through the context encoder: one encoder for both towers, or the
    context encoder the spec names (`context()` -> (path, fingerprint)), which must be theirs."""
    have = question.get("model_fingerprint")
    made_by = f"{meta.get('model')} (fingerprint {meta.get('model_fingerprint')})"
    pair = meta.get("question_fingerprint")
    if context is not None:  # a context encoder named explicitly must be the one that made the shards
        path, fingerprint = context()
        if fingerprint != meta.get("model_fingerprint"):
            raise EmbeddingError(f"{pattern}: the passages were encoded by {made_by}, not by the context encoder "
                                 f"{path} ({fingerprint}); pass the context encoder that made them, or re-encode with "
                                 "this one")
    if pair is not None and have != pair:
        raise EmbeddingError(f"{pattern}: the passages were encoded by {made_by} to be searched with the question "
                             f"encoder of fingerprint {pair}, not with {question.get('model')} ({have}): its vectors "
                             "would rank them at random. Pass the question encoder of the same checkpoint "
                             "(--model_file), or re-encode the passages with this model's context encoder")
    if pair is None and have != meta.get("model_fingerprint") and context is None:
        raise EmbeddingError(f"{pattern}: these shards do not record which question encoder they pair with (encoded "
                             f"by {made_by} before that was recorded, or from a lone --con_model_path), and "
                             f"{question.get('model')} ({have}) is not that encoder itself; name the context encoder "
                             "that made them (--model_file or --con_model_path; Retriever.load(context_encoder=...)) "
                             "so that it is checked, or re-encode them")


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

    def __init__(self, encode_fn, tensorizer, info: dict, index: DenseIndex, batch_size: int = 64,
                 pair_checked: bool = False):
        if not pair_checked:  # `load` checks before it builds the index, with the context encoder it names
            check_pair(index.shards[0].path, index.shards[0].meta, info, None)
        check_recipe(index.shards, info)
        self.encode_fn, self.tensorizer, self.info, self.index = encode_fn, tensorizer, info, index
        self.batch_size = batch_size
        self._lock = threading.Lock()  # Paddle Inference predictors are not re-entrant

    @classmethod
    def load(cls, tower, shards: str, index_spec: Optional[IndexSpec] = None, batch_size: int = 64,
             partial: bool = False, index: Optional[DenseIndex] = None) -> "DenseSearcher":
        """The question tower of `tower` (an encoding.towers.TowerSpec) over the shards `shards`, checked
        to belong with them (`check_pair`, before any index is built). `partial`: a subset of the shards
        (one machine's part). `index`: the DenseIndex of `shards` already loaded (shared by the
        server's workers)."""
        from ..encoding.spec import names_context
        from ..encoding.towers import load_tower, tower_fingerprint
        from ..modeling.model import CONTEXT, QUESTION

        first = shard_paths(shards)[0]  # a wrong pattern is one line before the model loads
        encode_fn, tensorizer, info = load_tower(QUESTION, tower)
        context = (lambda: tower_fingerprint(CONTEXT, tower)) if names_context(tower) else None
        check_pair(shards, read_meta(first) or {}, info, context)
        index = index or DenseIndex(shards, index_spec, partial=partial)
        return cls(encode_fn, tensorizer, info, index, batch_size, pair_checked=True)

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
