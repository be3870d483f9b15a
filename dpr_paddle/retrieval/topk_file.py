"""Per-shard top-k files: what one machine's search of its own shards hands to the reduce step.

A .npz (no pickle) with `scores` [n, k] float32, `ids` [n, k] passage ids, and `meta`, a JSON
string: the shards' model fingerprint, passage length and corpus, the question encoder that searched
them (fingerprint, max query length, pooling, similarity), num_shards, the shard ids searched, the
questions file and its fingerprint, k. `merge_parts` checks and merges a complete set for `python -m dpr_paddle.reduce`
(Tevatron's reducer).
"""
from __future__ import annotations

import glob
import json
import os
from typing import List, Tuple

import numpy as np

from ..common.errors import DprError
from ..common.files import atomic_path, reading
from ..index.exact import merge_topk

FORMAT = "dpr_paddle.topk/1"


class TopKFileError(DprError, ValueError):
    """A top-k file is unreadable, or a set of them does not make one whole search."""


def write_topk(path: str, scores: np.ndarray, ids: List[List[str]], meta: dict) -> None:
    """Write one machine's top k lists ([n, k] scores and ids) atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a path
            np.savez(f, scores=np.asarray(scores, dtype=np.float32), ids=np.asarray(ids, dtype=str),
                     meta=np.asarray(json.dumps({"format": FORMAT, **meta})))


def read_topk(path: str) -> Tuple[np.ndarray, np.ndarray, dict]:
    """(scores [n, k], ids [n, k], meta) of a file written by `write_topk`."""
    if not os.path.isfile(path):
        raise TopKFileError(f"{path}: no such top-k file")
    with reading(path, "top-k file", "re-run dense_retriever.py --topk_out for its shards"):
        with np.load(path, allow_pickle=False) as z:
            scores, ids, meta = z["scores"], z["ids"], json.loads(str(z["meta"]))
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or scores.shape != ids.shape or scores.ndim != 2:
        raise TopKFileError(f"{path}: not a {FORMAT} file")
    if not np.isfinite(scores).all():
        raise TopKFileError(f"{path}: holds non-finite scores; re-run dense_retriever.py --topk_out for its shards")
    return scores, ids, meta


def expand(patterns: List[str]) -> List[str]:
    """Files named directly or by glob, each once, in order."""
    out = []
    for p in patterns:
        for path in sorted(glob.glob(p)) or [p]:
            if path not in out:
                out.append(path)
    return out


# what every part of one search must share: a part without a key (written before it was recorded) has None
PART_IDENTITY = ("model_fingerprint", "question_fingerprint", "max_query_length", "max_passage_length", "pooling",
                 "similarity", "corpus", "num_shards", "qa", "questions", "k")


def merge_parts(paths: List[str]) -> Tuple[np.ndarray, List[List[str]], dict]:
    """Check that the parts make one search and merge them: (scores [n, k], ids, meta)."""
    parts = sorted((read_topk(p) + (p,) for p in paths), key=lambda part: part[2]["shard_ids"])
    first = parts[0][2]
    for scores, _, meta, path in parts:
        for key in PART_IDENTITY:
            if meta.get(key) != first.get(key):
                raise TopKFileError(f"{path}: {key} {meta.get(key)!r}, but {parts[0][3]} has {first.get(key)!r}; "
                                    "every part must search one corpus's shards of one model, with one question "
                                    "encoder, one --max_query_length, one questions file and one --n_docs")
    seen = {}
    for _, _, meta, path in parts:
        for s in meta["shard_ids"]:
            if s in seen:
                raise TopKFileError(f"shard {s} is in both {seen[s]} and {path}; give each shard's result once")
            seen[s] = path
    missing = sorted(set(range(first["num_shards"])) - set(seen))
    if missing:
        raise TopKFileError(f"{len(parts)} top-k file(s) cover shards {sorted(seen)} of {first['num_shards']}; "
                            f"missing {missing}")
    ids = np.concatenate([part[1] for part in parts], axis=1)  # [n, sum k_i]
    offsets = np.cumsum([0] + [part[0].shape[1] for part in parts])
    lists = [(part[0], np.broadcast_to(np.arange(offsets[i], offsets[i + 1]), part[0].shape))
             for i, part in enumerate(parts)]
    scores, cols = merge_topk(lists, first["k"])
    merged = {**first, "passages": sum(part[2]["passages"] for part in parts), "files": len(parts)}
    return scores, np.take_along_axis(ids, cols, axis=1).tolist(), merged
