"""hnswlib (DPR's inner-product transform) against exact search: build, memory, speed, recall.

    .venv/bin/python bench/index.py --sizes 10000 100000 --kinds clustered random --ms 32 64 --efs 100 200 400 800

Vectors are dim --dim float32: isotropic Gaussian ("random", the worst case for any graph index),
or points around 200 topic centres with norms spread 0.5-2x ("clustered") or 0.9-1.1x ("encoder-like",
the spread measured on MiniLM [CLS] vectors).
Queries come from the same distribution. Recall@k is the fraction of exact search's top k that
hnswlib returns. Exact search is our blocked matrix product (ExactIndex). Prints a markdown
table and writes JSON.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from common import ROOT, markdown_table, save_results  # also puts the repo on sys.path


def vectors(kind: str, n: int, dim: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.standard_normal((n, dim)).astype(np.float32)
    centers = np.random.default_rng(1234).standard_normal((200, dim)).astype(np.float32)
    x = centers[rng.integers(0, 200, n)] + rng.standard_normal((n, dim)).astype(np.float32) * 0.7
    # "clustered": norms spread 4x; "encoder-like": 1.22x, as measured on MiniLM [CLS] vectors (1.15-1.38)
    low, high = (0.5, 2.0) if kind == "clustered" else (0.9, 1.1)
    return (x * rng.uniform(low, high, (n, 1))).astype(np.float32)


def main() -> None:
    from dpr_paddle.index import ExactIndex, HNSWIndex, Shard, recall_at_k

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--kinds", nargs="+", default=["clustered", "random"])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--ms", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--ef_construction", type=int, default=200)
    ap.add_argument("--efs", type=int, nargs="+", default=[100, 200, 400, 800])
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "index.json"))
    args = ap.parse_args()

    rows = []
    for kind in args.kinds:
        for n in args.sizes:
            data = vectors(kind, n, args.dim, 0)
            queries = vectors(kind, args.queries, args.dim, 1)
            exact = ExactIndex([Shard("bench", {"dim": args.dim}, data, [str(i) for i in range(n)])])
            t = time.perf_counter()
            _, exact_rows = exact.search(queries, args.k)
            exact_qps = len(queries) / (time.perf_counter() - t)
            for m in args.ms:
                t = time.perf_counter()
                hnsw = HNSWIndex(exact, m=m, ef_construction=args.ef_construction).build()
                build_s = time.perf_counter() - t
                # the graph's size: (dim + 1) floats, 2M level-0 links and upper levels per element
                grew_mb = hnsw.index.index_file_size() / 2**20
                for ef in args.efs:
                    t = time.perf_counter()
                    _, rows_h = hnsw.search(queries, args.k, ef=ef)
                    qps = len(queries) / (time.perf_counter() - t)
                    rec = recall_at_k(rows_h, exact_rows, ks=(1, 20, 100))
                    row = {"kind": kind, "n": n, "M": m, "ef_construction": args.ef_construction, "ef": max(ef, args.k),
                           "build_s": build_s, "index_mb": grew_mb, "qps": qps, "exact_qps": exact_qps,
                           "recall@1": rec[1], "recall@20": rec[20], "recall@100": rec[100]}
                    rows.append(row)
                    print(row, file=sys.stderr)
                del hnsw
    print(markdown_table(
        ["vectors", "N", "M", "ef", "build (s)", "index size (MB)", "queries/s", "exact queries/s", "speed-up",
         "recall@1", "recall@20", "recall@100"],
        [[r["kind"], f"{r['n']:,}", str(r["M"]), str(r["ef"]), f"{r['build_s']:.1f}", f"{r['index_mb']:.0f}",
          f"{r['qps']:.0f}", f"{r['exact_qps']:.0f}", f"{r['qps'] / r['exact_qps']:.1f}x", f"{r['recall@1']:.3f}",
          f"{r['recall@20']:.3f}", f"{r['recall@100']:.4f}"] for r in rows]))
    save_results(args.out, rows)


if __name__ == "__main__":
    main()
