"""Choose --rerank_alpha on dev questions: from one reranked run with --rerank_alpha 0 (its results JSON holds
each passage's cross-encoder `score` and `first_stage_score`), the top-1/top-5 of min-max(cross-encoder) +
alpha x min-max(first stage) over the reranked depth, for a grid of alphas.

    .venv/bin/python dense_retriever.py --bm25 --ctx_file ../shared/data/squad1_open/passages.tsv \\
        --qa_file runs/rerank/qa_dev.csv --out_file runs/rerank/bm25_rr_dev.json --rerank_model RERANKER
    .venv/bin/python bench/rerank_alpha.py runs/rerank/bm25_rr_dev.json --depth 20
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from common import markdown_table  # also puts the repo on sys.path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--alphas", type=float, nargs="+", default=[0, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5])
    args = ap.parse_args()

    from dpr_paddle.retrieval.rerank import minmax

    with open(args.results, encoding="utf-8") as f:
        results = json.load(f)
    rows = []
    for alpha in args.alphas:
        top1 = top5 = 0
        for q in results:
            ctxs = q["ctxs"][: args.depth]
            s = minmax(np.array([float(c["score"]) for c in ctxs])) + alpha * minmax(
                np.array([float(c["first_stage_score"]) for c in ctxs]))
            order = np.argsort(-s, kind="stable")
            top1 += ctxs[order[0]]["has_answer"]
            top5 += any(ctxs[i]["has_answer"] for i in order[:5])
        rows.append([f"{alpha:g}", f"{top1 / len(results):.3f}", f"{top5 / len(results):.3f}"])
    print(markdown_table(["alpha", "top-1", "top-5"], rows))


if __name__ == "__main__":
    main()
