"""The retriever over HTTP (FastAPI + uvicorn, which PaddleNLP already installs); started by
`python -m dpr_paddle.serve`.

    POST /search {"queries": ["who wrote hamlet"], "k": 10, "mode": "dense"}
         -> {"results": [[{"id", "title", "text", "score"}, ...]], "mode": "dense", "took_ms": 12.5}
    GET  /health -> {"status": "ok", "ready": true, "modes", "index", "passages", "model_fingerprint", ...}
    GET  /       -> the search page (page.html; off with --no_ui); GET /favicon.ico -> 204

How a request is answered:
- A malformed request gets a 4xx with a JSON reason (422 for what validation refuses, with the
  input never echoed back); an error inside the retriever is a JSON reason too, never a traceback.
- Valid requests wait in a bounded queue (`Limits.max_queue`); one thread searches what waits as
  one batch. A full queue is answered at once with 503 and `Retry-After`, instead of a queue that
  grows without bound; a request still waiting after `Limits.timeout` seconds gets the same: the
  batcher checks each request's deadline before it starts it (an asyncio timer alone fires late when
  the search thread holds the GIL, and the request is then answered long after its limit).
- With an API key every request but the static page needs `Authorization: Bearer KEY` or
  `X-API-Key: KEY` (401 otherwise, with nothing in the body). CORS is off unless origins are given.
- Each request is one log line (logger `dpr_paddle.serving.access`): method, path, status, ms.
"""

import asyncio
import collections
import hmac
import logging
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import List, Optional, Sequence

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("dpr_paddle.serving.access")

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page.html")


class Overloaded(Exception):
    """The queue of waiting requests is full: the client should retry later (HTTP 503)."""


class TimedOut(Exception):
    """The request's time limit passed while it waited for a batch; it was never started (HTTP 503)."""


class MicroBatcher:
    """Answers concurrent requests in batches: one thread takes every waiting request with the
    same k and mode (up to `max_batch` questions), searches them as one batch and hands each
    request its rows. Encoding a batch of 8 costs far less than 8 encodings of one, so throughput
    grows with concurrency instead of falling. Requests with another k wait for the next round, so
    a request's hnsw ef (which follows k) never depends on its neighbours. At most `max_queue`
    requests wait; `submit` refuses more with Overloaded. A request whose `timeout` has passed
    when its turn comes is not searched: its future raises TimedOut."""

    def __init__(self, retriever, max_batch: int = 32, max_queue: int = 256, timeout: Optional[float] = None):
        self.retriever, self.max_batch, self.max_queue = retriever, max(1, max_batch), max(1, max_queue)
        self.timeout = timeout
        self._pending = collections.deque()
        self._cv = threading.Condition()
        self.in_flight = 0
        threading.Thread(target=self._run, name="dpr-batcher", daemon=True).start()

    @property
    def queued(self) -> int:
        """Requests waiting for a batch."""
        return len(self._pending)

    def submit(self, queries: List[str], k: int, mode: Optional[str] = None) -> Future:
        """A future of this request's results; raises Overloaded when `max_queue` requests wait."""
        future: Future = Future()
        with self._cv:
            if len(self._pending) >= self.max_queue:
                raise Overloaded(f"{len(self._pending)} requests are waiting")
            deadline = time.monotonic() + self.timeout if self.timeout else None
            self._pending.append((queries, k, mode, future, deadline))
            self._cv.notify()
        return future

    def _take(self):
        with self._cv:
            while True:
                while not self._pending:
                    self._cv.wait()
                first = self._pending.popleft()
                if self._start(first):
                    break
            batch, n, rest = [first], len(first[0]), collections.deque()
            while self._pending and n < self.max_batch:
                item = self._pending.popleft()
                if item[1:3] == first[1:3] and n + len(item[0]) <= self.max_batch:
                    if self._start(item):
                        batch.append(item)
                        n += len(item[0])
                else:
                    rest.append(item)
            self._pending.extendleft(reversed(rest))
            self.in_flight = len(batch)
        return batch

    def _start(self, item) -> bool:
        """Whether to search this request now: not if its client gave up (cancelled), nor if its deadline
        has passed (then its future raises TimedOut)."""
        future, deadline = item[3], item[4]
        if not future.set_running_or_notify_cancel():
            return False
        if deadline is not None and time.monotonic() > deadline:
            future.set_exception(TimedOut(f"waited {self.timeout:g} s"))
            return False
        return True

    def _run(self):
        while True:
            batch = self._take()
            questions = [q for queries, *_ in batch for q in queries]
            try:
                results = self.retriever.search(questions, k=batch[0][1], mode=batch[0][2])
            except Exception:  # noqa: BLE001 - one request's fault must not fail the others batched with it
                self._one_by_one(batch)
            else:
                row = 0
                for queries, _, _, future, _ in batch:
                    future.set_result(results[row : row + len(queries)])
                    row += len(queries)
            self.in_flight = 0

    def _one_by_one(self, batch):
        """After a failed batch, each request searched alone: only the one that fails gets its error."""
        for queries, k, mode, future, _ in batch:
            try:
                future.set_result(self.retriever.search(queries, k=k, mode=mode))
            except Exception as e:  # noqa: BLE001 - handed to its own request
                future.set_exception(e)


@dataclass(frozen=True)
class Limits:
    """What one request may ask and how long it may wait: `max_k`, `max_queries` per request,
    `max_chars` per question; `max_batch` questions searched together, `max_queue` requests waiting
    (more: 503), `timeout` seconds a request may wait for its answer (then 503)."""

    max_k: int = 1000
    max_queries: int = 256
    max_chars: int = 2000
    max_batch: int = 32
    max_queue: int = 256
    timeout: float = 30.0


class Guard:
    """ASGI middleware around the app: the API key check (when a key is set) and one access log
    line per request. Pure ASGI rather than FastAPI's `@middleware`, which costs a task per request."""

    def __init__(self, app, api_key: Optional[str] = None, open_paths: Sequence[str] = ("/", "/favicon.ico")):
        self.app, self.open_paths = app, set(open_paths)
        self.key = api_key.encode() if api_key else None

    def authorised(self, headers) -> bool:
        """Whether the request carries the key (compared in constant time)."""
        for name, value in headers:
            if name == b"x-api-key" and hmac.compare_digest(value, self.key):
                return True
            if name == b"authorization" and value[:7].lower() == b"bearer " and hmac.compare_digest(value[7:], self.key):
                return True
        return False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        if self.key and scope["path"] not in self.open_paths and not self.authorised(scope["headers"]):
            await send_status({"type": "http.response.start", "status": 401, "headers": [
                (b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
            await send({"type": "http.response.body", "body": b'{"detail":"unauthorized"}'})
        else:
            await self.app(scope, receive, send_status)
        client = scope.get("client") or ("-", 0)
        access_logger.info("%s %s %s %d %.1f ms", client[0], scope["method"], scope["path"], status[0],
                           (time.perf_counter() - t0) * 1e3)


def create_app(retriever, limits: Limits = Limits(), api_key: Optional[str] = None, cors_origins: Sequence[str] = (),
               ui: bool = True, worker: int = 0):
    """The ASGI app around a loaded `api.Retriever`: concurrent requests are micro-batched, the
    queue is bounded, and `api_key`, `cors_origins` and `ui` (the page at GET /) as the module says."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from pydantic import BaseModel, Field

    from ..common.errors import DprError

    class SearchRequest(BaseModel, extra="forbid", strict=True):  # strict: a JSON true is not a k, "5" is not one
        queries: List[str] = Field(..., min_length=1, max_length=limits.max_queries)
        k: int = Field(10, ge=1, le=limits.max_k)
        mode: Optional[str] = None

    app = FastAPI(title="dpr_paddle retriever", version="1", docs_url=None, redoc_url=None)
    batcher = MicroBatcher(retriever, limits.max_batch, limits.max_queue, limits.timeout)
    retry_after = {"Retry-After": str(max(1, round(limits.timeout / 10)))}

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
    async def health():
        return {"status": "ok", "ready": True, **retriever.info, "pid": os.getpid(), "worker": worker,
                "queued": batcher.queued, "in_flight": batcher.in_flight}

    if ui:
        with open(PAGE, encoding="utf-8") as f:
            page = f.read()

        @app.get("/", response_class=HTMLResponse)
        async def search_page():
            return page

        @app.get("/favicon.ico")
        async def favicon():  # a browser asks for it with every page: no content, rather than a 404
            return Response(status_code=204)

    @app.post("/search")
    async def search(req: SearchRequest):
        problem = request_problem(req.queries, req.mode, retriever.modes, limits.max_chars)
        if problem:
            return JSONResponse(status_code=422, content={"detail": problem})
        t0 = time.perf_counter()
        try:
            future = asyncio.wrap_future(batcher.submit(req.queries, req.k, req.mode))
        except Overloaded:
            return JSONResponse(status_code=503, headers=retry_after, content={"detail": "busy: try again shortly"})
        try:  # the batcher refuses a request whose time is up (TimedOut); wait_for bounds one already started
            results = await asyncio.wait_for(future, timeout=limits.timeout)
        except (asyncio.TimeoutError, TimedOut):
            return JSONResponse(status_code=503, headers=retry_after,
                                content={"detail": f"not answered within {limits.timeout:g} s: try again shortly"})
        except DprError as e:
            return JSONResponse(status_code=400, content={"detail": str(e)})
        return {"results": results, "mode": req.mode or retriever.mode,
                "took_ms": round((time.perf_counter() - t0) * 1e3, 2)}

    guarded = Guard(app, api_key)
    if not cors_origins:
        return guarded
    from starlette.middleware.cors import CORSMiddleware

    # outside the key check: a browser's preflight carries no key, and a 401 must reach the page readable
    return CORSMiddleware(guarded, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                          allow_headers=["Content-Type", "Authorization", "X-API-Key"])


def request_problem(queries: List[str], mode: Optional[str], modes: List[str], max_chars: int) -> Optional[str]:
    """Why a request's questions or mode are refused (422), or None. Checked before the request
    joins a batch: a lone surrogate would otherwise fail the requests batched with it."""
    from ..common.errors import DprError
    from .api import check_questions

    if mode is not None and mode not in modes:
        return f"mode {mode!r} is not loaded here; one of {modes}"
    try:
        check_questions(queries, max_chars)  # the API's own rule: the same questions are refused both ways
    except DprError as e:
        return str(e)
    return None
