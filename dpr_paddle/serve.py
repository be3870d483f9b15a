"""`python -m dpr_paddle.serve` (dpr-serve): the retriever over HTTP (FastAPI + uvicorn).

    python -m dpr_paddle.serve --model_file save_biencoder/latest --encoded_ctx_file 'emb/wiki_*' \\
        --ctx_file psgs.tsv --host 127.0.0.1 --port 8080

    POST /search {"queries": ["who wrote hamlet"], "k": 10} -> {"results": [[{"id", "title", "text", "score"}, ...]]}
    GET  /health -> {"status": "ok", "mode", "index", "passages", "model_fingerprint", ...}

Takes dense_retriever.py's model and index flags (--hybrid, --bm25, --hnsw_index, ...). The model,
index and passage store load once at start-up; serving/http.py says how requests are answered.
"""
from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def main(argv=None) -> None:
    """Entry point of `python -m dpr_paddle.serve` and dpr-serve."""
    from .cli import run_main
    from .flags import ServeArgs, load_retriever, parse

    args = parse(ServeArgs, argv, description=__doc__)

    def body():
        import uvicorn

        from .serving.http import create_app

        app = create_app(load_retriever(args), max_k=args.max_k, max_queries=args.max_queries,
                         max_batch=args.max_batch)
        logger.info("serving on http://%s:%d (POST /search, GET /health)", args.host, args.port)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")

    run_main(body, needs_paddle=not args.bm25)


if __name__ == "__main__":
    main()
