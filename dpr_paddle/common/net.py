"""Local ports and local servers: a free port on 127.0.0.1, and waiting until a server started as a
child process answers. The one copy of each that the Milvus server command, the benchmarks and the
tests use (standard library only)."""
from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from typing import Optional


def free_port(wanted: int = 0) -> int:
    """`wanted` when it is free on 127.0.0.1, else a port the system gives."""
    for port in (wanted, 0) if wanted else (0,):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free port on 127.0.0.1")


def wait_healthy(url: str, proc=None, timeout: float = 120.0, headers: Optional[dict] = None) -> bool:
    """Poll GET `url` until it answers 200 (True), or the child process `proc` ends first (False);
    TimeoutError after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as r:
                if r.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:g} s")
