"""One port, one or several server processes (`python -m dpr_paddle.serve --workers N`).

The parent binds the socket and loads what the workers can share read-only (retrieval.searcher.
preload: the hnsw graph, the memory-mapped shards, BM25), then forks N workers. Each worker loads
its own question encoder, passage store connection and Milvus client (none of which may cross a
fork; Paddle is not imported before the fork) and runs uvicorn on the inherited socket; the kernel
spreads connections over the workers. Pages of the shared parts stay shared while nobody writes
them, so an extra worker costs its encoder and runtime, not another copy of the index.

The parent supervises: SIGTERM or SIGINT is passed on to every worker, each of which stops
accepting and lets its in-flight requests finish; a worker that crashes is started again; a worker
that exits with a configuration error (status 2) stops the server with that status. A parent that
dies without a word (kill -9) takes its workers with it (`die_with_parent`), so the port is free
for a restart.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from typing import Callable

logger = logging.getLogger(__name__)

CONFIG_ERROR = 2  # what cli.run_main exits with on an expected error


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (IPv6 when host has a colon), inheritable by forks."""
    from ..common.errors import DprError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they are TCP, and
    # with Nagle on every response waits ~40 ms for the client's delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise DprError(f"cannot listen on {host}:{port}: {e.strerror}; pick another --port or --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve_socket(app, sock: socket.socket, graceful_seconds: float) -> None:
    """Run uvicorn with `app` on an already bound socket until SIGTERM/SIGINT; in-flight requests
    get up to `graceful_seconds` to finish."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=graceful_seconds,
                            lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


def run(make_app: Callable[[int], object], sock: socket.socket, workers: int, graceful_seconds: float) -> int:
    """Serve `make_app(worker)` on `sock`: in this process when `workers` is 1, else in `workers`
    forked processes supervised here. Returns the exit status."""
    if workers <= 1:
        serve_socket(make_app(0), sock, graceful_seconds)
        return 0
    children, stopping = {}, [False]

    def stop(signum, frame):
        stopping[0] = True
        for pid in list(children):
            _kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for worker in range(workers):
        children[_fork(make_app, sock, worker, graceful_seconds)] = worker
    status = 0
    while children:
        pid, code = os.wait()
        worker = children.pop(pid, None)
        code = os.waitstatus_to_exitcode(code)
        if worker is None or stopping[0]:
            continue
        if code == CONFIG_ERROR:  # the same error would recur in every worker: stop
            status = CONFIG_ERROR
            stop(None, None)
            continue
        logger.error("worker %d (pid %d) ended with status %d; starting it again", worker, pid, code)
        time.sleep(1.0)
        children[_fork(make_app, sock, worker, graceful_seconds)] = worker
    return status


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int) -> None:
    """Have the kernel send this process SIGTERM when the process that forked it dies, however it dies
    (kill -9 included): orphaned workers would go on serving and hold the port, so a restart could not
    bind it. SIGTERM lets a worker finish its in-flight requests first. Linux only (elsewhere a no-op)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request was made
        os._exit(0)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _fork(make_app, sock, worker: int, graceful_seconds: float) -> int:
    """Start one worker process; returns its pid. The child never returns from here."""
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # uvicorn installs its own graceful handlers
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    die_with_parent(parent)
    code = 1
    try:
        serve_socket(make_app(worker), sock, graceful_seconds)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - a worker's crash is logged; the parent starts it again
        logger.exception("worker %d failed", worker)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
