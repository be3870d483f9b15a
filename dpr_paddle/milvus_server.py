"""`python -m dpr_paddle.milvus_server` (dpr-milvus-server): a local Milvus standalone server for users
without Docker, from the PyPI package `milvus` (`pip install milvus==2.3.5`, or `-r requirements-dev.txt`).

    python -m dpr_paddle.milvus_server --base_dir runs/milvus     # prints http://127.0.0.1:PORT, Ctrl-C stops
    python dense_retriever.py ... --index milvus --milvus_uri http://127.0.0.1:PORT

It is a real gRPC server with embedded etcd and local storage (version 2.3.5-lite), the same code
path as a production server or cluster (docker compose, see the README); it starts in ~8 s here.
"""
from __future__ import annotations

import argparse


def main(argv=None) -> None:
    """Entry point of `python -m dpr_paddle.milvus_server` and dpr-milvus-server."""
    from .cli import run_main

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base_dir", required=True, help="where the server keeps its data (reused on the next start)")
    args = p.parse_args(argv)

    def body():
        import time

        from .common.errors import DprError

        try:
            from milvus import MilvusServer
        except ImportError:
            raise DprError("the Milvus server package is not installed: pip install milvus==2.3.5") from None
        server = MilvusServer()
        server.set_base_dir(args.base_dir)
        server.start()
        print(f"http://127.0.0.1:{server.listen_port}", flush=True)
        try:
            while server.running:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()

    run_main(body, needs_paddle=False)


if __name__ == "__main__":
    main()
