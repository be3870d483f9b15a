"""Reranking speed, side by side in one run: our Reranker.score (ONNX Runtime and Paddle Inference in
float32; with --bf16, Paddle Inference in bfloat16) against sentence-transformers' CrossEncoder.predict on
the same backbone (all-MiniLM-L6-v2), max length and batch, on the same (question, passage) pairs (with
--bf16 also under torch's bfloat16 autocast, like against like); then the HTTP p50 of one question
reranked at depth 20 (a real server on 127.0.0.1), in float32 and, with --bf16, in bfloat16. --int8 adds ONNX
Runtime with int8 weights (the peer's CrossEncoder has no int8 path: compared with its float32).

    .venv/bin/python bench/rerank.py --data ../shared/data/squad1_open --rerank_model runs/rerank/minilm_g4/latest \\
        --peer_python .venv-peer/bin/python --emb 'runs/rerank/emb_zs_*' --bf16

A lower precision's effect on the ranking is reported as how often its top-1 of a question's list agrees with
float32's on the same runtime (bf16: Paddle Inference; int8: ONNX Runtime).

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

from common import FWD_FLOP_PER_TOKEN, ROOT, markdown_table, matmul_peak, run_peer, save_results  # also puts the repo on sys.path


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


def ours(model: str, pairs, backend: str, batch: int):
    """(row, scores [N]) of our Reranker on `backend`, timed after a warm-up batch."""
    from dpr_paddle.retrieval.rerank import Reranker

    r = Reranker.load(model, backend, batch)
    qs, ps = [p[0] for p in pairs], [(p[1], p[2]) for p in pairs]
    r.score(qs[:batch], ps[:batch])  # warm-up
    t = time.perf_counter()
    scores = r.score(qs, ps)
    seconds = time.perf_counter() - t
    tokens = sum(len(ids) for ids, _ in r.tensorizer.encode_pairs_ids(qs, ps, r.info["max_length"]))  # real, unpadded
    return {"pairs_per_s": len(pairs) / seconds, "seconds": seconds, "max_length": r.info["max_length"],
            "real_tokens": tokens}, scores


def http_p50(args, questions, backend: str = "auto") -> dict:
    """p50/p90 ms of POST /search (one question, mode rerank, k 10) on a hybrid server reranking its top 20."""
    import httpx

    from dpr_paddle.common.net import free_port, wait_healthy

    port = free_port()
    cmd = [sys.executable, "-m", "dpr_paddle.serve", "--port", str(port), "--hybrid", "--model_name_or_path", "minilm",
           "--encoded_ctx_file", args.emb, "--ctx_file", os.path.join(args.data, "passages.tsv"),
           "--rerank_model", args.rerank_model, "--rerank_depth", "20", "--rerank_backend", backend]
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
        return {"backend": backend, "p50_ms": statistics.median(times), "p90_ms": times[int(0.9 * (len(times) - 1))],
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
    ap.add_argument("--bf16", action="store_true", help="also bfloat16: ours on inference-bf16, the peer under autocast")
    ap.add_argument("--int8", action="store_true", help="also int8: ours on onnxruntime-int8")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "rerank.json"))
    args = ap.parse_args()

    import logging

    import numpy as np

    from dpr_paddle.common.runtime import prepare_process, quiet_paddlenlp

    prepare_process(True)
    quiet_paddlenlp()  # its weight-loading lines, once per model load
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    peak = matmul_peak()  # the host's float32 GEMM rate, this run: what a row's useful GFLOP/s is a share of
    pairs = make_pairs(args.data, args.questions, args.depth)
    rows, scores = [], {}
    low = {"inference-bf16": ("bf16", "inference")} if args.bf16 else {}  # backend: (precision, its fp32 runtime)
    low.update({"onnxruntime-int8": ("int8", "onnxruntime")} if args.int8 else {})
    for backend in ("onnxruntime", "inference", *low):
        r, scores[backend] = ours(args.rerank_model, pairs, backend, args.batch_size)
        rows.append({"system": f"dpr_paddle Reranker ({backend})", "precision": low.get(backend, ("fp32",))[0], **r})
        if backend in low:  # how often this precision's best of a question's list is float32's
            best = {b: scores[b].reshape(-1, args.depth).argmax(1) for b in (backend, low[backend][1])}
            rows[-1]["top1_agreement_with_fp32"] = float((best[backend] == best[low[backend][1]]).mean())
            rows[-1]["max_abs_score_diff"] = float(np.abs(scores[backend] - scores[low[backend][1]]).max())
    if args.peer_python:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(pairs, f)
        for bf16 in (False, True)[: 1 + args.bf16]:
            peer = run_peer(args.peer_python, "rerank", pairs=f.name, max_length=rows[0]["max_length"],
                            batch_size=args.batch_size, threads=os.cpu_count(), bf16=bf16)
            rows.append({"system": f"CrossEncoder.predict ({peer['peer']}){' bf16 autocast' * bf16}",
                         "precision": "bf16" if bf16 else "fp32", **peer})
        os.remove(f.name)
    peers = {r["precision"]: r["pairs_per_s"] for r in rows if r["system"].startswith("CrossEncoder")}
    for r in rows:  # the same pairs, tokenizer and truncation on both sides: the same real tokens
        r["useful_gflops"] = rows[0]["real_tokens"] * FWD_FLOP_PER_TOKEN / (len(pairs) / r["pairs_per_s"]) / 1e9
        r["share_of_matmul_rate"] = r["useful_gflops"] / peak

    def ratio(r, precision):
        return f"{r['pairs_per_s'] / peers[precision]:.2f}x" if precision in peers else "-"

    print(f"matmul rate (paddle, 2048^2 float32): {peak:.1f} GFLOP/s; {rows[0]['real_tokens']} real tokens in "
          f"{len(pairs)} pairs\n")
    print(markdown_table(["system", "pairs/s", "to the peer in fp32", "to the peer in the same precision",
                          "useful GFLOP/s", "share of the matmul rate"],
                         [[r["system"], f"{r['pairs_per_s']:.1f}", ratio(r, "fp32"), ratio(r, r["precision"]),
                           f"{r['useful_gflops']:.1f}", f"{r['share_of_matmul_rate']:.2f}"] for r in rows]))
    for r in rows:
        if "top1_agreement_with_fp32" in r:
            print(f"{r['precision']} against fp32 ({r['system']}): top-1 of a question's list agrees for "
                  f"{r['top1_agreement_with_fp32']:.3f}; max |score diff| {r['max_abs_score_diff']:.3f}")
    http = []
    for backend in ("auto", *low) if args.emb else ():
        http.append(http_p50(args, [p[0] for p in pairs[:: args.depth]], backend))
        print(f"HTTP, one question, hybrid top 20 reranked ({backend}), k 10: p50 {http[-1]['p50_ms']:.0f} ms, "
              f"p90 {http[-1]['p90_ms']:.0f} ms ({http[-1]['requests']} requests)")
    save_results(args.out, rows, pairs=len(pairs), http=http, matmul_peak_gflops=peak)


if __name__ == "__main__":
    main()
