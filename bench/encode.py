"""Passage encoding throughput (MiniLM): backends x length-sorted batching, on real passages.

    .venv/bin/python bench/encode.py --ctx ../shared/data/squad1_open/passages.tsv --limit 512 \
        --backends onnxruntime onnxruntime-int8 inference --peer_python .venv-peer/bin/python

`--backends onnxruntime-unfused` adds the converted graph with ONNX Runtime's own fusions only (attention op by
op, SkipLayerNormalization and BiasGelu fused): what `onnxruntime` ran before encoding/onnx_fusion.py and
onnx_backend.SLOWER_FUSIONS, to measure what they give in the same run.

With --peer_python (a venv made from bench/requirements-peer.txt), sentence-transformers' `encode`
of the same passages runs before and after ours (bench/peer.py), and the ratio uses their mean.

Each configuration encodes the same first --limit passages ("title" + "text" pairs, max length
--max_length, batch --batch_size) once after a warm-up batch; tokenization is timed separately
(it is the same for every configuration). Per backend, the forward alone on the pre-padded
sorted batches is timed on a second pass (the ceiling a long corpus run approaches).
Prints a markdown table and writes JSON.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

from common import FWD_FLOP_PER_TOKEN, ROOT, markdown_table, run_peer, save_results  # also puts the repo on sys.path

from dpr_paddle.common.runtime import prepare_process, quiet_paddlenlp  # noqa: E402

prepare_process()  # MKL/OpenMP defaults where unset, before paddle loads
quiet_paddlenlp()  # its weight-loading lines, once per model load (as rerank.py and the commands)


def peer_encode(args, bf16: bool = False) -> dict:
    """sentence-transformers' encode of the same passages, in the peer's venv (bench/peer.py); `bf16` under
    torch's CPU autocast in bfloat16."""
    result = run_peer(args.peer_python, "encode", ctx=args.ctx, limit=args.limit, max_length=args.max_length,
                      batch_size=args.batch_size, bf16=bf16)
    result["bf16"] = bf16
    print(f"peer{' bf16' if bf16 else ''}: {result['passages_per_s']:.1f} passages/s", file=sys.stderr)
    return result


def unfused_session(info: dict):
    """ONNX Runtime on the tower's converted graph as paddle2onnx wrote it (attention op by op) with every one
    of ONNX Runtime's own fusions: what `onnxruntime` ran before onnx_fusion and onnx_backend.SLOWER_FUSIONS."""
    from dpr_paddle.encoding import onnx_backend
    from dpr_paddle.encoding.towers import export_prefix

    recipe = f"{info['pooling']}-{'cos' if info['similarity'] == 'cosine' else 'dot'}"
    return onnx_backend.session(export_prefix(info["model_fingerprint"], recipe) + ".onnx", disabled=[])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ctx", required=True, help="passages TSV")
    ap.add_argument("--limit", type=int, default=512)
    ap.add_argument("--max_length", type=int, default=256)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--backends", nargs="+", default=["onnxruntime", "onnxruntime-int8", "inference", "dygraph"])
    ap.add_argument("--peer_python", help="python of a venv with bench/requirements-peer.txt")
    ap.add_argument("--peer_bf16", action="store_true", help="also run the peer under bfloat16 autocast; the "
                                                             "inference-bf16 and int8 rows are compared with it")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "encode.json"))
    args = ap.parse_args()

    import numpy as np

    from dpr_paddle.data import iter_passages
    from dpr_paddle.encoding.writer import encode_passages
    from dpr_paddle.encoding.towers import QUANTIZATION, load_tower
    from dpr_paddle.modeling.model import CONTEXT
    passages = list(itertools.islice(iter_passages(args.ctx), args.limit))
    rows, peer = [], []
    precisions = [False, True] if args.peer_bf16 else [False]
    if args.peer_python:
        peer += [peer_encode(args, bf16) for bf16 in precisions]
    for backend in args.backends:
        encode, tensorizer, info = load_tower(CONTEXT, model_name_or_path="minilm",
                                              max_passage_length=args.max_length,
                                              backend=backend.replace("-unfused", ""))
        if backend == "onnxruntime-unfused":
            encode = unfused_session(info)
        t = time.perf_counter()
        ids = tensorizer.encode_passages_ids([(p.title, p.text) for p in passages])
        tokenize_s = time.perf_counter() - t
        encode_passages(encode, tensorizer, passages[: args.batch_size], args.batch_size)  # warm-up
        for sort in (True, False):
            t = time.perf_counter()
            vecs = encode_passages(encode, tensorizer, passages, args.batch_size, sort_by_length=sort)
            seconds = time.perf_counter() - t
            real_tokens = sum(len(i) for i, _ in ids)
            order = np.argsort([len(i) for i, _ in ids]) if sort else np.arange(len(ids))
            padded = sum(max(len(ids[j][0]) for j in order[k : k + args.batch_size]) * len(order[k : k + args.batch_size])
                         for k in range(0, len(order), args.batch_size))
            rows.append({"backend": backend, "sorted": sort, "passages_per_s": len(passages) / seconds,
                         "seconds": seconds, "tokenize_s": tokenize_s, "real_tokens": real_tokens,
                         "padded_tokens": padded, "useful_gflops": real_tokens * FWD_FLOP_PER_TOKEN / seconds / 1e9,
                         "dim": int(vecs.shape[1])})
            print(f"{backend} sorted={sort}: {len(passages) / seconds:.1f} passages/s", file=sys.stderr)
        # the ceiling: the forward alone on already padded, length-sorted batches, second pass
        # (every batch shape seen once before, as in a long corpus run)
        order = np.argsort([len(i) for i, _ in ids], kind="stable")
        batches = [tensorizer.pad([ids[j] for j in order[k : k + args.batch_size]])
                   for k in range(0, len(order), args.batch_size)]
        for b in batches:
            encode(b)
        t = time.perf_counter()
        for b in batches:
            encode(b)
        rows[-2]["forward_only_passages_per_s"] = len(passages) / (time.perf_counter() - t)
    if args.peer_python:
        peer += [peer_encode(args, bf16) for bf16 in precisions]
        for bf16 in precisions:
            runs = [p["passages_per_s"] for p in peer if p["bf16"] == bf16]
            for r in rows:
                # the rows whose vectors are not float32's (QUANTIZATION) are compared with the peer's bf16 autocast
                if (r["backend"] in QUANTIZATION) == bf16 or not args.peer_bf16:
                    r["vs_peer"] = r["passages_per_s"] / (sum(runs) / len(runs))
                    r["peer_precision"] = "bf16" if bf16 else "fp32"
            print(f"peer ({peer[0]['peer']}, {'bf16 autocast' if bf16 else 'fp32'}): {runs[0]:.1f} passages/s "
                  f"before ours, {runs[1]:.1f} after; {peer[0]['real_tokens']} real tokens (ours {rows[0]['real_tokens']})")
    print(f"{len(passages)} passages of {args.ctx}, max length {args.max_length}, batch {args.batch_size}; "
          f"tokenization {rows[0]['tokenize_s']:.2f} s ({len(passages) / rows[0]['tokenize_s']:.0f} passages/s)\n")
    print(markdown_table(
        ["backend", "length-sorted", "passages/s (incl. tokenization)", "vs peer (its precision)", "padded / real tokens",
         "useful GFLOP/s", "forward only, warm (passages/s)"],
        [[r["backend"], "yes" if r["sorted"] else "no", f"{r['passages_per_s']:.1f}",
          f"{r['vs_peer']:.2f}x ({r['peer_precision']})" if "vs_peer" in r else "", f"{r['padded_tokens'] / r['real_tokens']:.2f}", f"{r['useful_gflops']:.1f}",
          f"{r['forward_only_passages_per_s']:.1f}" if "forward_only_passages_per_s" in r else ""] for r in rows]))
    save_results(args.out, rows, peer=peer)


if __name__ == "__main__":
    main()
