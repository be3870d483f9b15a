"""Queries/s and latency of `python -m dpr_paddle.serve` for 1 and 2 workers, at 1, 8, 32 and 64
concurrent clients, over hnswlib and over a real Milvus server; and what each worker costs in memory.

    .venv/bin/python bench/workers.py --data ../shared/data/squad1_open --emb 'runs/serve/emb_minilm_*' \\
        --json bench/results/workers.json

The retriever is zero-shot MiniLM (mean + cosine) over the shards --emb (generate_dense_embedding.py
of DATA/passages.tsv at --max_passage_length 256), one question per request, k = 10, questions from
DATA's qa_eval.csv. Clients are bench/load.py's async httpx clients on 127.0.0.1, in this process:
on a 2-core machine the client takes CPU from the server too, so these are lower bounds. Milvus is
the PyPI package `milvus` (2.3.5 standalone) started by `python -m dpr_paddle.milvus_server`, HNSW
(M 48, ef 256). Memory per process is from /proc/PID/smaps_rollup: RSS, PSS (shared pages split
among their users) and USS (private pages: what a process costs alone).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
import time

from common import ROOT, markdown_table, save_results, start_milvus  # also puts the repo on sys.path
from load import auth_headers, load, read_questions, start_server


def smaps(pid: int) -> dict:
    """RSS, PSS and USS (MB) of one process."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        kb = {line.split(":")[0]: int(line.split()[1]) for line in f if line.rstrip().endswith("kB")}
    return {"rss_mb": kb["Rss"] / 1024, "pss_mb": kb["Pss"] / 1024,
            "uss_mb": (kb["Private_Clean"] + kb["Private_Dirty"]) / 1024}


def processes(pid: int) -> list:
    """pid and its children (the server's workers)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()
    return [pid] + [int(p) for p in out]


def measure(url, questions, clients_list, per_client, min_requests):
    rows = []
    asyncio.run(load(url, questions, 200, 8, 300, 10, 1, {}, auth_headers(), valid_only=True))  # warm-up
    for clients in clients_list:
        n = max(min_requests, per_client * clients)
        r = asyncio.run(load(url, questions, n, clients, 600, 10, clients, {}, auth_headers(), valid_only=True))
        assert set(r["status"]) == {"200"}, r["status"]
        rows.append({"clients": clients, "requests": r["requests"], "qps": r["rps"], "p50_ms": r["p50_ms"],
                     "p99_ms": r["p99_ms"]})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--emb", required=True)
    ap.add_argument("--max_passage_length", type=int, default=256)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--backends", nargs="+", default=["hnsw", "milvus"], choices=["hnsw", "milvus"])
    ap.add_argument("--per_client", type=int, default=40, help="requests per client in each run")
    ap.add_argument("--min_requests", type=int, default=300)
    ap.add_argument("--json", default=os.path.join(ROOT, "bench", "results", "workers.json"))
    args = ap.parse_args()

    questions = read_questions(os.path.join(args.data, "qa_eval.csv"), 500)
    base = ["--model_name_or_path", "minilm", "--encoded_ctx_file", args.emb, "--ctx_file",
            os.path.join(args.data, "passages.tsv"), "--max_passage_length", str(args.max_passage_length),
            "--passage_store", os.path.join(ROOT, "runs", "serve", "workers_store.sqlite")]
    rows, milvus = [], None
    tmp = tempfile.mkdtemp(dir=os.path.join(ROOT, "runs"))
    try:
        for backend in args.backends:
            flags = ["--hnsw_index"]
            if backend == "milvus":
                milvus = milvus or start_milvus(os.path.join(tmp, "milvus"))
                flags = ["--index", "milvus", "--milvus_uri", milvus[1], "--milvus_collection", "bench_workers"]
            for workers in args.workers:
                proc, url = start_server(base + flags + ["--workers", str(workers)],
                                         os.path.join(tmp, f"{backend}_{workers}.log"))
                try:
                    time.sleep(2)
                    for row in measure(url, questions, args.clients, args.per_client, args.min_requests):
                        rows.append({"backend": backend, "workers": workers, **row})
                    mem = [smaps(p) for p in processes(proc.pid)]
                    rows[-1]["memory"] = mem
                    print(backend, workers, mem, flush=True)
                finally:
                    proc.terminate()
                    proc.wait(timeout=120)
    finally:
        if milvus:
            milvus[0].send_signal(2)
            milvus[0].wait(timeout=120)
    save_results(args.json, rows, cores=os.cpu_count())
    print(markdown_table(["index", "workers", "clients", "queries/s", "p50 ms", "p99 ms"],
                         [[r["backend"], str(r["workers"]), str(r["clients"]), f"{r['qps']:.0f}",
                           f"{r['p50_ms']:.0f}", f"{r['p99_ms']:.0f}"] for r in rows]))


if __name__ == "__main__":
    main()
