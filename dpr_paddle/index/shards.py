"""The embedding shard format: where shards live, what they hold, and how they are read.

Shards split the corpus into contiguous ranges of ceil(N / num_shards) passages, so the union
of all shards is the corpus with nothing dropped or repeated. Shard k of OUT_FILE is the
directory `OUT_FILE_k/` (the `_k` suffix is `shard_path`):

    vectors.npy   [n, D] float32 (or float16), a plain .npy: np.load(..., mmap_mode="r") maps it
    ids.txt       the n passage ids, one per line, in corpus order (ids.sha1: its SHA-1)
    vectors.sha1  the SHA-1 of vectors.npy as written (read back only by `verify_shard`: hashing
                  every vector on each load would cost seconds per GB)
    meta.json     {format, model, model_fingerprint, question_fingerprint (the question encoder
                   these passages pair with; every search checks its own against it), pooling,
                   similarity, max_length, dim, count, dtype, shard_id, num_shards, start, end,
                   ctx_file, corpus}

The directory appears by an atomic rename when the shard is complete (`assemble_shard`); while
it is being made, finished blocks wait in `OUT_FILE_k.partial/`. Index backends may keep their
own files inside a shard directory (a per-shard hnsw graph); nothing here reads them.
"""
from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from ..common.errors import DprError
from ..common.files import ArtefactError, atomic_dir, reading, sha1_of_file, write_json_atomic

FORMAT = "dpr_paddle.embeddings/1"


class EmbeddingError(DprError, RuntimeError):
    """Embedding shards are missing, incomplete or inconsistent."""


def shard_range(n: int, shard_id: int, num_shards: int) -> Tuple[int, int]:
    """[start, end) of shard `shard_id`: contiguous ranges of ceil(n / num_shards) passages."""
    if num_shards < 1:
        raise EmbeddingError(f"--num_shards must be >= 1, got {num_shards}")
    if not 0 <= shard_id < num_shards:
        raise EmbeddingError(f"--shard_id must be in [0, {num_shards}), got {shard_id}")
    size = math.ceil(n / num_shards) if n else 0
    start = min(shard_id * size, n)
    if start >= n:  # an empty shard would be refused by every reader later; say why now
        useful = math.ceil(n / size) if n else 0
        raise EmbeddingError(f"shard {shard_id} of {num_shards} would hold no passage: the corpus has {n}, and "
                             f"ceil({n} / {num_shards}) = {size} a shard fills {useful} shard(s); use --num_shards "
                             f"<= {useful}")
    return start, min(start + size, n)


def shard_path(out_file: str, shard_id: int) -> str:
    """Where shard `shard_id` of `out_file` is written."""
    return f"{out_file}_{shard_id}"


# what makes two shards the same work; the backend is not among them (onnxruntime, inference and
# dygraph give the same vectors within 2e-6), but int8 weights are ("quantization", absent otherwise)
SHARD_IDENTITY = ("model_fingerprint", "pooling", "similarity", "max_length", "dtype", "quantization", "ctx_file",
                  "corpus", "shard_id", "num_shards")


def check_same_job(path: str, meta: dict, identity: dict) -> None:
    """A complete shard is reused only when it was made by this job; anything else is refused."""
    for key in SHARD_IDENTITY:
        if meta.get(key) != identity.get(key):
            have, want = meta.get(key), identity.get(key)
            if key == "corpus":
                have, want = (f"{d.get('size')} bytes" if isinstance(d, dict) else d for d in (have, want))
            raise EmbeddingError(f"{path} holds vectors of another job ({key} {have!r} there, {want!r} now); "
                                 "pass --overwrite to re-encode it, or another --out_file")


def meta_digest(meta: dict) -> str:
    """A short hash of a shard's meta.json: equal digests, equal vectors."""
    return hashlib.sha1(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]


def read_meta(path: str) -> Optional[dict]:
    """meta.json of a complete shard directory, or None; a damaged one is one line."""
    f = os.path.join(path, "meta.json")
    if not os.path.isfile(f):
        return None
    with reading(f, "shard metadata", REENCODE), open(f, encoding="utf-8") as fh:
        meta = json.load(fh)
        for key in ("dim", "count", "shard_id", "num_shards"):
            meta[key]  # noqa: B018 - a KeyError here is a damaged file
    return meta


REENCODE = "re-encode the shard (generate_dense_embedding.py --overwrite)"


def read_ids(path: str) -> List[str]:
    """The shard's ids.txt, checked against the SHA-1 written beside it (ids.sha1; shards written since it is)."""
    f = os.path.join(path, "ids.txt")
    with reading(f, "shard ids", REENCODE), open(f, "rb") as fh:
        raw = fh.read()
        ids = raw.decode("utf-8").splitlines()
        digest_file = os.path.join(path, IDS_DIGEST)
        want = open(digest_file, encoding="ascii").read().strip() if os.path.isfile(digest_file) else None
    if want is not None and hashlib.sha1(raw).hexdigest() != want:
        raise ArtefactError(f"{f}: its content is not what the shard was written with (its SHA-1 differs from "
                            f"{IDS_DIGEST}); {REENCODE}")
    return ids


IDS_DIGEST = "ids.sha1"


def open_vectors(path: str, meta: dict) -> np.ndarray:
    """The shard's vectors.npy, memory-mapped and checked against its meta.json (rows, dim, dtype)."""
    f = os.path.join(path, "vectors.npy")
    with reading(f, "shard vectors", REENCODE):
        vectors = np.load(f, mmap_mode="r", allow_pickle=False)
    dtype = meta.get("dtype", str(vectors.dtype))
    if vectors.ndim != 2 or vectors.shape != (meta["count"], meta["dim"]) or str(vectors.dtype) != dtype:
        raise ArtefactError(f"{f}: {vectors.dtype} {vectors.shape} does not match its meta.json ({dtype}, "
                            f"{meta['count']} x {meta['dim']}); {REENCODE}")
    return vectors


VECTORS_DIGEST = "vectors.sha1"


def verify_shard(path: str) -> str:
    """Read a shard whole: meta.json, ids.txt against ids.sha1, vectors.npy against meta.json and
    vectors.sha1. Returns "ok" or "unchecked" (written before vectors.sha1 existed, or by another
    tool); a damaged file raises one ArtefactError naming it."""
    meta = read_meta(path)
    if meta is None:
        raise ArtefactError(f"{path}: not a complete shard (no meta.json); {REENCODE}")
    read_ids(path)
    open_vectors(path, meta)
    digest_file = os.path.join(path, VECTORS_DIGEST)
    if not os.path.isfile(digest_file):
        return "unchecked"
    f = os.path.join(path, "vectors.npy")
    with reading(f, "shard vectors", REENCODE):
        want, got = open(digest_file, encoding="ascii").read().strip(), sha1_of_file(f)
    if got != want:
        raise ArtefactError(f"{f}: its content is not what the shard was written with (its SHA-1 differs from "
                            f"{VECTORS_DIGEST}); {REENCODE}")
    return "ok"


def check_finite(shard_path: str, ids: List[str], lo: int, block: np.ndarray, values: Optional[np.ndarray] = None) -> None:
    """Refuse rows [lo, lo + len(block)) of a shard (`block`: their float32 vectors [b, D]) when one holds
    NaN or inf: such a passage would silently drop out of every ranking (NaN sorts nowhere). `values`
    (say the block's scores against the questions, [n, b]) is what is summed first: one finite sum
    clears the block at a fraction of the matrix product's cost, and only a non-finite one is looked
    at row by row. Every backend reads vectors through here (exact search, hnsw and Milvus builds)."""
    if np.isfinite((block if values is None else values).sum()):
        return
    bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
    if len(bad):
        row = lo + int(bad[0])
        raise EmbeddingError(f"{shard_path}: row {row} (passage {ids[row]!r}) holds a non-finite vector (NaN or inf), "
                             f"{len(bad)} row(s) of this block do; that passage would drop out of every ranking. "
                             f"{REENCODE[0].upper()}{REENCODE[1:]} (and check the shard: python -m "
                             "dpr_paddle.verify_shards)")


@dataclass
class Shard:
    """One embedding shard: memory-mapped vectors [n, D], their passage ids and metadata."""

    path: str
    meta: dict
    vectors: np.ndarray
    ids: List[str]


def _shard_sort_key(path: str):
    m = re.search(r"_(\d+)$", path.rstrip("/"))
    return (int(m.group(1)) if m else -1, path)


def shard_paths(pattern: str) -> List[str]:
    """The shard directories `pattern` names (a glob, a shard dir, or the OUT_FILE prefix given to
    generate_dense_embedding.py), in shard order."""
    def find(pat):
        return sorted((p for p in glob.glob(pat) if os.path.isdir(p) and not p.endswith(".partial")), key=_shard_sort_key)

    paths = find(pattern)
    if paths == [pattern.rstrip("/")] or (not paths and os.path.isdir(pattern)):
        paths = [pattern]  # one shard directory named directly
    elif not paths:
        paths = find(glob.escape(pattern) + "_*")  # the --out_file prefix of generate_dense_embedding.py
    if not paths:
        raise EmbeddingError(f"no embedding shards match {pattern!r}")
    return paths


def load_shards(pattern: str, partial: bool = False) -> List[Shard]:
    """Open every complete shard matching `pattern` (see `shard_paths`) and check they belong together;
    all `num_shards` of them unless `partial` (a machine searching only its own shards)."""
    paths = shard_paths(pattern)
    shards = []
    for p in paths:
        meta = read_meta(p)
        if meta is None:
            raise EmbeddingError(f"{p}: incomplete shard (no meta.json); re-run generate_dense_embedding.py")
        vectors = open_vectors(p, meta)
        ids = read_ids(p)
        if not meta["count"]:
            raise EmbeddingError(f"{p}: the shard holds no vectors (made from an empty part of the corpus); "
                                 "re-encode with fewer --num_shards")
        if vectors.shape[0] != len(ids) or len(ids) != meta["count"]:
            raise EmbeddingError(f"{p}: {vectors.shape[0]} vectors, {len(ids)} ids, meta count {meta['count']}; "
                                 f"{REENCODE}")
        shards.append(Shard(p, meta, vectors, ids))
    first = shards[0].meta
    for s in shards[1:]:
        for key in ("dim", "model_fingerprint", "question_fingerprint", "quantization", "num_shards", "pooling",
                    "similarity", "max_length"):
            if s.meta.get(key) != first.get(key):
                raise EmbeddingError(f"shards disagree on {key}: {shards[0].path} has {first.get(key)!r}, "
                                     f"{s.path} has {s.meta.get(key)!r}")
    have = sorted(s.meta["shard_id"] for s in shards)
    want = list(range(first["num_shards"]))
    if have != want and not (partial and len(set(have)) == len(have) and set(have) <= set(want)):
        missing = sorted(set(want) - set(have))
        raise EmbeddingError(f"{pattern!r}: found shards {have} of {first['num_shards']}; missing {missing}")
    return shards


def assemble_shard(partial: str, final: str, meta: dict, expected: int) -> Tuple[int, int]:
    """Join the finished blocks of `partial` (block_NNNNNN.npy/.ids) into the shard directory
    `final`, which appears by an atomic rename with its meta.json; returns (count, dim)."""
    blocks = sorted(f[:-4] for f in os.listdir(partial) if f.endswith(".npy"))
    dim = None
    with atomic_dir(final) as tmp:
        mats = [np.load(os.path.join(partial, b + ".npy"), mmap_mode="r") for b in blocks]
        count = sum(m.shape[0] for m in mats)
        if count != expected:
            raise EmbeddingError(f"{partial}: {count} vectors for {expected} passages; delete it and re-run")
        dim = mats[0].shape[1] if mats else dim
        out = np.lib.format.open_memmap(os.path.join(tmp, "vectors.npy"), mode="w+", dtype=meta["dtype"],
                                        shape=(count, dim or 0))
        row = 0
        for m in mats:
            out[row : row + m.shape[0]] = m
            row += m.shape[0]
        out.flush()
        del out
        with open(os.path.join(tmp, VECTORS_DIGEST), "w", encoding="ascii") as f:
            f.write(sha1_of_file(os.path.join(tmp, "vectors.npy")) + "\n")
        digest = hashlib.sha1()
        with open(os.path.join(tmp, "ids.txt"), "wb") as f:
            for b in blocks:
                with open(os.path.join(partial, b + ".ids"), "rb") as g:
                    data = g.read()
                digest.update(data)
                f.write(data)
        with open(os.path.join(tmp, IDS_DIGEST), "w", encoding="ascii") as f:
            f.write(digest.hexdigest() + "\n")
        write_json_atomic(os.path.join(tmp, "meta.json"), {**meta, "dim": dim, "count": count})
    return count, dim
