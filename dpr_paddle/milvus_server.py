"""`python -m dpr_paddle.milvus_server` (dpr-milvus-server): a local Milvus standalone server for users
without Docker, from the PyPI package `milvus` (`pip install milvus==2.3.5`, or `-r requirements-dev.txt`).

    python -m dpr_paddle.milvus_server --base_dir runs/milvus     # prints http://127.0.0.1:PORT, Ctrl-C stops
    python dense_retriever.py ... --index milvus --milvus_uri http://127.0.0.1:PORT

It is a real gRPC server with embedded etcd and local storage (version 2.3.5-lite), the same code
path as a production server or cluster (docker compose, see the README); it starts in ~8 s here.
It listens on every interface without authentication (the package's configuration): keep it
behind a firewall off a trusted network.
"""
from __future__ import annotations

import argparse

from .common.net import free_port, wait_healthy

START_TIMEOUT = 180.0  # seconds; the package's own wait, which went on this long even after the server had died


def own_etcd_ports(base_dir: str) -> int:
    """Give the embedded etcd its own client and peer ports; returns the client port. The package
    picks free ports for Milvus but leaves etcd's peer port at 2380, so a second server on the machine
    died (a nil-pointer panic after 'bind: address already in use'). The peer port is kept in
    BASE_DIR/etcd.yaml, as etcd's stored membership names it, and reused on the next start."""
    import os
    import re

    path = os.path.join(os.path.abspath(base_dir), "etcd.yaml")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    old = open(path, encoding="utf-8").read() if os.path.isfile(path) else ""
    found = re.search(r"listen-peer-urls: http://127.0.0.1:(\d+)", old)
    peer = free_port(int(found.group(1)) if found else 0)
    client = free_port()
    while client == peer:
        client = free_port()
    urls = {"listen-client-urls": client, "advertise-client-urls": client, "listen-peer-urls": peer,
            "initial-advertise-peer-urls": peer}
    text = "".join(f"{k}: http://127.0.0.1:{v}\n" for k, v in urls.items())
    text += f"initial-cluster: default=http://127.0.0.1:{peer}\nname: default\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    os.environ["ETCD_CONFIG_PATH"] = path  # Milvus reads etcd.config.path from the environment
    return client


def started(server, base_dir: str) -> None:
    """Return once `server` answers its health check; a server that exits first, or never answers, is
    one line naming its log (the package's own wait polled a dead server for three minutes, then said
    only that it had not started)."""
    import os
    import time

    from .common.errors import DprError

    log = os.path.join(os.path.abspath(base_dir), "logs", "milvus-stderr.log")
    try:
        alive = wait_healthy(f"http://127.0.0.1:{server.webservice_port}/healthz", server.server_proc, START_TIMEOUT)
    except TimeoutError:
        raise DprError(f"the Milvus server did not answer within {START_TIMEOUT:g} s; see {log}") from None
    if alive:
        time.sleep(1)  # as the package's own wait does: its health check answers a moment before its gRPC port
        return
    server.server_proc.wait()
    with open(log, encoding="utf-8", errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    raise DprError(f"the Milvus server exited with status {server.server_proc.returncode} while starting; the "
                   f"last line of {log}: {lines[-1] if lines else '(empty)'}")


def main(argv=None) -> None:
    """Entry point of `python -m dpr_paddle.milvus_server` and dpr-milvus-server."""
    from .cli import run_main

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base_dir", required=True, help="where the server keeps its data (reused on the next start)")
    args = p.parse_args(argv)

    def body():
        import signal
        import time

        from .common.errors import DprError

        try:
            from milvus import MilvusServer
        except ImportError:
            raise DprError("the Milvus server package is not installed: pip install milvus==2.3.5") from None

        def interrupt(signum, frame):
            raise KeyboardInterrupt

        # Ctrl-C and SIGTERM both stop the Milvus child first. Both are set explicitly: a shell starts background
        # jobs with SIGINT ignored, which Python keeps (the server then outlived every Ctrl-C sent by a script,
        # e.g. a test run's teardown), and SIGTERM's default would end this process and orphan the server.
        signal.signal(signal.SIGINT, interrupt)
        signal.signal(signal.SIGTERM, interrupt)
        server = MilvusServer(wait_for_started=False)
        try:
            server.config.update(etcd_port=own_etcd_ports(args.base_dir))
            server.set_base_dir(args.base_dir)
            server.start()
            started(server, args.base_dir)
            print(f"http://127.0.0.1:{server.listen_port}", flush=True)
            while server.running:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()

    run_main(body, needs_paddle=False)


if __name__ == "__main__":
    main()
