"""`python -m dpr_paddle.serve` (dpr-serve): the retriever over HTTP (FastAPI + uvicorn).

    python -m dpr_paddle.serve --model_file save_biencoder/latest --encoded_ctx_file 'emb/wiki_*' \\
        --ctx_file psgs.tsv --hnsw_index --hybrid --host 127.0.0.1 --port 8080 --workers 2

    POST /search {"queries": ["who wrote hamlet"], "k": 10, "mode": "dense"} -> {"results": [[{"id", "title",
         "text", "score"}, ...]], "mode", "took_ms"}
    GET  /health -> {"status": "ok", "ready": true, "modes", "index", "passages", "model_fingerprint", ...}
    GET  /       -> a search page: each loaded retriever (dense, BM25, hybrid) side by side (--no_ui: none)

Takes dense_retriever.py's model and index flags (--hybrid, --bm25, --hnsw_index, --index milvus
--milvus_uri ...). The model, index and passage store load once at start-up. serving/http.py says
how requests are answered (queue bound, time limit, API key, CORS), serving/workers.py how
--workers processes share one port and one index. The default bind is 127.0.0.1; any other
address needs an API key (--api_key, or better the environment variable DPR_PADDLE_API_KEY).
SIGTERM lets in-flight requests finish.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import sys

logger = logging.getLogger(__name__)

API_KEY_ENV = "DPR_PADDLE_API_KEY"


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_key_for(host: str, flag: str | None) -> str | None:
    """The API key (the flag, else DPR_PADDLE_API_KEY); binding beyond loopback without one is refused."""
    from .common.errors import DprError

    key = flag or os.environ.get(API_KEY_ENV) or None
    if not key and not is_loopback(host):
        raise DprError(f"--host {host} lets other machines in: set an API key ({API_KEY_ENV}=... or --api_key), "
                       "which every request must then carry; or bind 127.0.0.1")
    return key


def main(argv=None) -> None:
    """Entry point of `python -m dpr_paddle.serve` and dpr-serve."""
    from .cli import expected_errors, one_line, run_main
    from .common.runtime import prepare_process, quiet_paddlenlp, usable_cores
    from .flags import ServeArgs, index_spec, load_retriever, parse, search_spec

    args = parse(ServeArgs, argv, description=__doc__)
    from .index.milvus import is_remote

    if args.workers > 1 and (args.index == "milvus" or args.milvus_collection) and not is_remote(args.milvus_uri or ""):
        print("error: --workers > 1 with Milvus needs a server (--milvus_uri http://HOST:PORT): a milvus-lite file "
              "opens in one process only", file=sys.stderr)
        raise SystemExit(2)
    threads = max(1, usable_cores() // args.workers) if args.workers > 1 else None
    needs_paddle = not args.bm25 or bool(args.rerank_model)

    def make_app(worker: int, shared: dict):
        from .serving.http import Limits, create_app

        try:
            if args.workers > 1:  # in the forked worker: Paddle loads here, never in the parent
                prepare_process(needs_paddle, threads)
                if needs_paddle:
                    quiet_paddlenlp()
            retriever = load_retriever(args, shared)
        except expected_errors() as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            raise SystemExit(2) from None
        limits = Limits(args.max_k, args.max_queries, args.max_chars, args.max_batch, args.max_queue,
                        args.request_timeout)
        logger.info("worker %d (pid %d) ready: %s", worker, os.getpid(), ", ".join(retriever.modes))
        return create_app(retriever, limits, api_key=key, cors_origins=args.cors_origins or (), ui=not args.no_ui,
                          worker=worker)

    def body():
        from .retrieval.searcher import preload
        from .serving.workers import bind, run

        sock = bind(args.host, args.port)
        # what the workers share read-only is loaded once, before they fork (no model: no Paddle yet)
        shared = preload(search_spec(args), args.ctx_file, args.encoded_ctx_file, index_spec(args)) \
            if args.workers > 1 else {}
        host = f"[{args.host}]" if ":" in args.host else args.host
        logger.info("serving on http://%s:%d with %d worker(s) (GET / for the search page, POST /search, GET /health)",
                    host, sock.getsockname()[1], args.workers)
        status = run(lambda worker: make_app(worker, shared), sock, args.workers, args.request_timeout + 5)
        if status:
            raise SystemExit(status)

    key = None
    try:
        key = api_key_for(args.host, args.api_key)
    except expected_errors() as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None
    run_main(body, needs_paddle=needs_paddle and args.workers == 1, threads=threads)


if __name__ == "__main__":
    main()
