"""A bounded load test of `python -m dpr_paddle.serve`, on 127.0.0.1 only: a fixed number of
requests from N concurrent clients (async httpx), with a time limit, mixing valid questions with
malformed bodies, huge k, empty and very long questions, unknown modes and non-UTF-8 bytes.

    .venv/bin/python bench/load.py --qa_file ../shared/data/squad1_open/qa_eval.csv --requests 20000 \\
        --clients 32 --json bench/results/load.json -- --model_name_or_path minilm \\
        --encoded_ctx_file 'runs/serve/emb_minilm_*' --ctx_file ../shared/data/squad1_open/passages.tsv --hnsw_index

Everything after `--` goes to `python -m dpr_paddle.serve`, which this script starts on a free
port (or give --url of a running server and --pid of its process). It reports throughput,
p50/p99 latency of the valid requests, the count of each status code, connection errors, and the
server's RSS (all its processes) after warm-up and at the end; and checks the targets:
zero 5xx and zero connection errors, every malformed request a 4xx with a JSON body, RSS growth
after warm-up <= 5 %, and every valid answer equal to the same question asked alone (ids and
order exactly, scores within 1e-4). Exit status 1 when a target is missed (with --check).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ("valid", "valid_batch", "bad_json", "wrong_type", "huge_k", "empty", "too_long", "non_utf8", "unknown_field",
         "bad_mode")
WEIGHTS = (70, 5, 4, 3, 4, 3, 3, 3, 3, 2)


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and all its descendants (a server's workers), from /proc."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration):
            pass
    return total


def request_for(kind: str, questions, rng: random.Random, k: int):
    """(json body or raw bytes, questions asked) of one request of `kind`."""
    q = questions[rng.randrange(len(questions))]
    if kind == "valid":
        return {"queries": [q], "k": k}, [q]
    if kind == "valid_batch":
        qs = [questions[rng.randrange(len(questions))] for _ in range(3)]
        return {"queries": qs, "k": k}, qs
    return {
        "bad_json": b'{"queries": ["' + q.encode()[:20] + b'", "k": ',
        "wrong_type": {"queries": q, "k": "ten"},
        "huge_k": {"queries": [q], "k": 10**12},
        "empty": {"queries": [" " * rng.randrange(3)], "k": k},
        "too_long": {"queries": [q * (1 + 50_000 // max(1, len(q)))], "k": k},
        "non_utf8": b'{"queries": ["\xff\xfe\xfa broken"], "k": 3}',
        "unknown_field": {"queries": [q], "k": k, "file": "/etc/passwd"},
        "bad_mode": {"queries": [q], "k": k, "mode": "../../etc"},
    }[kind], None


async def load(url: str, questions, requests: int, clients: int, time_limit: float, k: int, seed: int,
               reference: dict, headers: dict, valid_only: bool = False) -> dict:
    """Send `requests` requests from `clients` concurrent clients (stop issuing at `time_limit` s);
    `valid_only`: one valid question per request (a throughput measurement)."""
    import httpx

    rng = random.Random(seed)
    plan = ["valid"] * requests if valid_only else rng.choices(KINDS, weights=WEIGHTS, k=requests)
    bodies = [request_for(kind, questions, random.Random(seed * 1_000_003 + i), k) for i, kind in enumerate(plan)]
    status, latency, problems = Counter(), [], Counter()
    next_i, deadline = [0], time.perf_counter() + time_limit

    async def client(h):
        while next_i[0] < requests and time.perf_counter() < deadline:
            i = next_i[0]
            next_i[0] += 1
            body, asked = bodies[i]
            t0 = time.perf_counter()
            try:
                if isinstance(body, bytes):
                    r = await h.post(url + "/search", content=body, headers={**headers, "content-type": "application/json"})
                else:
                    r = await h.post(url + "/search", json=body, headers=headers)
            except httpx.HTTPError as e:
                status[f"error:{type(e).__name__}"] += 1
                continue
            ms = (time.perf_counter() - t0) * 1e3
            status[str(r.status_code)] += 1
            check(plan[i], asked, r, ms)

    def check(kind, asked, r, ms):
        if asked is None:  # malformed: a 4xx with a JSON body
            try:
                ok = 400 <= r.status_code < 500 and "detail" in r.json()
            except ValueError:
                ok = False
            problems["malformed_not_4xx_json"] += not ok
            return
        if r.status_code != 200:
            return
        latency.append(ms)
        for q, hits in zip(asked, r.json()["results"]):
            want = reference.get(q)
            if want is not None and not same_answer(hits, want):
                problems["answers_differing"] += 1

    async def one_client():
        # a client of its own per connection: httpx's shared pool costs more per request as connections grow
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=1)) as h:
            await client(h)

    t0 = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    seconds = time.perf_counter() - t0
    sent = sum(status.values())
    return {"requests": sent, "clients": clients, "seconds": round(seconds, 2), "rps": round(sent / seconds, 1),
            "p50_ms": percentile(latency, 50), "p99_ms": percentile(latency, 99), "status": dict(sorted(status.items())),
            "kinds": dict(Counter(plan[:sent])), **{k: problems[k] for k in ("malformed_not_4xx_json", "answers_differing")}}


def percentile(values, p):
    import numpy as np

    return round(float(np.percentile(values, p)), 2) if values else None


def same_answer(hits, want, tol: float = 1e-4) -> bool:
    """Same ids in the same order and scores within `tol` (a batch may round the last bits differently)."""
    return [h["id"] for h in hits] == [w["id"] for w in want] and all(
        abs(h["score"] - w["score"]) <= tol * max(1.0, abs(w["score"])) for h, w in zip(hits, want))


def references(url: str, questions, k: int, headers: dict) -> dict:
    """Each question asked alone, one request at a time: the answers the load must reproduce."""
    import httpx

    with httpx.Client(timeout=120) as h:
        return {q: h.post(url + "/search", json={"queries": [q], "k": k}, headers=headers).json()["results"][0]
                for q in dict.fromkeys(questions)}


def start_server(serve_args, log_path: str, env=None):
    """`python -m dpr_paddle.serve SERVE_ARGS` on a free port of 127.0.0.1; (process, url) once /health answers."""
    from dpr_paddle.common.net import free_port, wait_healthy

    port = free_port()
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "dpr_paddle.serve", "--host", "127.0.0.1", "--port", str(port),
                             *serve_args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        if wait_healthy(url + "/health", proc, 600, auth_headers()):
            return proc, url
    except TimeoutError:
        proc.kill()
        raise SystemExit(f"the server did not answer within 10 minutes: see {log_path}") from None
    raise SystemExit(f"the server stopped: see {log_path}")


def auth_headers() -> dict:
    key = os.environ.get("DPR_PADDLE_API_KEY")
    return {"X-API-Key": key} if key else {}


def read_questions(path: str, limit: int):
    """The first `limit` questions of a DPR qa.csv (question<TAB>answers)."""
    with open(path, encoding="utf-8") as f:
        return [line.split("\t")[0] for line in f if line.strip()][:limit]


def run(url: str, pid: int, questions, requests: int, clients: int, time_limit: float, k: int = 10,
        warmup: int = 0, seed: int = 0) -> dict:
    """References, a warm-up load, RSS, the measured load, RSS again: the report (see the module)."""
    headers = auth_headers()
    reference = references(url, questions, k, headers)
    warm = warmup or max(200, requests // 20)
    asyncio.run(load(url, questions, warm, clients, time_limit, k, seed + 1, reference, headers))
    rss0 = rss_bytes(pid)
    report = asyncio.run(load(url, questions, requests, clients, time_limit, k, seed, reference, headers))
    rss1 = rss_bytes(pid)
    report.update(rss_after_warmup_mb=round(rss0 / 2**20, 1), rss_after_mb=round(rss1 / 2**20, 1),
                  rss_growth=round(rss1 / rss0 - 1, 4) if rss0 else None, warmup_requests=warm)
    errors = sum(v for s, v in report["status"].items() if s.startswith("5") or s.startswith("error"))
    report["targets"] = {"no_5xx_or_connection_errors": errors == 0,
                         "malformed_get_4xx_json": report["malformed_not_4xx_json"] == 0,
                         "rss_growth_le_5pct": report["rss_growth"] is not None and report["rss_growth"] <= 0.05,
                         "answers_equal": report["answers_differing"] == 0,
                         "all_sent": report["requests"] == requests}
    return report


def main() -> None:
    argv = sys.argv[1:]
    serve_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qa_file", required=True, help="questions: DPR qa.csv (question<TAB>answers)")
    ap.add_argument("--questions", type=int, default=500, help="distinct questions used")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--time_limit", type=float, default=900.0, help="seconds; no request is sent after it")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--url", help="a running server on 127.0.0.1 (else one is started with the args after --)")
    ap.add_argument("--pid", type=int, help="with --url: the server's process id, for its RSS")
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args(argv)
    if args.url and not args.url.startswith(("http://127.0.0.1:", "http://localhost:")):
        raise SystemExit("--url must be on 127.0.0.1: this script only loads local servers")
    proc = None
    if not args.url:
        os.makedirs(os.path.join(ROOT, "runs"), exist_ok=True)
        proc, args.url = start_server(serve_args, os.path.join(ROOT, "runs", "load_server.log"))
        args.pid = proc.pid
    try:
        report = run(args.url, args.pid, read_questions(args.qa_file, args.questions), args.requests, args.clients,
                     args.time_limit, args.k)
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=120)
    report["serve_args"] = serve_args
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(report, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    if args.check and not all(report["targets"].values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
