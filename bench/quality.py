"""Retrieval quality on real data: zero-shot MiniLM vs fine-tuned, through the three CLIs.

    .venv/bin/python bench/quality.py --data ../shared/data/squad1_open --steps 40 --batch_size 16 --chunk_size 8
    .venv/bin/python bench/quality.py --data ../shared/data/nq_dev_tiny \
        --model_file runs/quality/squad1_open/biencoder/latest --model_label "fine-tuned on SQuAD-open"

Zero-shot: all-MiniLM-L6-v2's [CLS] vector for questions and passages. Fine-tuned: DPR training on
the dataset's train.json (1 positive + 1 hard negative per question, gradient cache) for --steps
steps from MiniLM, or, for a dataset without training records, an existing --model_file. Both: exact search over all passages, DPR string match, top-1/5/20/100 on the
QA file. Writes bench/results/quality_<dataset>.json and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from common import ROOT, markdown_table, save_results  # also puts the repo on sys.path


def run(*args) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, *map(str, args)], check=True, cwd=ROOT)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a dir with passages.tsv, train.json and a *.csv QA file")
    ap.add_argument("--work", default=os.path.join(ROOT, "runs", "quality"))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--chunk_size", type=int, default=8)
    ap.add_argument("--learning_rate", type=float, default=3e-5)
    ap.add_argument("--train_length", type=int, default=192)
    ap.add_argument("--max_passage_length", type=int, default=256)
    ap.add_argument("--model_file", help="evaluate this checkpoint instead of training one")
    ap.add_argument("--model_label", help="its row label in the table")
    args = ap.parse_args()

    name = os.path.basename(os.path.normpath(args.data))
    work = os.path.join(args.work, name)
    ctx = os.path.join(args.data, "passages.tsv")
    qa = next(os.path.join(args.data, f) for f in sorted(os.listdir(args.data)) if f.endswith(".csv"))
    seconds = {}
    seconds["encode_zero_shot"] = run("generate_dense_embedding.py", "--model_name_or_path", "minilm", "--ctx_file", ctx,
                                      "--out_file", f"{work}/emb_zs", "--max_passage_length", args.max_passage_length)
    run("dense_retriever.py", "--model_name_or_path", "minilm", "--encoded_ctx_file", f"{work}/emb_zs", "--ctx_file", ctx,
        "--qa_file", qa, "--out_file", f"{work}/zero_shot.json", "--max_passage_length", args.max_passage_length)
    model = args.model_file or f"{work}/biencoder/latest"
    if not args.model_file:
        seconds["train"] = run("train_dense_encoder.py", "--model_name_or_path", "minilm", "--train_data_path",
                               os.path.join(args.data, "train.json"), "--batch_size", args.batch_size, "--chunk_size",
                               args.chunk_size, "--max_steps", args.steps, "--epochs", 1, "--learning_rate", args.learning_rate,
                               "--warmup_steps", max(1, args.steps // 10), "--max_passage_length", args.train_length,
                               "--save_dir", f"{work}/biencoder", "--log_steps", 5, "--overwrite_save_dir")
    seconds["encode_fine_tuned"] = run("generate_dense_embedding.py", "--model_file", model,
                                       "--ctx_file", ctx, "--out_file", f"{work}/emb_ft", "--overwrite",
                                       "--max_passage_length", args.max_passage_length)
    run("dense_retriever.py", "--model_file", model, "--encoded_ctx_file", f"{work}/emb_ft",
        "--ctx_file", ctx, "--qa_file", qa, "--out_file", f"{work}/fine_tuned.json")
    rows = {}
    tuned = args.model_label or (args.model_file if args.model_file else f"fine-tuned ({args.steps} steps x {args.batch_size})")
    for label, f in (("zero-shot", "zero_shot"), (tuned, "fine_tuned")):
        with open(f"{work}/{f}.json.metrics.json", encoding="utf-8") as fh:
            rows[label] = json.load(fh)["top_k_accuracy"]
    trained = (f"model {args.model_file}" if args.model_file else
               f"train {os.path.join(args.data, 'train.json')}, steps {args.steps}, batch {args.batch_size}, "
               f"chunk {args.chunk_size}, lr {args.learning_rate}, train length {args.train_length}")
    print(f"\n{name}: {qa} against {ctx}; {trained}\n")
    ks = ("1", "5", "20", "100")
    print(markdown_table(["system"] + [f"top-{k}" for k in ks],
                         [[label] + [f"{acc[k]:.3f}" for k in ks] for label, acc in rows.items()]))
    save_results(os.path.join(ROOT, "bench", "results", f"quality_{name}.json"), rows, seconds=seconds)


if __name__ == "__main__":
    main()
