"""Where a CPU training chunk spends its time: PaddleNLP's MiniLM as loaded vs as BiEncoder runs it.

    .venv/bin/python bench/profile_step.py --batch 16 --length 128 --repeats 5

One chunk of the cached step is a no-grad forward plus a forward + backward, both in train mode
(dropout 0.1). "as loaded" is `BertModel` called as PaddleNLP's examples call it; "BiEncoder"
adds `use_cache=False` and `fast_cpu.speed_up` (numpy-drawn dropout masks, attention mask
expanded once). The two are timed alternately in one process (median of --repeats), then each
is profiled once with paddle.profiler and its most expensive operators listed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

from common import FWD_FLOP_PER_TOKEN, ROOT, markdown_table, save_results

from dpr_paddle.common.runtime import prepare_process, quiet_paddlenlp  # noqa: E402

prepare_process()  # MKL/OpenMP defaults where unset, before paddle loads
quiet_paddlenlp()  # its weight-loading lines, once per model load (as rerank.py and the commands)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "profile_step.json"))
    ap.add_argument("--profile_only", help=argparse.SUPPRESS)  # one variant, in a child process
    args = ap.parse_args()

    import numpy as np
    import paddle
    import paddle.profiler as profiler

    from dpr_paddle.modeling.model import BiEncoder
    from dpr_paddle.modeling.pretrained import load_encoder

    loaded = load_encoder("minilm")[0]
    bi = BiEncoder(load_encoder("minilm")[0]).speed_up_training()
    loaded.train()
    bi.train()
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, (args.batch, args.length))
    ids[:, 0] = 101
    x = paddle.to_tensor(ids)
    types, mask = paddle.zeros_like(x), paddle.ones_like(x)

    variants = {
        "as loaded": lambda: loaded(x, token_type_ids=types, attention_mask=mask, return_dict=True).last_hidden_state[:, 0],
        "BiEncoder": lambda: bi(x, types, mask),
    }

    def no_grad(fn):
        with paddle.no_grad():
            fn()

    def with_grad(fn):
        fn().sum().backward()

    if args.profile_only:  # paddle.profiler runs once per process
        fn = variants[args.profile_only]
        no_grad(fn)
        with_grad(fn)
        prof = profiler.Profiler(targets=[profiler.ProfilerTarget.CPU], on_trace_ready=lambda p: None)
        prof.start()
        no_grad(fn)
        with_grad(fn)
        prof.stop()
        print(json.dumps(top_operators(prof, args.top)))
        return

    times = {(v, p): [] for v in variants for p in ("forward", "forward+backward")}
    for v, fn in variants.items():  # warm-up
        no_grad(fn)
        with_grad(fn)
    for _ in range(args.repeats):
        for v, fn in variants.items():
            for phase, run in (("forward", no_grad), ("forward+backward", with_grad)):
                t = time.perf_counter()
                run(fn)
                times[(v, phase)].append(time.perf_counter() - t)
    med = {k: float(np.median(t)) for k, t in times.items()}
    tokens = args.batch * args.length
    rows = []
    for v in variants:
        chunk = med[(v, "forward")] + med[(v, "forward+backward")]
        rows.append({"variant": v, "forward_s": med[(v, "forward")], "forward_backward_s": med[(v, "forward+backward")],
                     "chunk_s": chunk, "gflops": tokens * FWD_FLOP_PER_TOKEN * 4 / chunk / 1e9})

    ops = {}
    for v in variants:
        out = subprocess.run([sys.executable, __file__, "--profile_only", v, "--batch", str(args.batch),
                              "--length", str(args.length), "--top", str(args.top)],
                             capture_output=True, text=True, check=True, cwd=ROOT)
        ops[v] = json.loads(out.stdout.strip().splitlines()[-1])

    print(f"MiniLM, {args.batch} x {args.length} tokens, train mode, median of {args.repeats}\n")
    print(markdown_table(["variant", "no-grad forward (s)", "forward + backward (s)", "one cached chunk (s)", "GFLOP/s"],
                         [[r["variant"], f"{r['forward_s']:.2f}", f"{r['forward_backward_s']:.2f}",
                           f"{r['chunk_s']:.2f}", f"{r['gflops']:.1f}"] for r in rows]))
    names = sorted({n for v in ops for n, _ in ops[v]}, key=lambda n: -max(dict(ops[v]).get(n, 0) for v in ops))
    print("\nOperator time in one chunk (ms, paddle.profiler, forward and backward nodes):\n")
    print(markdown_table(["operator", *variants],  # "-": not among that variant's --top operators
                         [[n, *(f"{dict(ops[v])[n]:.0f}" if n in dict(ops[v]) else "-" for v in variants)]
                          for n in names]))
    save_results(args.out, rows, operators_ms={v: dict(o) for v, o in ops.items()})


def top_operators(prof, top: int):
    """[(operator, total ms)] of the `top` most expensive operators in a finished profile."""
    import io
    import contextlib

    import paddle.profiler as profiler

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        prof.summary(sorted_by=profiler.SortedKeys.CPUTotal, op_detail=False, time_unit="ms")
    text = buf.getvalue()
    section = text[text.find("Operator Summary"):]
    found = []
    for line in section.splitlines():
        m = re.match(r"^(\S[\w ]*?(?: dygraph)?|Global_\w+)\s+(\d+)\s+([\d.]+) /", line)
        if m and not line.startswith("  "):
            name = m.group(1).replace(" dygraph", "").replace("Global_", "").replace("GradNode", " (backward)")
            found.append((name, float(m.group(3))))
    return sorted(found, key=lambda t: -t[1])[:top]


if __name__ == "__main__":
    main()
