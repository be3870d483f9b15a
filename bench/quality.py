"""Retrieval quality on real data, every row through the project's own CLIs, side by side:
BM25; zero-shot MiniLM with [CLS]+dot and with its native mean+cosine; fine-tuned; hybrid.

    .venv/bin/python bench/quality.py --data ../shared/data/squad1_open
    .venv/bin/python bench/quality.py --data ../shared/data/squad1_open --mine bm25 --tag mined

Fine-tuned: train_dense_encoder.py from MiniLM with the default recipe (its native mean pooling,
cosine, temperature 0.05) on the dataset's train.json (or on hard negatives mined by
mine_hard_negatives.py with --mine), checkpoints every --save_steps. Each checkpoint is scored on
the dev questions (dev.json's questions and answers against the whole corpus) for the dev
top-k curve (docs/quality_dev_curve.png); the hybrid's alpha is chosen on the same dev
questions. Only then are the final model and the hybrid run on the eval QA file. Every row's
CPU time (user + system of its processes) and command are recorded in
bench/results/quality_<dataset>[_<tag>].json.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import re
import resource
import shlex
import subprocess
import sys
import time

from common import ROOT, markdown_table, save_results  # also puts the repo on sys.path

KS = ("1", "5", "20", "100")


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Runner:
    """Runs the CLIs, keeping each command and its CPU and wall time."""

    def __init__(self):
        self.log = []

    def __call__(self, label, *args):
        cmd = [sys.executable, *map(str, args)]
        c0, t0 = cpu_seconds(), time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        entry = {"label": label, "cpu_s": round(cpu_seconds() - c0, 1), "wall_s": round(time.perf_counter() - t0, 1),
                 "command": "python " + " ".join(shlex.quote(os.path.relpath(a, ROOT) if os.path.exists(a) else a)
                                                 for a in map(str, args))}
        self.log.append(entry)
        return entry


from dpr_paddle.retrieval.qrels import METRIC_KEYS as GOLD_KEYS  # noqa: E402


def accuracy(path):
    with open(path + ".metrics.json", encoding="utf-8") as f:
        return json.load(f)["top_k_accuracy"]


def dev_qa_file(dev_json, out):
    """dev.json's questions and answers as a DPR QA file (question<TAB>["answers"])."""
    with open(dev_json, encoding="utf-8") as f:
        records = json.load(f)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        for r in records:
            w.writerow([r["question"], json.dumps(r["answers"], ensure_ascii=False)])
    return out


def plot_curve(curve, out_png, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [c["step"] for c in curve]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for k, style in zip(("1", "5", "20"), ("o-", "s-", "^-")):
        ax.plot(steps, [c["top_k"][k] for c in curve], style, label=f"dev top-{k}")
    ax.set_xlabel("training step")
    ax.set_ylabel("top-k accuracy (dev questions, whole corpus)")
    import textwrap

    ax.set_title("\n".join(textwrap.wrap(title, 80)), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out_png)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a dir with passages.tsv, train.json, dev.json and a *.csv QA file")
    ap.add_argument("--work", default=os.path.join(ROOT, "runs", "quality"))
    ap.add_argument("--tag", default="", help="suffix of the work dir and results file (several recipes side by side)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--chunk_size", type=int, default=16)
    ap.add_argument("--learning_rate", type=float, default=2e-5)
    ap.add_argument("--hard_negatives", type=int, default=1)
    ap.add_argument("--train_length", type=int, default=192)
    ap.add_argument("--max_passage_length", type=int, default=256)
    ap.add_argument("--save_steps", type=int, default=26)
    ap.add_argument("--mine", choices=("none", "bm25", "dense"), default="none",
                    help="train on hard negatives mined with BM25 or zero-shot MiniLM instead of the file's own")
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.3, 0.5, 1.0, 2.0])
    ap.add_argument("--bm25_engine", choices=("bm25s", "lucene"), default="bm25s",
                    help="the BM25 of the BM25, mining and hybrid rows (lucene: Anserini's, k1 0.9 b 0.4)")
    ap.add_argument("--model_file", help="evaluate this checkpoint instead of training one")
    ap.add_argument("--qrels", help="relevance labels of the eval questions: adds MRR@10, nDCG@10, MAP, Recall@k "
                                    "(dense_retriever.py --qrels) to every eval row")
    args = ap.parse_args()

    name = os.path.basename(os.path.normpath(args.data))
    work = os.path.join(args.work, name + (f"_{args.tag}" if args.tag else ""))
    ctx = os.path.join(args.data, "passages.tsv")
    qa = next(os.path.join(args.data, f) for f in sorted(os.listdir(args.data)) if f.endswith(".csv"))
    dev_qa = dev_qa_file(os.path.join(args.data, "dev.json"), os.path.join(work, "dev_qa.csv"))
    bm25_index = os.path.join(work, "bm25_index" + ("" if args.bm25_engine == "bm25s" else "_lucene"))
    bm25 = ["--bm25_index", bm25_index, "--bm25_engine", args.bm25_engine]
    bm25_row = f"BM25 ({args.bm25_engine})"
    plen = ["--max_passage_length", args.max_passage_length]
    run = Runner()
    rows, times, gold = {}, {}, {}

    def retrieve(label, out, *flags, qa_file=qa):
        qrels = ["--qrels", args.qrels] if args.qrels and qa_file == qa else []
        e = run(label, "dense_retriever.py", "--ctx_file", ctx, "--qa_file", qa_file, "--out_file", out, *flags, *qrels)
        if qrels:
            with open(out + ".metrics.json", encoding="utf-8") as f:
                metrics = json.load(f)
            gold[label] = {k: metrics[k] for k in GOLD_KEYS}
        return accuracy(out), e

    def encode(label, out, *flags):  # a checkpoint encodes at the length it was trained at (no length given)
        return run(label, "generate_dense_embedding.py", "--ctx_file", ctx, "--out_file", out, "--overwrite", *flags)

    # ---- BM25 and zero-shot
    rows[bm25_row], e = retrieve("BM25", f"{work}/bm25.json", "--bm25", *bm25)
    times[bm25_row] = [e]
    for label, flags in (("zero-shot MiniLM, cls + dot (DPR's pooling)", ["--pooling", "cls", "--similarity", "dot"]),
                         ("zero-shot MiniLM, mean + cosine (its own)", [])):
        tag = "zs_cls" if flags else "zs_mean"
        e1 = encode(f"encode {tag}", f"{work}/emb_{tag}", "--model_name_or_path", "minilm", *plen, *flags)
        rows[label], e2 = retrieve(f"retrieve {tag}", f"{work}/{tag}.json", "--model_name_or_path", "minilm",
                                   "--encoded_ctx_file", f"{work}/emb_{tag}", *plen, *flags)
        times[label] = [e1, e2]

    # ---- fine-tuning (optionally on mined negatives), the dev curve
    train_file = os.path.join(args.data, "train.json")
    mine_entries = []
    if args.mine != "none":
        mined = f"{work}/train_mined_{args.mine}.json"
        by = (["--retriever", "bm25", *bm25] if args.mine == "bm25" else
              ["--retriever", "dense", "--model_name_or_path", "minilm", "--encoded_ctx_file", f"{work}/emb_zs_mean"])
        mine_entries.append(run(f"mine {args.mine}", "mine_hard_negatives.py", "--train_data_path", train_file,
                                "--ctx_file", ctx, "--output", mined, "--rank_range", 0, 30, "--num_negatives", 8, *by))
        train_file = mined
    curve = [{"step": 0, "top_k": retrieve("dev zs_mean", f"{work}/dev_step0.json", "--model_name_or_path", "minilm",
                                           "--encoded_ctx_file", f"{work}/emb_zs_mean", *plen, qa_file=dev_qa)[0]}]
    save_dir = f"{work}/biencoder"
    if args.model_file:
        checkpoints = [(None, args.model_file)]
        train_entry = None
    else:
        train_entry = run("train", "train_dense_encoder.py", "--model_name_or_path", "minilm", "--train_data_path",
                          train_file, "--dev_data_path", os.path.join(args.data, "dev.json"),
                          "--batch_size", args.batch_size, "--chunk_size", args.chunk_size, "--epochs", args.epochs,
                          "--learning_rate", args.learning_rate, "--warmup_steps", 8,
                          "--hard_negatives", args.hard_negatives, "--max_passage_length", args.train_length,
                          "--save_dir", save_dir, "--save_steps", args.save_steps, "--keep_last", 100,
                          "--log_steps", 5, "--overwrite_save_dir")
        checkpoints = sorted(((int(re.search(r"(\d+)$", p).group(1)), p) for p in glob.glob(f"{save_dir}/checkpoint-*")))
    last_encode = None
    for step, ckpt in checkpoints:
        last_encode = encode(f"encode step {step}", f"{work}/emb_ft", "--model_file", ckpt)
        acc, _ = retrieve(f"dev step {step}", f"{work}/dev_step{step}.json", "--model_file", ckpt,
                          "--encoded_ctx_file", f"{work}/emb_ft", qa_file=dev_qa)
        if step is not None:
            curve.append({"step": step, "top_k": acc})
    final = checkpoints[-1][1]
    tuned = (f"fine-tuned: {args.epochs} epoch(s) x batch {args.batch_size} (chunk {args.chunk_size}), lr "
             f"{args.learning_rate}, {args.hard_negatives} hard neg. {'mined by ' + args.mine if args.mine != 'none' else 'given'}"
             if not args.model_file else f"fine-tuned: {args.model_file}")
    rows[tuned], e = retrieve("retrieve fine-tuned", f"{work}/fine_tuned.json", "--model_file", final,
                              "--encoded_ctx_file", f"{work}/emb_ft")
    times[tuned] = [x for x in (*mine_entries, train_entry, last_encode, e) if x]

    # ---- hybrid: alpha chosen on dev, then run on eval
    dev_alpha = {}
    hybrid = ["--hybrid", "--model_file", final, "--encoded_ctx_file", f"{work}/emb_ft", *bm25]
    for a in args.alphas:
        dev_alpha[a], _ = retrieve(f"dev hybrid {a}", f"{work}/dev_hybrid_{a}.json", *hybrid, "--hybrid_alpha", a,
                                   qa_file=dev_qa)
    alpha = max(args.alphas, key=lambda a: (dev_alpha[a]["1"], dev_alpha[a]["20"]))
    label = f"hybrid: fine-tuned + BM25, weighted, alpha {alpha} (best on dev)"
    rows[label], e = retrieve("hybrid", f"{work}/hybrid.json", *hybrid, "--hybrid_alpha", alpha)
    times[label] = [*times[tuned], times[bm25_row][0], e]
    rows["hybrid: fine-tuned + BM25, rrf"], e = retrieve("hybrid rrf", f"{work}/hybrid_rrf.json", *hybrid, "--fusion", "rrf")
    times["hybrid: fine-tuned + BM25, rrf"] = [*times[tuned], times[bm25_row][0], e]

    print(f"\n{name}: {qa} against {ctx}\n")
    print(markdown_table(["system"] + [f"top-{k}" for k in KS] + ["CPU s"],
                         [[label] + [f"{acc[k]:.3f}" for k in KS] + [f"{sum(x['cpu_s'] for x in times[label]):.0f}"]
                          for label, acc in rows.items()]))
    if gold:
        print(markdown_table(["run"] + list(GOLD_KEYS), [[k] + [f"{v[m]:.3f}" for m in GOLD_KEYS] for k, v in gold.items()]))
    print("\ndev curve:", json.dumps([{"step": c["step"], **{k: round(c["top_k"][k], 3) for k in KS}} for c in curve]))
    print("dev hybrid alpha:", json.dumps({a: round(v["1"], 3) for a, v in dev_alpha.items()}))
    suffix = f"_{args.tag}" if args.tag else ""
    if len(curve) > 1:
        plot_curve(curve, os.path.join(ROOT, "docs", f"quality_dev_curve{suffix}.png"),
                   f"{name}: dev top-k while fine-tuning MiniLM ({tuned.split(': ', 1)[1]})")
    save_results(os.path.join(ROOT, "bench", "results", f"quality_{name}{suffix}.json"),
                 [{"system": label, "top_k": acc, "cpu_s": sum(x["cpu_s"] for x in times[label]),
                   "commands": [x["command"] for x in times[label]]} for label, acc in rows.items()],
                 dev_curve=curve, dev_hybrid_alpha=dev_alpha, chosen_alpha=alpha, gold_metrics=gold, runs=run.log)


if __name__ == "__main__":
    main()
