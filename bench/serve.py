"""Query-time cost: the passage store at 1M rows, single-question latency through the Python API
and over HTTP, and queries/s for 1, 8 and 32 concurrent HTTP clients (loopback only, bounded).

    .venv/bin/python bench/serve.py --data ../shared/data/squad1_open --emb runs/quality/squad1_open/emb_zs_mean

The retriever is zero-shot MiniLM (mean + cosine) over the shards given by --emb (made by
generate_dense_embedding.py from the dataset's passages.tsv), hnswlib, the passage store beside
the shards; questions are the dataset's QA questions, one per request, k = 10. Writes
bench/results/serve.json and prints markdown tables.
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from common import ROOT, markdown_table, save_results  # also puts the repo on sys.path
from dpr_paddle.common.net import free_port, wait_healthy


def percentiles(ms):
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "n": len(ms)}


def store_at_scale(n_rows: int, lookups: int) -> dict:
    """Build a passage store from n_rows synthetic 60-word passages; time lookups of 10 and 100 ids."""
    from dpr_paddle.retrieval.passage_store import PassageStore

    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    with tempfile.TemporaryDirectory(dir=os.path.join(ROOT, "runs")) as tmp:
        tsv = os.path.join(tmp, "p.tsv")
        with open(tsv, "w", encoding="utf-8") as f:
            f.write("id\ttext\ttitle\n")
            for i in range(n_rows):
                f.write(f"{i}\t{' '.join(rng.choices(words, k=60))}\tTitle {i}\n")
        t0 = time.perf_counter()
        store = PassageStore.build(tsv, os.path.join(tmp, "s.sqlite"))
        build_s = time.perf_counter() - t0
        out = {"rows": n_rows, "tsv_mb": os.path.getsize(tsv) / 2**20, "build_s": build_s,
               "sqlite_mb": os.path.getsize(os.path.join(tmp, "s.sqlite")) / 2**20}
        for k in (10, 100):
            ms = []
            for _ in range(lookups):
                ids = [str(rng.randrange(n_rows)) for _ in range(k)]
                t0 = time.perf_counter()
                got = store.get(ids)
                ms.append((time.perf_counter() - t0) * 1e3)
                assert len(got) == len(set(ids))
            out[f"lookup_{k}"] = percentiles(ms)
    return out


def http_clients(url: str, questions, clients: int, per_client: int, max_seconds: float) -> dict:
    """`clients` threads, each sending up to `per_client` single-question requests (stops at max_seconds)."""
    import httpx

    done, latencies, lock = [0], [], threading.Lock()
    deadline = time.perf_counter() + max_seconds

    def client(c):
        with httpx.Client(timeout=60) as h:
            for j in range(per_client):
                if time.perf_counter() > deadline:
                    return
                q = questions[(c * per_client + j) % len(questions)]
                t0 = time.perf_counter()
                r = h.post(url + "/search", json={"queries": [q], "k": 10})
                ms = (time.perf_counter() - t0) * 1e3
                assert r.status_code == 200
                with lock:
                    done[0] += 1
                    latencies.append(ms)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    return {"clients": clients, "requests": done[0], "seconds": seconds, "qps": done[0] / seconds,
            **percentiles(latencies)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--emb", required=True, help="embedding shards of DATA/passages.tsv (zero-shot MiniLM)")
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--store_rows", type=int, default=1_000_000)
    ap.add_argument("--max_seconds", type=float, default=60.0, help="bound on each concurrency run")
    args = ap.parse_args()

    from dpr_paddle import Retriever
    from dpr_paddle.data import read_qa

    ctx = os.path.join(args.data, "passages.tsv")
    qa = next(os.path.join(args.data, f) for f in sorted(os.listdir(args.data)) if f.endswith(".csv"))
    questions = [x.question for x in read_qa(qa)][: args.questions]
    index_path = os.path.join(ROOT, "runs", "serve_bench.hnsw")

    # ---- API: load once, then one question at a time (warm-up first)
    r = Retriever.load("minilm", index=args.emb, passages=ctx, hnsw=True, index_path=index_path)
    for q in questions[:10]:
        r.search([q], k=10)
    parts = {"encode": [], "search": [], "store": [], "total": []}
    for q in questions:
        t0 = time.perf_counter()
        v = r.encode_questions([q])
        t1 = time.perf_counter()
        index = r.searcher.dense.index
        scores, rows = index.search(v, 10)
        ids = index.ids(rows)
        t2 = time.perf_counter()
        r.store.get(ids[0])
        t3 = time.perf_counter()
        parts["encode"].append((t1 - t0) * 1e3)
        parts["search"].append((t2 - t1) * 1e3)
        parts["store"].append((t3 - t2) * 1e3)
        t0 = time.perf_counter()
        r.search([q], k=10)
        parts["total"].append((time.perf_counter() - t0) * 1e3)
    api = {k: percentiles(v) for k, v in parts.items()}

    # ---- HTTP: a server process on 127.0.0.1
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "dpr_paddle.serve", "--model_name_or_path", "minilm",
                               "--encoded_ctx_file", args.emb, "--ctx_file", ctx, "--hnsw_index",
                               "--index_path", index_path, "--port", str(port)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(url + "/health", server, 120)
        with httpx.Client(timeout=60) as h:
            for q in questions[:10]:
                h.post(url + "/search", json={"queries": [q], "k": 10})
            ms = []
            for q in questions:
                t0 = time.perf_counter()
                h.post(url + "/search", json={"queries": [q], "k": 10})
                ms.append((time.perf_counter() - t0) * 1e3)
        http_single = percentiles(ms)
        concurrency = [http_clients(url, questions, c, max(200 // c, 10), args.max_seconds) for c in (1, 8, 32)]
    finally:
        server.terminate()
        server.wait(timeout=30)

    store = store_at_scale(args.store_rows, 200)

    print(markdown_table(["path", "p50 ms", "p99 ms"],
                         [[f"API {k}", f"{v['p50_ms']:.1f}", f"{v['p99_ms']:.1f}"] for k, v in api.items()]
                         + [["HTTP (one client)", f"{http_single['p50_ms']:.1f}", f"{http_single['p99_ms']:.1f}"],
                            ["HTTP overhead (p50 HTTP - p50 API)",
                             f"{http_single['p50_ms'] - api['total']['p50_ms']:.1f}", ""]]))
    print()
    print(markdown_table(["clients", "requests", "queries/s", "p50 ms", "p99 ms"],
                         [[str(c["clients"]), str(c["requests"]), f"{c['qps']:.1f}", f"{c['p50_ms']:.1f}",
                           f"{c['p99_ms']:.1f}"] for c in concurrency]))
    print()
    print(markdown_table(["store rows", "TSV MB", "SQLite MB", "build s", "get 10 ids p50/p99 ms", "get 100 ids p50/p99 ms"],
                         [[f"{store['rows']:,}", f"{store['tsv_mb']:.0f}", f"{store['sqlite_mb']:.0f}",
                           f"{store['build_s']:.1f}",
                           f"{store['lookup_10']['p50_ms']:.2f} / {store['lookup_10']['p99_ms']:.2f}",
                           f"{store['lookup_100']['p50_ms']:.2f} / {store['lookup_100']['p99_ms']:.2f}"]]))
    save_results(os.path.join(ROOT, "bench", "results", "serve.json"), [],
                 api=api, http_single=http_single, concurrency=concurrency, store=store)


if __name__ == "__main__":
    main()
