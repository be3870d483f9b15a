"""hnswlib against exact search: build, memory, speed, recall.

    .venv/bin/python bench/index.py --sizes 10000 100000 --kinds clustered random --spaces l2 --ms 64 --efs 200 400 800
    .venv/bin/python bench/index.py --sizes 1000000 --kinds real-anchored --real_data ../shared/data/squad1_open \
        --spaces ip l2 --ms 32 --ef_constructions 200 --efs 200 400 800 1600

Vectors are dim --dim float32: isotropic Gaussian ("random", the worst case for any graph index),
or points around 200 topic centres with norms spread 0.5-2x ("clustered") or 0.9-1.1x ("encoder-like",
the spread measured on MiniLM [CLS] vectors); queries come from the same distribution.
"real-anchored" starts from real MiniLM [CLS] vectors of --real_data's passages: each vector is
a real passage vector plus Gaussian noise with the real vectors' covariance (x --noise), rescaled
to its anchor's norm; the queries are the real question vectors of its qa_eval.csv, so the
question/passage asymmetry that DPR's transform meets in practice is kept.
Recall@k is the fraction of exact search's top k that hnswlib returns. Exact search is our
blocked matrix product (ExactIndex). Each index is warmed up with one search before timing.
Prints a markdown table and writes JSON.
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


def real_vectors(data_dir: str, limit_questions: int):
    """MiniLM [CLS] vectors ([P, D] passages, [Q, D] questions) of a DPR-format dataset directory."""
    import itertools

    from dpr_paddle.data import iter_passages, read_qa
    from dpr_paddle.embeddings import encode_passages
    from dpr_paddle.inference import load_tower
    from dpr_paddle.model import CONTEXT, QUESTION
    from dpr_paddle.retriever import encode_questions

    # [CLS] + dot, as the tables in docs/benchmarks.md §3 were measured
    opts = dict(model_name_or_path="minilm", max_passage_length=256, pooling="cls", similarity="dot")
    passages = list(iter_passages(os.path.join(data_dir, "passages.tsv")))
    encode, tensorizer, _ = load_tower(CONTEXT, **opts)
    p_reps = encode_passages(encode, tensorizer, passages, 32)
    questions = [qa.question for qa in itertools.islice(read_qa(os.path.join(data_dir, "qa_eval.csv")), limit_questions)]
    encode, tensorizer, _ = load_tower(QUESTION, **opts)
    return p_reps, encode_questions(encode, tensorizer, questions, 64)


def real_anchored(anchors, n: int, seed: int, noise: float):
    """n vectors: random real anchors plus noise with the anchors' covariance, at the anchor's norm."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centred = anchors - anchors.mean(axis=0)
    _, sing, vt = np.linalg.svd(centred, full_matrices=False)
    scale = (sing / np.sqrt(len(anchors)))[:, None] * vt  # z @ scale ~ N(0, covariance of the anchors)
    out = np.empty((n, anchors.shape[1]), dtype=np.float32)
    for lo in range(0, n, 100_000):
        idx = rng.integers(0, len(anchors), min(100_000, n - lo))
        x = anchors[idx] + noise * (rng.standard_normal((len(idx), len(sing))).astype(np.float32) @ scale)
        out[lo : lo + len(idx)] = x * (np.linalg.norm(anchors[idx], axis=1) / np.linalg.norm(x, axis=1))[:, None]
    return out


def main() -> None:
    from dpr_paddle.index import ExactIndex, HNSWIndex, Shard, recall_at_k

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--kinds", nargs="+", default=["clustered", "random"])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--ms", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--ef_constructions", type=int, nargs="+", default=[200])
    ap.add_argument("--spaces", nargs="+", default=["auto"], choices=["auto", "l2", "ip"],
                    help="l2: DPR's transform; ip: hnswlib's inner-product space; auto: by norm spread")
    ap.add_argument("--real_data", help="DPR-format dataset dir (passages.tsv, qa_eval.csv) for real-anchored")
    ap.add_argument("--noise", type=float, default=0.5, help="real-anchored: noise scale, in units of the real spread")
    ap.add_argument("--efs", type=int, nargs="+", default=[100, 200, 400, 800])
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "index.json"))
    args = ap.parse_args()

    rows = []
    real = real_vectors(args.real_data, args.queries) if "real-anchored" in args.kinds else None
    for kind in args.kinds:
        for n in args.sizes:
            if kind == "real-anchored":
                data, queries = real_anchored(real[0], n, 0, args.noise), real[1]
            else:
                data, queries = vectors(kind, n, args.dim, 0), vectors(kind, args.queries, args.dim, 1)
            exact = ExactIndex([Shard("bench", {"dim": args.dim}, data, [str(i) for i in range(n)])])
            exact.search(queries[:50], args.k)  # warm-up, as every hnsw index gets
            t = time.perf_counter()
            _, exact_rows = exact.search(queries, args.k)
            exact_qps = len(queries) / (time.perf_counter() - t)
            for space, m, efc in [(sp, m, efc) for sp in args.spaces for m in args.ms for efc in args.ef_constructions]:
                t = time.perf_counter()
                hnsw = HNSWIndex(exact, m=m, ef_construction=efc, space=space).build()
                build_s = time.perf_counter() - t
                # the graph's size: (dim + 1) floats, 2M level-0 links and upper levels per element
                grew_mb = hnsw.index.index_file_size() / 2**20
                hnsw.search(queries[:50], args.k, ef=args.efs[0])  # warm-up: first searches are slower
                for ef in args.efs:
                    t = time.perf_counter()
                    _, rows_h = hnsw.search(queries, args.k, ef=ef)
                    qps = len(queries) / (time.perf_counter() - t)
                    rec = recall_at_k(rows_h, exact_rows, ks=(1, 20, 100))
                    row = {"kind": kind, "n": n, "space": hnsw.space, "M": m, "ef_construction": efc, "ef": max(ef, args.k),
                           "build_s": build_s, "index_mb": grew_mb, "qps": qps, "exact_qps": exact_qps,
                           "recall@1": rec[1], "recall@20": rec[20], "recall@100": rec[100]}
                    rows.append(row)
                    print(row, file=sys.stderr)
                del hnsw
    print(markdown_table(
        ["vectors", "N", "space", "M", "efc", "ef", "build (s)", "index size (MB)", "queries/s", "exact queries/s", "speed-up",
         "recall@1", "recall@20", "recall@100"],
        [[r["kind"], f"{r['n']:,}", r["space"], str(r["M"]), str(r["ef_construction"]), str(r["ef"]), f"{r['build_s']:.1f}", f"{r['index_mb']:.0f}",
          f"{r['qps']:.0f}", f"{r['exact_qps']:.0f}", f"{r['qps'] / r['exact_qps']:.1f}x", f"{r['recall@1']:.3f}",
          f"{r['recall@20']:.3f}", f"{r['recall@100']:.4f}"] for r in rows]))
    save_results(args.out, rows)


if __name__ == "__main__":
    main()
