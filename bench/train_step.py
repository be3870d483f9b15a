"""Training-step throughput and peak memory: gradient cache vs the plain step (MiniLM).

    .venv/bin/python bench/train_step.py --batches 16 32 64 --chunks 8 16 --plain_up_to 64

Each (batch, chunk) runs in a fresh process (peak RSS is a per-process high-water mark): one
warm-up step on 2 chunks of questions, then --steps timed steps. Inputs: questions of --q_len tokens, 1 positive +
--hard_negatives passages per question of --p_len tokens, dropout on, AdamW + clipping.
`--compare_fast_cpu` also runs each configuration with DPR_PADDLE_FAST_CPU=0 (before/after).

The peer's setting (sentence-transformers' CachedMultipleNegativesRankingLoss, issue #6):
    .venv/bin/python bench/train_step.py --batches 64 --chunks 16 --plain_up_to 0 \
        --q_len 128 --hard_negatives 0 --compare_fast_cpu
With --peer_python (a venv made from bench/requirements-peer.txt), the peer's step on the same
random ids runs before and after ours, for each (batch, chunk), and the ratio uses their mean:
    .venv/bin/python bench/train_step.py --batches 64 --chunks 16 --plain_up_to 0 --q_len 32 --p_len 128 \
        --hard_negatives 1 --peer_python .venv-peer/bin/python
`--bf16` runs ours with train_dense_encoder.py's --bf16 (bfloat16 GEMMs on CPUs with AMX or AVX512-BF16) and the
peer under torch's CPU bfloat16 autocast.
The machine's matmul peak is measured in the same run, so utilisation is a ratio of two
numbers taken minutes apart on the same machine. Prints a markdown table; writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from common import FWD_FLOP_PER_TOKEN, ROOT, markdown_table, matmul_peak, run_peer, save_results  # also puts the repo on sys.path

from dpr_paddle.common.runtime import prepare_process, quiet_paddlenlp  # noqa: E402

prepare_process()  # MKL/OpenMP defaults where unset, before paddle loads
quiet_paddlenlp()  # its weight-loading lines, once per model load (as rerank.py and the commands)


def real_batches(path: str, batch: int, count: int, q_len: int, p_len: int, tokenizer=None):
    """The first `count` batches of epoch 0 (seed 12345, 1 hard negative) of the DPR training file
    `path`: their texts (for the peer) and, with a tokenizer, our collator's arrays."""
    from dpr_paddle.data import BiEncoderCollator, BiEncoderDataset, epoch_batches, read_biencoder_records
    from dpr_paddle.modeling.tokenization import Tensorizer

    dataset = BiEncoderDataset(read_biencoder_records(path), 1, seed=12345)
    examples = [[dataset.example(i, 0) for i in ids] for ids in epoch_batches(len(dataset), batch, 0, 12345)[:count]]
    texts = [{"questions": [e.question for e in b], "positives": [" ".join(e.passages[0]).strip() for e in b],
              "negatives": [" ".join(e.passages[1]).strip() for e in b]} for b in examples]
    if tokenizer is None:
        return texts, None
    collator = BiEncoderCollator(Tensorizer(tokenizer, q_len, p_len))
    return texts, [collator(b) for b in examples]


def one(batch: int, chunk: int, steps: int, q_len: int, p_len: int, hard: int, q_chunk: int = 0,
        real_data: str = "", sort_chunks: bool = True, bf16: bool = False) -> dict:
    """Time `steps` training steps in this process; chunk 0 = plain step; q_chunk 0 = chunk. With
    `real_data` (a DPR training file) the steps take its first batches, q_len/p_len being maximum lengths;
    `bf16`: the encoders' GEMMs in bfloat16 (train_dense_encoder.py --bf16 on a CPU)."""
    import numpy as np
    import paddle

    from dpr_paddle.modeling.builder import build_biencoder
    from dpr_paddle.training.distributed import World
    from dpr_paddle.training.optim import build_optimizer, global_grad_norm
    from dpr_paddle.training.step import train_step

    paddle.seed(0)
    model, tokenizer = build_biencoder("minilm", "minilm")
    model.speed_up_training(bf16=bf16)  # as train.py does (a no-op with DPR_PADDLE_FAST_CPU=0)
    model.train()
    opt, sched = build_optimizer(model, 2e-5, 1000, 10, max_grad_norm=2.0)
    rng = np.random.default_rng(0)

    def arrays(n, length):
        ids = rng.integers(1000, 20000, (n, length))
        ids[:, 0], ids[:, -1] = 101, 102
        return {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": np.ones_like(ids)}

    n_pass = 1 + hard
    batch_arrays = {"question": arrays(batch, q_len), "context": arrays(n_pass * batch, p_len),
                    "passages_per_question": n_pass, "passage_keys": np.arange(n_pass * batch)}
    # warm-up (allocators, kernels) on two chunks' worth of questions: a full warm-up step at
    # batch 256 would cost minutes and warms nothing more
    warm = min(batch, 2 * chunk) if chunk else batch
    warm_arrays = {"question": {k: v[:warm] for k, v in batch_arrays["question"].items()},
                   "context": {k: v[: n_pass * warm] for k, v in batch_arrays["context"].items()},
                   "passages_per_question": n_pass, "passage_keys": np.arange(n_pass * warm)}
    batches = [warm_arrays] + [batch_arrays] * steps
    if real_data:  # warm-up on the first real batch, then the next `steps`
        batches = real_batches(real_data, batch, steps + 1, q_len, p_len, tokenizer)[1]
        tokens = sum(int(b[g]["attention_mask"].sum()) for b in batches[1:] for g in ("question", "context")) / steps
    world = World()
    times = []
    for i, arrays in enumerate(batches):
        t = time.perf_counter()
        train_step(model, arrays, q_chunk or chunk, chunk, world, sort_chunks=sort_chunks)
        global_grad_norm(model.parameters())
        opt.step()
        sched.step()
        opt.clear_grad()
        if i:
            times.append(time.perf_counter() - t)
    step_s = float(np.median(times))
    if not real_data:
        tokens = batch * q_len + n_pass * batch * p_len
    passes = 3 if chunk == 0 else 4  # forward + backward (2x); the cache adds a no-grad forward
    return {"batch": batch, "chunk": chunk, "step_s": step_s, "examples_per_s": batch / step_s,
            "step_tflop": tokens * FWD_FLOP_PER_TOKEN * passes / 1e12,
            "gflops": tokens * FWD_FLOP_PER_TOKEN * passes / step_s / 1e9,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "fast_cpu": os.environ.get("DPR_PADDLE_FAST_CPU") != "0", "q_chunk": q_chunk or chunk,
            "fused": os.environ.get("DPR_PADDLE_FUSED") != "0" and fused_built(), "real_data": bool(real_data),
            "real_tokens_per_step": tokens if real_data else None, "sort_chunks": sort_chunks, "bf16": bf16}


def fused_built() -> bool:
    from dpr_paddle.modeling import fused_cpu

    return fused_cpu.ops() is not None


def peer_step(args, batch: int, chunk: int) -> dict:
    """sentence-transformers' CachedMNRL step at (batch, chunk) on the same ids (or, with --real_data, the
    same texts at the same maximum length), in the peer's venv."""
    extra = {}
    if args.real_data:
        path = os.path.join(ROOT, "runs", f"peer_batches_{batch}.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(real_batches(args.real_data, batch, args.steps + 1, args.q_len, args.p_len)[0], f)
        extra = {"texts": path, "max_length": args.p_len}
    result = run_peer(args.peer_python, "train_step", batch=batch, chunk=chunk, q_len=args.q_len, p_len=args.p_len,
                      hard_negatives=args.hard_negatives, steps=args.steps, bf16=args.bf16, **extra)
    print(f"peer batch {batch} chunk {chunk}: {result['step_s']:.1f} s/step", file=sys.stderr)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    ap.add_argument("--chunks", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--plain_up_to", type=int, default=64, help="also time the plain step for batches up to this")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--q_len", type=int, default=32)
    ap.add_argument("--p_len", type=int, default=128)
    ap.add_argument("--hard_negatives", type=int, default=1)
    ap.add_argument("--compare_fast_cpu", action="store_true", help="also run with DPR_PADDLE_FAST_CPU=0")
    ap.add_argument("--compare_fused", action="store_true", help="also run with DPR_PADDLE_FUSED=0")
    ap.add_argument("--compare_sort", action="store_true", help="also run with chunks in batch order (--no-sort_chunks)")
    ap.add_argument("--no_sort_chunks", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--real_data", default="", help="a DPR training file: its first batches instead of random ids; "
                                                     "--q_len/--p_len are then maximum lengths")
    ap.add_argument("--peer_python", help="python of a venv with bench/requirements-peer.txt")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "train_step.json"))
    ap.add_argument("--q_chunks", type=int, nargs="+", default=[0],
                    help="question chunk sizes to try (0: the passage chunk, as --chunk_size alone does)")
    ap.add_argument("--bf16", action="store_true", help="ours with --bf16 (bfloat16 GEMMs), the peer under "
                                                        "torch.autocast('cpu', bfloat16)")
    ap.add_argument("--one", type=int, nargs=2, metavar=("BATCH", "CHUNK"), help=argparse.SUPPRESS)
    ap.add_argument("--q_chunk", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(*args.one, args.steps, args.q_len, args.p_len, args.hard_negatives, args.q_chunk,
                             args.real_data, not args.no_sort_chunks, args.bf16)))
        return
    peak = matmul_peak()
    rows = []
    for b in args.batches:
        configs = [c for c in args.chunks if c < b] + ([0] if b <= args.plain_up_to else [])
        for c in configs:
            peer = [peer_step(args, b, c)] if args.peer_python and c else []
            variants = [(fast, qc, fused, srt) for qc in args.q_chunks
                        for fast in ([True, False] if args.compare_fast_cpu else [True])
                        for fused in ([True, False] if args.compare_fused else [True])
                        for srt in ([True, False] if args.compare_sort else [True])]
            for fast, qc, fused, srt in variants:
                env = dict(os.environ, DPR_PADDLE_FAST_CPU="1" if fast else "0", DPR_PADDLE_FUSED="1" if fused else "0")
                out = subprocess.run([sys.executable, __file__, "--one", str(b), str(c), "--steps", str(args.steps),
                                      "--q_len", str(args.q_len), "--p_len", str(args.p_len),
                                      "--hard_negatives", str(args.hard_negatives), "--q_chunk", str(qc),
                                      "--real_data", args.real_data] + ([] if srt else ["--no_sort_chunks"])
                                     + (["--bf16"] if args.bf16 else []),
                                     capture_output=True, text=True, check=True, env=env)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row["utilisation"] = row["gflops"] / peak
                rows.append(row)
                print(f"batch {b} chunk {c or 'plain'} question chunk {row['q_chunk'] or 'plain'} fast_cpu {fast} "
                      f"fused {row['fused']} sorted chunks {srt}: "
                      f"{row['step_s']:.1f} s/step, "
                      f"{row['examples_per_s']:.2f} ex/s, peak RSS {row['peak_rss_mb']:.0f} MB", file=sys.stderr)
            if peer:
                peer.append(peer_step(args, b, c))
                mean = sum(p["step_s"] for p in peer) / 2
                for r in rows[-len(variants):]:
                    r.update(peer_step_s=[p["step_s"] for p in peer], vs_peer=mean / r["step_s"], peer=peer[0]["peer"],
                             peer_peak_rss_mb=[p.get("peak_rss_mb") for p in peer])
    print(f"matmul peak (paddle, 2048^2 float32): {peak:.1f} GFLOP/s\n")
    print(markdown_table(
        ["batch", "chunk", "question chunk", "fast_cpu", "fused", "sorted chunks", "s/step", "peer s/step (before, after)", "speed vs peer", "examples/s",
         "peak RSS (MB)", "peer peak RSS (MB)", "step TFLOP", "GFLOP/s", "utilisation"],
        [[str(r["batch"]), str(r["chunk"] or "plain"), str(r.get("q_chunk") or "plain"), "on" if r["fast_cpu"] else "off",
          "on" if r.get("fused") else "off", "on" if r.get("sort_chunks", True) else "off",
          f"{r['step_s']:.2f}",
          ", ".join(f"{s:.2f}" for s in r.get("peer_step_s", [])), f"{r['vs_peer']:.2f}x" if "vs_peer" in r else "",
          f"{r['examples_per_s']:.2f}",
          f"{r['peak_rss_mb']:.0f}", ", ".join(f"{m:.0f}" for m in r.get("peer_peak_rss_mb", []) if m),
          f"{r['step_tflop']:.3f}", f"{r['gflops']:.1f}", f"{r['utilisation']:.2f}"]
         for r in rows]))
    save_results(args.out, rows, matmul_peak_gflops=peak)


if __name__ == "__main__":
    main()
