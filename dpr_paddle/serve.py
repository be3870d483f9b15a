"""The retriever over HTTP (FastAPI + uvicorn, which PaddleNLP already installs).

    python -m dpr_paddle.serve --model_file save_biencoder/latest --encoded_ctx_file 'emb/wiki_*' \
        --ctx_file psgs.tsv --host 127.0.0.1 --port 8080

    POST /search {"queries": ["who wrote hamlet"], "k": 10} -> {"results": [[{"id", "title", "text", "score"}, ...]]}
    GET  /health -> {"status": "ok", "mode", "index", "passages", "model_fingerprint", ...}

Takes dense_retriever.py's model and index flags (--hybrid, --bm25, --hnsw_index, ...). The model,
index and passage store load once at start-up. A malformed request gets a 4xx with a JSON reason
(FastAPI's validation errors are 422); an error inside the retriever is answered with a JSON
reason too, never a traceback.
"""

import logging
import threading
from typing import List

logger = logging.getLogger(__name__)


def create_app(retriever, max_k: int = 1000, max_queries: int = 256, max_chars: int = 2000):
    """A FastAPI app around a loaded `api.Retriever`."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, Field

    from .errors import DprError

    class SearchRequest(BaseModel, extra="forbid"):
        queries: List[str] = Field(..., min_length=1, max_length=max_queries)
        k: int = Field(10, ge=1, le=max_k)

    app = FastAPI(title="dpr_paddle retriever", version="1")
    lock = threading.Lock()  # one search at a time: each already uses every core for encoding

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):  # never a traceback to the client
        logger.exception("error answering %s", request.url.path)
        return JSONResponse(status_code=500, content={"detail": f"internal error: {type(exc).__name__}"})

    @app.get("/health")
    def health():
        return {"status": "ok", **retriever.info}

    @app.post("/search")
    def search(req: SearchRequest):
        bad = [i for i, q in enumerate(req.queries) if not q.strip() or len(q) > max_chars]
        if bad:
            return JSONResponse(status_code=422, content={
                "detail": f"queries {bad[:10]} are empty or longer than {max_chars} characters"})
        try:
            with lock:
                return {"results": retriever.search(req.queries, k=req.k)}
        except DprError as e:
            return JSONResponse(status_code=400, content={"detail": str(e)})

    return app


def main(argv=None) -> None:
    """CLI entry point."""
    import dpr_paddle  # noqa: F401  (CPU thread defaults before paddle loads)

    from .api import from_args
    from .cli import run_main
    from .config import ServeArgs, parse

    args = parse(ServeArgs, argv, description=__doc__)

    def body():
        import uvicorn

        app = create_app(from_args(args), max_k=args.max_k, max_queries=args.max_queries)
        logger.info("serving on http://%s:%d (POST /search, GET /health)", args.host, args.port)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")

    run_main(body)


if __name__ == "__main__":
    main()
