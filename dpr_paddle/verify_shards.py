"""`python -m dpr_paddle.verify_shards 'OUT_FILE_*'` (dpr-verify-shards): read embedding shards whole
and check them against what was written: meta.json, ids.txt against ids.sha1, vectors.npy's shape
and dtype against meta.json and its bytes against vectors.sha1. Loading a shard checks all but the
last (hashing every vector costs seconds per GB); run this after copying shards between machines
or when a disk is suspect. One line per shard; exit 1 when any is damaged."""
from __future__ import annotations

import argparse


def main(argv=None) -> None:
    """Entry point of `python -m dpr_paddle.verify_shards` and dpr-verify-shards."""
    from .cli import run_main

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("encoded_ctx_file", help="shard directories: a glob such as 'runs/emb_*', quoted")
    args = p.parse_args(argv)

    def body():
        from .common.errors import DprError
        from .index.shards import shard_paths, verify_shard

        damaged = 0
        for path in shard_paths(args.encoded_ctx_file):
            try:
                status = verify_shard(path)
            except DprError as e:
                damaged += 1
                status = f"error: {e}"
            print(f"{path}: {status}", flush=True)
        if damaged:
            raise SystemExit(1)

    run_main(body, needs_paddle=False)


if __name__ == "__main__":
    main()
