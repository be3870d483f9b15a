"""The memory plan's Milvus-server figures against a real server's measured memory.

    .venv/bin/python bench/milvus_memory.py --anchors runs/serve/emb_minilm_0 --sizes 100000 1000000 \\
        --types IVF_SQ8 IVF_PQ HNSW --json bench/results/milvus_memory.json

For each size and index type, a fresh Milvus 2.3.5 standalone server (`python -m dpr_paddle.milvus_server`,
the PyPI package `milvus`) builds the collection with our MilvusIndex (real-anchored vectors: real
MiniLM passage vectors of --anchors plus noise with their covariance, bench/index.py), flushes and
releases it, and stops. It is started again on the same data: its resident memory (the server and
its child processes) is read idle, then after loading the collection, so that the growth is what a
query node holds for the sealed, indexed collection (not the index builder's or the insert buffers').
The measured growth is compared with index.factory.milvus_server_bytes, which the memory plan uses.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import tempfile
import time

from common import ROOT, markdown_table, save_results, start_milvus  # also puts the repo on sys.path
from index import real_anchored, write_shards
from load import rss_bytes


def settle(pid: int, seconds: float = 20.0) -> int:
    """The server's RSS once it stops moving by more than 1 % over 5 s (or after `seconds`)."""
    last, t0 = rss_bytes(pid), time.time()
    while time.time() - t0 < seconds:
        time.sleep(5)
        now = rss_bytes(pid)
        if abs(now - last) <= 0.01 * last:
            return now
        last = now
    return last


def files_bytes(directory: str, part: str) -> int:
    """Bytes of the files under `directory` whose path contains `part` (the server's stored index files)."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(directory) if part in d for f in names)


def sweep(client, queries, k: int, ef: int) -> None:
    """Search every query once, so that every page the index needs has been touched."""
    params = {"metric_type": "IP", "params": {"ef": ef, "nprobe": 16}}
    for lo in range(0, len(queries), 100):
        client.search("bench_memory", data=list(queries[lo : lo + 100]), limit=k, search_params=params)


def one(emb: str, index_type: str, m: int, work: str, queries) -> dict:
    from pymilvus import MilvusClient

    from dpr_paddle.index.exact import ExactIndex
    from dpr_paddle.index.factory import milvus_server_bytes
    from dpr_paddle.index.milvus import MilvusIndex
    from dpr_paddle.index.shards import load_shards

    shutil.rmtree(work, ignore_errors=True)
    exact = ExactIndex(load_shards(emb))
    proc, uri = start_milvus(work)
    try:  # build, flush and release; then restart, so the builder's and the insert buffers' memory is gone
        t0 = time.time()
        index = MilvusIndex(exact, uri, "bench_memory", index_type=index_type, m=m).build()
        build_s = time.time() - t0
        index.client.flush("bench_memory")
        index.client.release_collection("bench_memory")
        index.client.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    proc, uri = start_milvus(work)
    try:
        idle = settle(proc.pid)
        client = MilvusClient(uri=uri)
        client.load_collection("bench_memory")
        loaded = settle(proc.pid, 60)
        t0 = time.time()
        sweep(client, queries, 10, 64)
        sweep_s = time.time() - t0
        searched = settle(proc.pid, 30)
        client.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    n, dim = int(exact.offsets[-1]), int(exact.shards[0].meta["dim"])
    plan = milvus_server_bytes(n, dim, index_type, m, 0)
    grown = loaded - idle
    index_files = files_bytes(work, "index_files")
    return {"n": n, "dim": dim, "index_type": index_type, "M": m if index_type == "HNSW" else None,
            "build_s": round(build_s, 1), "idle_mb": round(idle / 2**20), "loaded_mb": round(loaded / 2**20),
            "measured_mb": round(grown / 2**20), "after_sweep_mb": round((searched - idle) / 2**20),
            "sweep_queries": len(queries), "sweep_s": round(sweep_s, 1), "index_files_mb": round(index_files / 2**20),
            "plan_mb": round(plan / 2**20),
            "plan_over_measured": round(plan / max(grown, searched - idle), 2) if grown > 0 else None}


def main() -> None:
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anchors", required=True, help="a shard directory of real passage vectors (vectors.npy)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--types", nargs="+", default=["IVF_SQ8", "IVF_PQ", "HNSW"])
    ap.add_argument("--m", type=int, default=16, help="HNSW M (Milvus' build is slow at large M on 2 cores)")
    ap.add_argument("--noise", type=float, default=0.5)
    ap.add_argument("--sweep", type=int, default=10_000, help="questions searched after the load (touches pages)")
    ap.add_argument("--json", default=os.path.join(ROOT, "bench", "results", "milvus_memory.json"))
    args = ap.parse_args()

    anchors = np.load(os.path.join(args.anchors, "vectors.npy")).astype(np.float32)
    queries = real_anchored(anchors, args.sweep, 1, args.noise)
    rows = []
    tmp = tempfile.mkdtemp(dir=os.path.join(ROOT, "runs"))
    try:
        for n in args.sizes:
            emb = write_shards(os.path.join(tmp, f"v{n}"), real_anchored(anchors, n, 0, args.noise), 1)
            for index_type in args.types:
                rows.append(one(emb, index_type, args.m, os.path.join(tmp, "server"), queries))
                print(rows[-1], flush=True)
                save_results(args.json, rows)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(markdown_table(["vectors", "index", "server RSS idle MB", "loaded MB", "growth MB",
                          "growth after the sweep MB", "index files MB", "plan MB", "plan / measured"],
                         [[f"{r['n']:,} x {r['dim']}", r["index_type"] + (f" M{r['M']}" if r["M"] else ""),
                           str(r["idle_mb"]), str(r["loaded_mb"]), str(r["measured_mb"]), str(r["after_sweep_mb"]),
                           str(r["index_files_mb"]), str(r["plan_mb"]),
                           str(r["plan_over_measured"])] for r in rows]))


if __name__ == "__main__":
    main()
