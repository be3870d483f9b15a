"""Per-shard top-k files: what one machine's search of its own shards hands to the reduce step.

A .npz (no pickle) with `scores` [n, k] float32, `ids` [n, k] passage ids, and `meta`, a JSON
string: the model fingerprint, num_shards, the shard ids searched, the questions file and its
fingerprint, k. `python -m dpr_paddle.reduce` merges a complete set (Tevatron's reducer).
"""
from __future__ import annotations

import json
import os
from typing import List, Tuple

import numpy as np

from .errors import DprError
from .utils import atomic_path

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
    try:
        with np.load(path, allow_pickle=False) as z:
            scores, ids, meta = z["scores"], z["ids"], json.loads(str(z["meta"]))
    except (ValueError, KeyError, OSError, json.JSONDecodeError) as e:
        raise TopKFileError(f"{path}: not a dpr_paddle top-k file ({type(e).__name__}: {e})") from None
    if meta.get("format") != FORMAT or scores.shape != ids.shape:
        raise TopKFileError(f"{path}: not a {FORMAT} file")
    return scores, ids, meta
