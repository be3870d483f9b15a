"""Passage embeddings, one shard at a time, resumable block by block (the format: index/shards.py).

While a shard is being made, finished blocks are kept in `OUT_FILE_k.partial/`, so an
interrupted run continues from the last finished block instead of starting over.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from typing import List, Optional

import numpy as np

from ..common.files import atomic_path, file_fingerprint
from ..common.jobs import open_job_dir
from ..data.passages import count_passages, iter_range
from ..data.readers import Passage
from ..index.shards import FORMAT, EmbeddingError, assemble_shard, check_same_job, read_meta, shard_path, shard_range

logger = logging.getLogger(__name__)


def tokenize_passages(tensorizer, passages: List[Passage]):
    """Unpadded (ids, type_ids) of each passage as a (title, text) pair."""
    return tensorizer.encode_passages_ids([(p.title, p.text) for p in passages])


def prefetch_tokenized(tensorizer, blocks, skip, background: bool):
    """Yield (b, passages, encoded) for each (b, passages) of `blocks`; with `background`, block b+1
    is tokenized in a thread while the caller encodes block b (the Rust tokenizer and the encoder
    both release the GIL), so a fast device never waits for the tokenizer. `skip(b)` blocks are
    yielded with encoded None and never tokenized."""
    from concurrent.futures import ThreadPoolExecutor

    if not background:
        for b, passages in blocks:
            yield b, passages, None if skip(b) else tokenize_passages(tensorizer, passages)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="tokenize") as pool:
        pending = None
        for b, passages in blocks:
            job = None if skip(b) else pool.submit(tokenize_passages, tensorizer, passages)
            if pending is not None:
                yield pending[0], pending[1], pending[2] and pending[2].result()
            pending = (b, passages, job)
        if pending is not None:
            yield pending[0], pending[1], pending[2] and pending[2].result()


def encode_passages(encode_fn, tensorizer, passages: List[Passage], batch_size: int, sort_by_length: bool = True,
                    progress=None, encoded=None):
    """[n, D] float32 representations of `passages`, in their order (`encoded`: their ids, when
    already tokenized).

    With `sort_by_length`, passages are batched by token length (less padding), and the rows
    are put back in input order before returning.
    """
    encoded = tokenize_passages(tensorizer, passages) if encoded is None else encoded
    order = np.argsort([len(ids) for ids, _ in encoded], kind="stable") if sort_by_length else np.arange(len(encoded))
    out = None
    for i in range(0, len(order), batch_size):
        rows = order[i : i + batch_size]
        reps = encode_fn(tensorizer.pad([encoded[r] for r in rows]))  # [b, D]
        if not np.isfinite(reps).all():
            bad = rows[int(np.flatnonzero(~np.isfinite(reps).all(axis=1))[0])]
            raise EmbeddingError(f"the encoder gives non-finite values (NaN or inf) for passage "
                                 f"{passages[int(bad)].id!r}: the model is broken (a training run that diverged?); "
                                 "nothing of this block was written")
        if out is None:
            out = np.empty((len(passages), reps.shape[1]), dtype=np.float32)
        out[rows] = reps
        if progress is not None:
            progress(len(rows))
    return out


def generate_shard(encode_fn, tensorizer, ctx_file: str, out_file: str, shard_id: int, num_shards: int,
                   model_info: dict, batch_size: int = 64, dtype: str = "float32", block: int = 20000,
                   overwrite: bool = False, sort_by_length: bool = True, total: Optional[int] = None,
                   prefetch: Optional[bool] = None) -> str:
    """Encode one shard of `ctx_file` into `out_file_{shard_id}/` (see the module doc). `prefetch`
    tokenizes the next block in the background (default: on a GPU, where the encoder would
    otherwise wait; on a CPU the tokenizer thread would only take a core from the encoder)."""
    from tqdm import tqdm

    final = shard_path(out_file, shard_id)
    identity = {"format": FORMAT, **model_info, "dtype": dtype, "shard_id": shard_id, "num_shards": num_shards,
                "ctx_file": os.path.abspath(ctx_file), "corpus": file_fingerprint(ctx_file)}
    done_meta = read_meta(final)
    if done_meta is not None and not overwrite:
        check_same_job(final, done_meta, identity)
        logger.info("%s is complete; skipped (use --overwrite to redo it)", final)
        return final
    n = count_passages(ctx_file) if total is None else total
    start, end = shard_range(n, shard_id, num_shards)
    job = {**identity, "start": start, "end": end, "block": block}
    partial = open_job_dir(final + ".partial", job, fresh=overwrite)
    logger.info("shard %d/%d: passages [%d, %d) of %s", shard_id, num_shards, start, end, ctx_file)

    done = {f.split(".")[0] for f in os.listdir(partial) if f.endswith(".npy")}
    if prefetch is None:
        import paddle

        prefetch = "gpu" in paddle.device.get_device()
    bar = tqdm(total=end - start, desc=f"shard {shard_id}", unit="psg", dynamic_ncols=True)
    try:  # the bar is closed before an error's line is printed, not after it
        t0, encoded = time.perf_counter(), 0
        blocks = prefetch_tokenized(tensorizer, iter_range(ctx_file, start, end, block),
                                    skip=lambda b: f"block_{b:06d}" in done, background=prefetch)
        for b, passages, ids in blocks:
            name = f"block_{b:06d}"
            if name in done:
                bar.update(len(passages))
                continue
            vecs = encode_passages(encode_fn, tensorizer, passages, batch_size, sort_by_length, progress=bar.update,
                                   encoded=ids)
            vecs = vecs.astype(dtype)
            if not np.isfinite(vecs).all():  # float16 holds no more than 65504: larger values become inf
                raise EmbeddingError(f"the encoder's vectors do not fit {dtype} (values beyond its range became "
                                     "inf); encode without --fp16")
            with atomic_path(os.path.join(partial, name + ".ids")) as tmp:
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write("".join(p.id + "\n" for p in passages))
            with atomic_path(os.path.join(partial, name + ".npy")) as tmp:  # the .npy marks the block done
                with open(tmp, "wb") as f:
                    np.save(f, vecs)
            encoded += len(passages)
            bar.set_postfix(psg_per_s=f"{encoded / (time.perf_counter() - t0):.1f}")
    finally:
        bar.close()

    count, dim = assemble_shard(partial, final, {k: v for k, v in job.items() if k != "block"}, end - start)
    shutil.rmtree(partial, ignore_errors=True)
    logger.info("wrote %s: %d vectors of dim %s (%s)", final, count, dim, dtype)
    return final
