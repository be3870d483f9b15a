"""Lucene BM25 against bm25s (docs/benchmarks.md section 13).

quality: squad1_open (en) and DRCD (cjk, cjk+uni, zh), each engine through dense_retriever.py, one run;
         and pyserini's own evaluate_dpr_retrieval over our Lucene results file, against our top-k.
    .venv/bin/python bench/lucene.py quality --work runs/lucene
scale:   N synthetic passages of ~100 words drawn from squad1_open's word frequencies (psgs_w100's passage
         length): Lucene's build (time, disk, peak RSS of the process) and query p50/p99 at 1 and 2 threads;
         bm25s at --bm25s_n beside it.
    .venv/bin/python bench/lucene.py scale --n 1000000 --work runs/lucene
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import subprocess
import sys
import time

from common import markdown_table  # also puts the repo on sys.path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
SQUAD = os.path.join(ROOT, "..", "shared", "data", "squad1_open")
DRCD = os.path.join(ROOT, "..", "shared", "data", "drcd")


def cpu() -> str:
    """The CPU model and its widest vector extensions (every table says where it ran)."""
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        info = f.read()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    ext = [x for x in ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8") if x in flags]
    return f"{model} ({platform.machine()}; {', '.join(ext)}; {os.cpu_count()} cores)"


def retrieve(out, ctx, qa, *flags, qrels=None):
    """dense_retriever.py --bm25 with `flags`; its metrics."""
    cmd = [PY, os.path.join(ROOT, "dense_retriever.py"), "--bm25", "--ctx_file", ctx, "--qa_file", qa, "--out_file",
           out, *map(str, flags)] + (["--qrels", qrels] if qrels else [])
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    with open(out + ".metrics.json", encoding="utf-8") as f:
        return json.load(f)


def quality(work: str) -> None:
    os.makedirs(work, exist_ok=True)
    drcd = os.path.join(work, "drcd")
    if not os.path.exists(os.path.join(drcd, "qrels.txt")):
        subprocess.run([PY, "data/convert_squad.py", "--eval", f"{DRCD}/DRCD_dev.json", "--train",
                        f"{DRCD}/DRCD_test.json", "--output_dir", drcd], check=True, capture_output=True, cwd=ROOT)
    sets = [("squad1_open", f"{SQUAD}/passages.tsv", f"{SQUAD}/qa_eval.csv", None, ["en"]),
            ("DRCD", f"{drcd}/passages.tsv", f"{drcd}/qa.csv", f"{drcd}/qrels.txt", ["cjk", "cjk+uni", "zh"])]
    rows = []
    for name, ctx, qa, qrels, analyzers in sets:
        for analyzer in analyzers:
            for engine in ("bm25s", "lucene"):
                tag = f"{name}_{engine}_{analyzer}"
                t0 = time.perf_counter()
                m = retrieve(os.path.join(work, tag + ".json"), ctx, qa, "--bm25_engine", engine, "--bm25_analyzer",
                             analyzer, "--bm25_index", os.path.join(work, "idx_" + tag), qrels=qrels)
                acc, q = m["top_k_accuracy"], m
                rows.append([name, analyzer, engine, f"k1 {m['bm25']['k1']} b {m['bm25']['b']}",
                             *(f"{acc[k]:.3f}" for k in ("1", "5", "20", "100")),
                             f"{q['mrr@10']:.3f}" if "mrr@10" in q else "–", f"{time.perf_counter() - t0:.0f} s"])
                print(" | ".join(rows[-1]), flush=True)
    print(f"\nCPU: {cpu()}\n")
    print(markdown_table(["set", "analyzer", "engine", "BM25", "top-1", "top-5", "top-20", "top-100", "MRR@10",
                          "run (build + search + report)"], rows))
    # pyserini's own scorer over our Lucene results file (it takes DPR's retrieval JSON)
    ours = os.path.join(work, "squad1_open_lucene_en.json")
    with open(ours, encoding="utf-8") as f:
        results = json.load(f)
    converted = {str(i): {"question": r["question"], "answers": r["answers"],
                          # no has_answer: pyserini then matches the answers in the text itself
                          "contexts": [{"docid": c["id"], "score": float(c["score"]),
                                        "text": f"{c['title']}\n{c['text']}"} for c in r["ctxs"]]}
                 for i, r in enumerate(results)}
    conv = os.path.join(work, "pyserini_input.json")
    with open(conv, "w", encoding="utf-8") as f:
        json.dump(converted, f)
    out = subprocess.run([PY, "-m", "pyserini.eval.evaluate_dpr_retrieval", "--retrieval", conv, "--topk", "1", "5",
                          "20", "100"], check=True, capture_output=True, text=True, cwd=ROOT).stdout
    with open(ours + ".metrics.json", encoding="utf-8") as f:
        acc = json.load(f)["top_k_accuracy"]
    print("\npyserini evaluate_dpr_retrieval (its own has_answer) against ours:")
    for line in out.splitlines():
        if line.startswith("Top"):
            k, value = line.split()[0][3:], float(line.split()[-1])
            print(f"top-{k}: pyserini {value:.4f}, ours {acc[k]:.4f}, difference {abs(value - acc[k]):.4f}")


def synthetic(path: str, n: int) -> None:
    """`n` passages of ~100 words sampled by squad1_open's word frequencies (seeded), as a DPR TSV."""
    import numpy as np

    counts = collections.Counter()
    with open(f"{SQUAD}/passages.tsv", encoding="utf-8") as f:
        next(f)
        for line in f:
            counts.update(line.split("\t")[1].lower().split())
    counts = {w: c for w, c in counts.items() if '"' not in w}  # a quote would open a quoted TSV field
    words = np.array(list(counts))
    p = np.array(list(counts.values()), dtype=np.float64)
    p /= p.sum()
    rng = np.random.default_rng(0)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write("id\ttext\ttitle\n")
        for start in range(0, n, 10_000):
            m = min(10_000, n - start)
            drawn = rng.choice(len(words), size=(m, 101), p=p)
            f.write("".join(f"{start + i + 1}\t{' '.join(words[row[1:]])}\t{words[row[0]]}\n"
                            for i, row in enumerate(drawn)))
    os.replace(path + ".tmp", path)


def measured(cmd) -> tuple:
    """(seconds, peak RSS in GB) of a child process."""
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")  # a fresh parent: this child's peak only
    t0 = time.perf_counter()
    out = subprocess.run([PY, "-c", probe, *cmd], check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return time.perf_counter() - t0, int(out.split()[-1]) / 1024 ** 2


def latency(index_dir: str, ctx: str, threads: int, queries) -> dict:
    """p50/p99 of one question at a time, and questions/s of the batch, in a child with `threads`."""
    code = f"""
import json, sys, time, numpy as np
from dpr_paddle.retrieval.lucene import LuceneIndex
idx = LuceneIndex.load({index_dir!r}, threads={threads})
qs = json.load(sys.stdin)
idx.search(qs[:20], 100)
one = []
for q in qs:
    t = time.perf_counter(); idx.search([q], 100); one.append(time.perf_counter() - t)
t = time.perf_counter(); idx.search(qs, 100); batch = time.perf_counter() - t
import resource
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
print(json.dumps({{"p50_ms": float(np.percentile(one, 50) * 1e3), "p99_ms": float(np.percentile(one, 99) * 1e3),
                  "batch_qps": len(qs) / batch, "rss_gb": rss}}))
"""
    out = subprocess.run([PY, "-c", code], input=json.dumps(queries), check=True, capture_output=True, text=True,
                         cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def du(path: str) -> float:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) / 1024 ** 3


def scale(work: str, n: int, bm25s_n: int) -> None:
    import csv

    os.makedirs(work, exist_ok=True)
    ctx = os.path.join(work, f"synthetic_{n}.tsv")
    if not os.path.exists(ctx):
        synthetic(ctx, n)
    with open(f"{SQUAD}/qa_eval.csv", encoding="utf-8") as f:
        queries = [row[0] for row in csv.reader(f, delimiter="\t")][:500]
    idx = os.path.join(work, f"lucene_{n}")
    rows = []
    if not os.path.exists(idx):
        secs, rss = measured([PY, "-m", "dpr_paddle.bm25_index", "--ctx_file", ctx, "--bm25_engine", "lucene",
                              "--bm25_analyzer", "en", "--bm25_index", idx, "--bm25_threads", "2"])
        rows.append(["lucene build", f"{n:,}", f"{secs / 60:.1f} min ({n / secs:,.0f} psg/s)", f"{du(idx):.2f} GB",
                     f"{rss:.2f} GB", "–"])
        print(rows[-1], flush=True)
    for threads in (1, 2):
        lat = latency(idx, ctx, threads, queries)
        rows.append([f"lucene search, {threads} thread(s), k 100", f"{n:,}", "–", "–", f"{lat['rss_gb']:.2f} GB",
                     f"p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms; batch {lat['batch_qps']:.0f} q/s"])
        print(rows[-1], flush=True)
    if not bm25s_n:
        print(f"\nCPU: {cpu()}\n")
        print(markdown_table(["what", "passages", "time", "disk", "peak RSS", "query"], rows))
        return
    small = os.path.join(work, f"synthetic_{bm25s_n}.tsv")
    if not os.path.exists(small):
        synthetic(small, bm25s_n)
    bidx = os.path.join(work, f"bm25s_{bm25s_n}")
    secs, rss = measured([PY, "-m", "dpr_paddle.bm25_index", "--ctx_file", small, "--bm25_engine", "bm25s",
                          "--bm25_analyzer", "en", "--bm25_index", bidx])
    rows.append(["bm25s build", f"{bm25s_n:,}", f"{secs / 60:.1f} min ({bm25s_n / secs:,.0f} psg/s)",
                 f"{du(bidx):.2f} GB", f"{rss:.2f} GB", "–"])
    print(f"\nCPU: {cpu()}\n")
    print(markdown_table(["what", "passages", "time", "disk", "peak RSS", "query"], rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("quality", "scale"))
    ap.add_argument("--work", default="runs/lucene")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--bm25s_n", type=int, default=200_000, help="0: no bm25s row")
    args = ap.parse_args()
    print(f"CPU: {cpu()}", flush=True)
    quality(args.work) if args.mode == "quality" else scale(args.work, args.n, args.bm25s_n)


if __name__ == "__main__":
    main()
