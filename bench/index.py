"""hnswlib against exact search: build, memory, speed, recall.

    .venv/bin/python bench/index.py --sizes 10000 100000 --kinds clustered random --spaces l2 --ms 64 --efs 200 400 800
    .venv/bin/python bench/index.py --sizes 1000000 --kinds real-anchored --real_data ../shared/data/squad1_open \
        --spaces ip l2 --ms 32 --ef_constructions 200 --efs 200 400 800 1600
    .venv/bin/python bench/index.py --sizes 100000 1000000 --kinds real-anchored --real_data ../shared/data/squad1_open \
        --engines hnsw hnsw_per_shard milvus_hnsw milvus_ivf_sq8 --ms 32 --efs 400 800 --nprobes 16 64 256

Vectors are dim --dim float32: isotropic Gaussian ("random", the worst case for any graph index),
or points around 200 topic centres with norms spread 0.5-2x ("clustered") or 0.9-1.1x ("encoder-like",
the spread measured on MiniLM [CLS] vectors); queries come from the same distribution.
"real-anchored" starts from real MiniLM [CLS] vectors of --real_data's passages: each vector is
a real passage vector plus Gaussian noise with the real vectors' covariance (x --noise), rescaled
to its anchor's norm; the queries are the real question vectors of its qa_eval.csv, so the
question/passage asymmetry that DPR's transform meets in practice is kept.
Recall@k is the fraction of exact search's top k that hnswlib returns. Exact search is our
blocked matrix product (ExactIndex). Each index is warmed up with one search before timing,
and each search is timed --repeats times, keeping the fastest (ANN-benchmarks' rule).
Prints a markdown table and writes JSON; --plot draws recall@100 against queries/s:
    .venv/bin/python bench/index.py --sizes 1000000 --kinds real-anchored --real_data ../shared/data/squad1_open \
        --spaces ip --graphs 32:200 48:400 64:400 --efs 400 800 1200 1600 \
        --out bench/results/index_1m_curve.json --plot docs/hnsw_1m_recall_qps.png
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
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
    from dpr_paddle.encoding.writer import encode_passages
    from dpr_paddle.encoding.towers import load_tower
    from dpr_paddle.modeling.model import CONTEXT, QUESTION
    from dpr_paddle.retrieval.dense import encode_questions

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


def write_shards(directory: str, data, num_shards: int) -> str:
    """`data` as `num_shards` shard directories in the real format (what the engines read)."""
    import json
    import shutil

    import numpy as np

    from dpr_paddle.index.shards import shard_path, shard_range

    shutil.rmtree(directory, ignore_errors=True)
    for i in range(num_shards):
        a, b = shard_range(len(data), i, num_shards)
        d = shard_path(os.path.join(directory, "emb"), i)
        os.makedirs(d)
        np.save(os.path.join(d, "vectors.npy"), data[a:b])
        with open(os.path.join(d, "ids.txt"), "w") as f:
            f.write("".join(f"{j}\n" for j in range(a, b)))
        meta = {"dim": int(data.shape[1]), "count": b - a, "shard_id": i, "num_shards": num_shards,
                "model_fingerprint": f"bench-{len(data)}", "start": a, "end": b}
        with open(os.path.join(d, "meta.json"), "w") as f:
            json.dump(meta, f)
    return os.path.join(directory, "emb")


def _du_mb(paths) -> float:
    total = 0
    for p in paths:
        for root, _, files in os.walk(p) if os.path.isdir(p) else [(os.path.dirname(p), [], [os.path.basename(p)])]:
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files if os.path.exists(os.path.join(root, f)))
    return total / 2**20


def _rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def engine_child(job: dict) -> list:
    """Build one engine in a fresh process and measure it: build time, peak RSS, size, speed, recall."""
    import numpy as np

    from dpr_paddle.index.exact import ExactIndex, recall_at_k
    from dpr_paddle.index.factory import IndexSpec, open_index
    from dpr_paddle.index.shards import load_shards

    queries, exact_rows = np.load(job["queries"]), np.load(job["exact_rows"])
    exact = ExactIndex(load_shards(job["pattern"]))
    base = _rss_mb("VmRSS")  # MB, before the engine
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to now: ru_maxrss would carry the parent's peak across exec
    # VmHWM counts the memory-mapped shard pages an engine touched, which the kernel can drop; the
    # engine's own memory is the anonymous part, whose peak is sampled here
    anon = {"base": _rss_mb("RssAnon"), "peak": 0.0}
    stop = threading.Event()

    def sample():
        while not stop.wait(0.1):
            anon["peak"] = max(anon["peak"], _rss_mb("RssAnon"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    spec = IndexSpec(force=True, **job["spec"])
    t = time.perf_counter()
    index = open_index(spec, exact)
    build_s = time.perf_counter() - t
    rows = []
    for knob in job["knobs"]:
        if spec.kind == "milvus" and spec.milvus_index_type != "HNSW":
            index.nprobe, ef = knob, 0
        else:
            ef = knob
        index.search(queries[:50], job["k"], ef=ef)  # warm-up
        seconds, (_, got) = best_time(lambda e=ef: index.search(queries, job["k"], ef=e), job["repeats"])
        qps = len(queries) / seconds
        rec = recall_at_k(got, exact_rows, ks=(1, 20, 100))
        rows.append({"engine": job["label"], "knob": knob, "build_s": build_s, "qps": qps,
                     "recall@1": rec[1], "recall@20": rec[20], "recall@100": rec[100]})
    peak = _rss_mb("VmHWM")
    stop.set()
    sampler.join()
    size = _du_mb(job["size_paths"])
    for r in rows:
        r.update({"peak_rss_mb": peak, "base_rss_mb": base, "index_mb": size,
                  "peak_anon_mb": max(anon["peak"], _rss_mb("RssAnon")), "base_anon_mb": anon["base"]})
    return rows


ENGINES = {  # label -> (IndexSpec fields, knob name)
    "hnsw": ({"kind": "hnsw"}, "ef"),
    "hnsw_per_shard": ({"kind": "hnsw_per_shard", "resident": False}, "ef"),  # one graph in memory at a time
    "milvus_hnsw": ({"kind": "milvus", "milvus_index_type": "HNSW"}, "ef"),
    "milvus_ivf_sq8": ({"kind": "milvus", "milvus_index_type": "IVF_SQ8"}, "nprobe"),
    "milvus_ivf_flat": ({"kind": "milvus", "milvus_index_type": "IVF_FLAT"}, "nprobe"),
}


def engines(args, kind: str, n: int, data, queries, exact_rows, exact_qps: float, done: list) -> list:
    """--engines: each engine over the same vectors written as --num_shards shards, in its own process."""
    import json
    import subprocess

    import numpy as np

    work = os.path.join(args.work_dir, f"{kind}_{n}")
    pattern = write_shards(work, data, args.num_shards)
    np.save(os.path.join(work, "queries.npy"), queries)
    np.save(os.path.join(work, "exact_rows.npy"), exact_rows)
    out = []
    for label in args.engines:
        fields, knob = ENGINES[label]
        spec = {**fields, "hnsw_m": args.ms[0], "ef_construction": args.ef_constructions[0], "space": "ip"}
        sizes = {"hnsw": [os.path.join(work, "one.hnsw")],
                 "hnsw_per_shard": [os.path.join(work, f"emb_{i}", f) for i in range(args.num_shards)
                                    for f in (f"hnsw_M{spec['hnsw_m']}_efc{spec['ef_construction']}_ip.bin",)]}
        if label == "hnsw":
            spec["index_path"] = sizes["hnsw"][0]
        if fields["kind"] == "milvus":
            spec["milvus_uri"] = os.path.join(work, f"{label}.db")
            sizes[label] = [spec["milvus_uri"]]
        job = {"label": label, "pattern": pattern, "queries": os.path.join(work, "queries.npy"),
               "exact_rows": os.path.join(work, "exact_rows.npy"), "spec": spec, "k": args.k, "repeats": args.repeats,
               "knobs": args.nprobes if knob == "nprobe" else args.efs, "size_paths": sizes.get(label, [])}
        job_file = os.path.join(work, f"{label}.job.json")
        with open(job_file, "w") as f:
            json.dump(job, f)
        subprocess.run([sys.executable, os.path.abspath(__file__), "--child", job_file], check=True)
        with open(job_file + ".out") as f:
            rows = json.load(f)
        for r in rows:
            r.update({"kind": kind, "n": n, "shards": args.num_shards if label == "hnsw_per_shard" else 1,
                      "knob_name": knob, "exact_qps": exact_qps, "M": spec["hnsw_m"],
                      "ef_construction": spec["ef_construction"], "params": job["spec"]})
            print(r, file=sys.stderr)
        out += rows
        save_results(args.out, done + out)  # after every engine: a later failure loses nothing measured
    return out


def print_engines(rows) -> None:
    print(markdown_table(
        ["engine", "vectors", "N", "shards", "build (s)", "peak RSS (MB)", "peak anon. (MB)", "RSS before (MB)",
         "on disk (MB)",
         "knob", "queries/s", "speed-up", "recall@1", "recall@20", "recall@100"],
        [[r["engine"], r["kind"], f"{r['n']:,}", str(r["shards"]), f"{r['build_s']:.1f}", f"{r['peak_rss_mb']:.0f}",
          f"{r['peak_anon_mb']:.0f}",
          f"{r['base_rss_mb']:.0f}", f"{r['index_mb']:.0f}", f"{r['knob_name']} {r['knob']}", f"{r['qps']:.0f}",
          f"{r['qps'] / r['exact_qps']:.1f}x", f"{r['recall@1']:.3f}", f"{r['recall@20']:.3f}",
          f"{r['recall@100']:.4f}"] for r in rows]))


def main() -> None:
    if sys.argv[1:2] == ["--child"]:  # one engine, in a fresh process (its own peak RSS)
        import json

        with open(sys.argv[2]) as f:
            rows = engine_child(json.load(f))
        with open(sys.argv[2] + ".out", "w") as f:
            json.dump(rows, f)
        return
    from dpr_paddle.index.hnsw import HNSWIndex
    from dpr_paddle.index.exact import ExactIndex, recall_at_k
    from dpr_paddle.index.shards import Shard

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
    ap.add_argument("--graphs", nargs="+", metavar="M:EFC", help="graphs to build, e.g. 32:200 48:400 (instead of "
                    "every --ms x --ef_constructions)")
    ap.add_argument("--repeats", type=int, default=3, help="time each search this many times; keep the fastest")
    ap.add_argument("--plot", help="also draw recall@100 against queries/s to this PNG")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--engines", nargs="+", choices=sorted(ENGINES),
                    help="instead of the hnswlib sweep: these engines, each built in its own process from the "
                         "vectors written as shards (peak RSS, size on disk, speed, recall)")
    ap.add_argument("--num_shards", type=int, default=4, help="--engines: shards the vectors are written as")
    ap.add_argument("--nprobes", type=int, nargs="+", default=[16, 64, 256], help="--engines: IVF cells searched")
    ap.add_argument("--work_dir", default=os.path.join(ROOT, "runs", "bench_index"))
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
            exact_s, (_, exact_rows) = best_time(lambda: exact.search(queries, args.k), args.repeats)
            exact_qps = len(queries) / exact_s
            if args.engines:
                rows += engines(args, kind, n, data, queries, exact_rows, exact_qps, rows)
                continue
            graphs = ([tuple(int(v) for v in g.split(":")) for g in args.graphs] if args.graphs
                      else [(m, efc) for m in args.ms for efc in args.ef_constructions])
            for space, m, efc in [(sp, m, efc) for sp in args.spaces for m, efc in graphs]:
                t = time.perf_counter()
                hnsw = HNSWIndex(exact, m=m, ef_construction=efc, space=space).build()
                build_s = time.perf_counter() - t
                # the graph's size: (dim + 1) floats, 2M level-0 links and upper levels per element
                grew_mb = hnsw.index.index_file_size() / 2**20
                hnsw.search(queries[:50], args.k, ef=args.efs[0])  # warm-up: first searches are slower
                for ef in args.efs:
                    seconds, (_, rows_h) = best_time(lambda h=hnsw, e=ef: h.search(queries, args.k, ef=e), args.repeats)
                    qps = len(queries) / seconds
                    rec = recall_at_k(rows_h, exact_rows, ks=(1, 20, 100))
                    row = {"kind": kind, "n": n, "space": hnsw.space, "M": m, "ef_construction": efc, "ef": max(ef, args.k),
                           "build_s": build_s, "index_mb": grew_mb, "qps": qps, "exact_qps": exact_qps,
                           "recall@1": rec[1], "recall@20": rec[20], "recall@100": rec[100]}
                    rows.append(row)
                    print(row, file=sys.stderr)
                del hnsw
    if args.engines:
        print_engines(rows)
        save_results(args.out, rows)
        return
    print(markdown_table(
        ["vectors", "N", "space", "M", "efc", "ef", "build (s)", "index size (MB)", "queries/s", "exact queries/s", "speed-up",
         "recall@1", "recall@20", "recall@100"],
        [[r["kind"], f"{r['n']:,}", r["space"], str(r["M"]), str(r["ef_construction"]), str(r["ef"]), f"{r['build_s']:.1f}", f"{r['index_mb']:.0f}",
          f"{r['qps']:.0f}", f"{r['exact_qps']:.0f}", f"{r['qps'] / r['exact_qps']:.1f}x", f"{r['recall@1']:.3f}",
          f"{r['recall@20']:.3f}", f"{r['recall@100']:.4f}"] for r in rows]))
    save_results(args.out, rows)
    if args.plot:
        plot_recall_qps(rows, args.plot, args.queries)


def best_time(run, repeats: int):
    """(fastest of `repeats` wall times, the first run's result): ANN-benchmarks' best-of timing,
    which keeps a shared machine's hiccups out of a queries/s figure."""
    result, best = None, float("inf")
    for i in range(repeats):
        t = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - t)
        result = out if i == 0 else result
    return best, result


def plot_recall_qps(rows, path: str, n_queries: int) -> None:
    """recall@100 against queries/s, one line per (space, M, efc), exact search as a dashed
    vertical line, in the style of ANN-benchmarks; written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in sorted({(r["space"], r["M"], r["ef_construction"]) for r in rows}):
        line = sorted((r for r in rows if (r["space"], r["M"], r["ef_construction"]) == key), key=lambda r: r["ef"])
        ax.plot([r["recall@100"] for r in line], [r["qps"] for r in line], marker="o",
                label=f"M {key[1]}, efc {key[2]} ({key[0]})")
        for r in line:
            ax.annotate(f"ef {r['ef']}", (r["recall@100"], r["qps"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    exact = max(r["exact_qps"] for r in rows)
    ax.axhline(exact, color="grey", linestyle="--", label=f"exact search ({exact:.0f} q/s)")
    ax.axhline(10 * exact, color="grey", linestyle=":", label="10x exact")
    ax.axvline(0.99, color="red", linestyle=":", linewidth=1, label="recall 0.99")
    ax.set_yscale("log")
    ax.set_xlabel("recall@100 (against exact search)")
    ax.set_ylabel("queries/s (log; higher is better)")
    n = rows[0]["n"]
    ax.set_title(f"hnswlib at {n:,} {rows[0]['kind']} vectors, {os.cpu_count()} cores, {n_queries} questions, k 100")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
