"""The retriever over HTTP (FastAPI + uvicorn, which PaddleNLP already installs); started by
`python -m dpr_paddle.serve`.

    POST /search {"queries": ["who wrote hamlet"], "k": 10} -> {"results": [[{"id", "title", "text", "score"}, ...]]}
    GET  /health -> {"status": "ok", "mode", "index", "passages", "model_fingerprint", ...}

Takes dense_retriever.py's model and index flags (--hybrid, --bm25, --hnsw_index, ...). The model,
index and passage store load once at start-up. A malformed request gets a 4xx with a JSON reason
(FastAPI's validation errors are 422); an error inside the retriever is answered with a JSON
reason too, never a traceback.
"""

import collections
import logging
import threading
from concurrent.futures import Future
from typing import List

logger = logging.getLogger(__name__)


class MicroBatcher:
    """Answers concurrent requests in batches: one thread takes every waiting request with the
    same k (up to `max_batch` questions), searches them as one batch and hands each request its
    rows. Encoding a batch of 8 costs far less than 8 encodings of one, so throughput grows with
    concurrency instead of falling. Requests with another k wait for the next round, so a
    request's hnsw ef (which follows k) never depends on its neighbours."""

    def __init__(self, retriever, max_batch: int = 32):
        self.retriever, self.max_batch = retriever, max(1, max_batch)
        self._pending = collections.deque()
        self._cv = threading.Condition()
        threading.Thread(target=self._run, name="dpr-batcher", daemon=True).start()

    def search(self, queries: List[str], k: int):
        """Block until this request's results are ready; raises what the search raised."""
        future: Future = Future()
        with self._cv:
            self._pending.append((queries, k, future))
            self._cv.notify()
        return future.result()

    def _take(self):
        with self._cv:
            while not self._pending:
                self._cv.wait()
            first = self._pending.popleft()
            batch, n, rest = [first], len(first[0]), collections.deque()
            while self._pending and n < self.max_batch:
                item = self._pending.popleft()
                if item[1] == first[1] and n + len(item[0]) <= self.max_batch:
                    batch.append(item)
                    n += len(item[0])
                else:
                    rest.append(item)
            self._pending.extendleft(reversed(rest))
        return batch

    def _run(self):
        while True:
            batch = self._take()
            questions = [q for queries, _, _ in batch for q in queries]
            try:
                results = self.retriever.search(questions, k=batch[0][1])
            except Exception:  # noqa: BLE001 - one request's fault must not fail the others batched with it
                self._one_by_one(batch)
                continue
            row = 0
            for queries, _, future in batch:
                future.set_result(results[row : row + len(queries)])
                row += len(queries)

    def _one_by_one(self, batch):
        """After a failed batch, each request searched alone: only the one that fails gets its error."""
        for queries, k, future in batch:
            try:
                future.set_result(self.retriever.search(queries, k=k))
            except Exception as e:  # noqa: BLE001 - handed to its own request
                future.set_exception(e)


def create_app(retriever, max_k: int = 1000, max_queries: int = 256, max_chars: int = 2000, max_batch: int = 32):
    """A FastAPI app around a loaded `api.Retriever`; concurrent requests are micro-batched."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, Field

    from ..common.errors import DprError
    from .api import check_questions

    class SearchRequest(BaseModel, extra="forbid"):
        queries: List[str] = Field(..., min_length=1, max_length=max_queries)
        k: int = Field(10, ge=1, le=max_k)

    app = FastAPI(title="dpr_paddle retriever", version="1")
    batcher = MicroBatcher(retriever, max_batch)  # one search at a time, each as large a batch as waits

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        # FastAPI's own answer echoes the input: a 50 MB body back, or a NaN that JSON cannot carry (a 500)
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()[:10]]
        return JSONResponse(status_code=422, content={"detail": errors})

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
        try:  # checked before it joins a batch: a lone surrogate would fail the requests batched with it
            check_questions(req.queries)
        except DprError as e:
            return JSONResponse(status_code=422, content={"detail": str(e)})
        try:
            return {"results": batcher.search(req.queries, req.k)}
        except DprError as e:
            return JSONResponse(status_code=400, content={"detail": str(e)})

    return app
