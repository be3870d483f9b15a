"""`option`: a dataclass field that carries its command-line help, so a spec's fields, defaults and
help live in the module that owns them and the commands (flags.py) make argparse flags from them."""
from __future__ import annotations

import numbers
from dataclasses import field
from typing import Optional, Sequence

from .errors import DprError


def option(default, help: str, aliases: Sequence[str] = (), **kw):
    """A dataclass field with `help`, extra flag spellings (`aliases`) and argparse keywords in its metadata."""
    return field(default=default, metadata={"help": help, "aliases": tuple(aliases), **kw})


# Every number a user types (a flag, an API argument, an HTTP field) is checked against this table: an int
# is >= 0 and a float finite and >= 0 unless it says otherwise ((low, high); "gt" makes the low bound strict;
# ("0 or", low): 0, the default's sentinel, or at least low).
BOUNDS = {
    "n_docs": (1, None), "batch_size": (1, None), "dev_batch_size": (1, None), "num_shards": (1, None),
    "read_chunk": (1, None), "hnsw_m": (2, 4096), "ef_construction": (1, None), "hybrid_depth": (1, None),
    "milvus_nprobe": (1, None), "validation_workers": (1, 1024), "snippet_chars": (1, None), "port": (0, 65535),
    "max_k": (1, None), "max_queries": (1, None), "max_batch": (1, None), "num_negatives": (1, None),
    "keep_last": (1, None), "max_query_length": (4, None), "max_passage_length": (4, None),
    "learning_rate": ("gt", 0), "adam_epsilon": ("gt", 0), "dropout": (0, 0.999), "hybrid_alpha": (0, 1e6),
    "temperature": (0, 1e6), "alpha": (0, 1e6), "depth": (1, None), "k": (1, None),
    "chunk_size": (0, None, ">= 1 (or 0 for no chunking)"), "q_chunk_size": (0, None, ">= 1 (or 0: --chunk_size)"),
    "p_chunk_size": (0, None, ">= 1 (or 0: --chunk_size)"),
    "group_size": (2, None, ">= 2 (1 positive and at least 1 negative)"), "max_length": (4, None),
    "rerank_depth": (1, None), "rerank_batch_size": (1, None), "rerank_max_length": ("0 or", 4, ">= 4 (or 0: the reranker's own)"), "rerank_alpha": (0, 1e6), "distill_weight": (0, 1e6), "distill_temperature": ("gt", 0),
    "bm25_k1": (0, 1e3), "bm25_b": (0, 1), "bm25_threads": (1, 256),
    "denoise_margin": (0, 1e6),
    "workers": (1, 256), "max_queue": (1, None), "request_timeout": ("gt", 0), "max_chars": (1, None),
}
# The numbers that take the rule above (an int >= 0, a float finite and >= 0) on purpose, and what 0 means for
# each. Every numeric option is in BOUNDS or here (tests/test_hostile.py walks them all), so a new option
# cannot take 0 by default without someone saying what 0 does.
ZERO_MEANS = {
    "ef_search": "max(8 * n_docs, 256)", "milvus_nlist": "about 4 sqrt(N) cells", "milvus_pq_m": "dim / 4",
    "validate_index": "no recall check", "shard_id": "the first shard", "seed": "seed 0",
    "hard_negatives": "in-batch negatives only", "weight_decay": "no decay", "warmup_steps": "no warmup",
    "max_grad_norm": "no clipping", "max_steps": "the epochs decide",
    "epochs": "--max_steps decides (the loop refuses both 0)", "log_steps": "no step log lines",
    "eval_steps": "per epoch only", "save_steps": "per epoch only", "projection_dim": "no projection",
}


def number_problem(name: str, value) -> Optional[str]:
    """What is wrong with `value` for the numeric flag or field `name` ("must be >= 1, got 0"), or None."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    rule = BOUNDS.get(name, (0, None))
    low, high = rule[0], rule[1]
    if low == "gt":
        bad, text = value <= high, f"> {high}"
    elif low == "0 or":  # 0 means "the default"; anything else is bounded below by `high`
        bad, text = value != 0 and value < high, f"0 or >= {high}"
    else:
        bad = value < low or (high is not None and value > high)
        text = f">= {low}" + (f" and <= {high}" if high is not None else "")
    return f"must be {rule[2] if len(rule) > 2 else text}, got {value!r}" if bad else None


class InvalidValue(DprError, ValueError):
    """A number out of its bounds, or a value of the wrong kind, given to the API."""


def check_numbers(obj, names=None) -> None:
    """Raise InvalidValue for the first numeric field of the dataclass `obj` (or of `names`) that is out of
    bounds or not a number of its kind: types at the boundary are strict, so `True` is not a depth and
    2.5 is not a count (an int field takes an int, a float field an int or a float)."""
    import dataclasses

    kinds = {f.name: str(f.type) for f in dataclasses.fields(obj)}
    for name in names or list(kinds):
        value, kind = getattr(obj, name), kinds.get(name, "")
        if names and value is not None:  # the named fields are numbers: their kind is checked too
            whole = "int" in kind and "float" not in kind
            if isinstance(value, bool) or not isinstance(value, numbers.Integral if whole else numbers.Real):
                raise InvalidValue(f"{name} must be {'an integer' if whole else 'a number'}, got {value!r}")
        problem = number_problem(name, value)
        if problem:
            raise InvalidValue(f"{name} {problem}")
