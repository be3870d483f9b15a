"""What the bench scripts share: the FLOP count, the host's matmul rate, markdown tables, and the results file."""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dpr_paddle.common.runtime import host_line, isa_cap_env, max_isa, quiet_warnings  # noqa: E402

quiet_warnings()  # the bench's console as clean as the commands'

HOST = host_line()
if not os.environ.get("DPR_BENCH_HOST_SHOWN"):  # once per run, not again in the runs' child processes
    os.environ["DPR_BENCH_HOST_SHOWN"] = "1"
    print(f"host: {HOST}", file=sys.stderr)

# MiniLM-L6-H384 forward per token: 6 x (4*384^2 + 2*384*1536) MACs x 2, plus attention at L=128
FWD_FLOP_PER_TOKEN = 22.4e6


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    """GFLOP/s of a float32 n x n matmul in paddle (best of reps): the host's rate that the benchmarks' useful
    GFLOP/s are shares of, measured in the same run."""
    import paddle

    a, b = paddle.randn([n, n]), paddle.randn([n, n])
    (a @ b).numpy()
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        (a @ b).numpy()
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table from a header and rows of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def run_peer(peer_python: str, mode: str, **options) -> dict:
    """bench/peer.py `mode` with `--key value` options (`--key` alone for True, nothing for False or None), in
    the peer's venv; its JSON result."""
    import json
    import subprocess

    argv = [peer_python, os.path.join(ROOT, "bench", "peer.py"), mode]
    for key, value in options.items():
        if value is None or value is False:  # a switch left off
            continue
        argv += [f"--{key}"] if value is True else [f"--{key}", str(value)]  # True: a switch
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env=peer_env())
    return json.loads(out.stdout.strip().splitlines()[-1])


def peer_env() -> dict:
    """The environment for the peer's processes: ours, and under DPR_PADDLE_MAX_ISA the same cap for torch
    (ATEN_CPU_CAPABILITY for its own kernels; oneDNN's and MKL's variables as ours get them), so both sides
    run the emulated host's instructions."""
    env, level = dict(os.environ), max_isa()
    if level:
        env.update(isa_cap_env(), ATEN_CPU_CAPABILITY="avx2" if level == "avx2" else "avx512")
    return env


def save_results(path: str, rows: list, **extra) -> None:
    """Write the rows, the command line and any extra fields to `path` as JSON, atomically."""
    from dpr_paddle.common.files import write_json_atomic

    write_json_atomic(path, {**extra, "host": HOST, "rows": rows, "argv": sys.argv[1:]})


def start_milvus(base_dir: str):
    """A Milvus standalone server (the PyPI package `milvus`) started by `python -m dpr_paddle.milvus_server`
    on 127.0.0.1: (process, its http:// URI). Stop it with SIGINT."""
    import subprocess

    proc = subprocess.Popen([sys.executable, "-m", "dpr_paddle.milvus_server", "--base_dir", base_dir], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    uri = proc.stdout.readline().strip()
    if not uri.startswith("http://"):
        proc.kill()
        raise SystemExit("the Milvus server did not start")
    return proc, uri
