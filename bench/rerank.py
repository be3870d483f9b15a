"""Reranking speed, side by side in one run: our Reranker.score (ONNX Runtime, the CPU default; and
Paddle Inference) against sentence-transformers' CrossEncoder.predict on the same backbone
(all-MiniLM-L6-v2), max length and batch, on the same (question, passage) pairs; then the HTTP p50
of one question reranked at depth 20 (a real server on 127.0.0.1).

    .venv/bin/python bench/rerank.py --data ../shared/data/squad1_open --rerank_model runs/rerank/minilm_g4/latest \\
        --peer_python .venv-peer/bin/python --emb 'runs/rerank/emb_zs_*'

Pairs: each of the first --questions eval questions with --depth passages of the corpus (every
question's BM25 top --depth), the lists a reranker reads in a real run.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import ROOT, markdown_table, run_peer, save_results  # also puts the repo on sys.path


def cpu_line() -> str:
    """The CPU model and its widest vector extensions, for the table's caption."""
    model, flags = "unknown CPU", set()
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    ext = [x for x in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if x in flags]
    return f"{model} ({', '.join(ext) or 'no AVX2'}), {os.cpu_count()} cores"


def make_pairs(data: str, questions: int, depth: int):
    """[[question, title, text]]: each question's BM25 top `depth` (our BM25, bm25s)."""
    from dpr_paddle.retrieval.passage_store import fetch_passages
    from dpr_paddle.retrieval.searcher import Searcher, SearchSpec

    ctx = os.path.join(data, "passages.tsv")
    with open(os.path.join(data, "qa_eval.csv"), encoding="utf-8") as f:
        qs = [row[0] for row in csv.reader(f, delimiter="\t")][:questions]
    _, ids = Searcher.load(SearchSpec(mode="bm25"), ctx).search(qs, depth)
    texts = fetch_passages(ctx, {i for row in ids for i in row})
    return [[q, texts[i][1], texts[i][0]] for q, row in zip(qs, ids) for i in row]


def ours(model: str, pairs, backend: str, batch: int) -> dict:
    from dpr_paddle.retrieval.rerank import Reranker

    r = Reranker.load(model, backend, batch)
    qs, ps = [p[0] for p in pairs], [(p[1], p[2]) for p in pairs]
    r.score(qs[:batch], ps[:batch])  # warm-up
    t = time.perf_counter()
    r.score(qs, ps)
    seconds = time.perf_counter() - t
    return {"pairs_per_s": len(pairs) / seconds, "seconds": seconds, "max_length": r.info["max_length"]}


def http_p50(args, questions) -> dict:
    """p50/p90 ms of POST /search (one question, mode rerank, k 10) on a hybrid server reranking its top 20."""
    import httpx

    from dpr_paddle.common.net import free_port, wait_healthy

    port = free_port()
    cmd = [sys.executable, "-m", "dpr_paddle.serve", "--port", str(port), "--hybrid", "--model_name_or_path", "minilm",
           "--encoded_ctx_file", args.emb, "--ctx_file", os.path.join(args.data, "passages.tsv"),
           "--rerank_model", args.rerank_model, "--rerank_depth", "20"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url + "/health", proc, timeout=600)
        times = []
        with httpx.Client(timeout=60) as client:
            for i, q in enumerate(questions):
                t = time.perf_counter()
                r = client.post(url + "/search", json={"queries": [q], "k": 10, "mode": "rerank"})
                r.raise_for_status()
                if i >= 3:  # the first requests warm the sessions up
                    times.append((time.perf_counter() - t) * 1e3)
        times.sort()
        return {"p50_ms": statistics.median(times), "p90_ms": times[int(0.9 * (len(times) - 1))],
                "requests": len(times)}
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--rerank_model", required=True)
    ap.add_argument("--peer_python")
    ap.add_argument("--emb", help="zero-shot shards of the corpus, for the HTTP measurement (hybrid first stage)")
    ap.add_argument("--questions", type=int, default=32)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "rerank.json"))
    args = ap.parse_args()

    from dpr_paddle.common.runtime import prepare_process

    prepare_process(True)
    print(f"CPU: {cpu_line()}")
    pairs = make_pairs(args.data, args.questions, args.depth)
    rows = []
    for backend in ("onnxruntime", "inference"):
        r = ours(args.rerank_model, pairs, backend, args.batch_size)
        rows.append({"system": f"dpr_paddle Reranker ({backend})", **r})
    if args.peer_python:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(pairs, f)
        peer = run_peer(args.peer_python, "rerank", pairs=f.name, max_length=rows[0]["max_length"],
                        batch_size=args.batch_size, threads=os.cpu_count())
        os.remove(f.name)
        rows.append({"system": f"CrossEncoder.predict ({peer['peer']})", **peer})
    base = rows[-1]["pairs_per_s"] if args.peer_python else None
    print(markdown_table(["system", "pairs/s", "ratio to the peer"],
                         [[r["system"], f"{r['pairs_per_s']:.1f}", f"{r['pairs_per_s'] / base:.2f}x" if base else "-"]
                          for r in rows]))
    http = None
    if args.emb:
        http = http_p50(args, [p[0] for p in pairs[:: args.depth]])
        print(f"HTTP, one question, hybrid top 20 reranked, k 10: p50 {http['p50_ms']:.0f} ms, "
              f"p90 {http['p90_ms']:.0f} ms ({http['requests']} requests)")
    save_results(args.out, rows, cpu=cpu_line(), pairs=len(pairs), http=http)


if __name__ == "__main__":
    main()
