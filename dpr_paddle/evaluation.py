"""`python -m dpr_paddle.evaluation NAME=FILE ...`: one top-k table from retriever metrics files."""
from __future__ import annotations

import argparse
import json


def main(argv=None) -> None:
    """Print a top-k table from retriever metrics files: `python -m dpr_paddle.evaluation NAME=FILE ...`."""
    from .retrieval.evaluation import format_top_k_table

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("runs", nargs="+", help="NAME=path/to/results.json.metrics.json")
    args = ap.parse_args(argv)
    rows = {}
    for item in args.runs:
        name, _, path = item.partition("=")
        with open(path, encoding="utf-8") as f:
            metrics = json.load(f)
        rows[name] = {int(k): v for k, v in metrics["top_k_accuracy"].items()}
    ks = sorted({k for acc in rows.values() for k in acc})
    print(format_top_k_table(rows, ks))


if __name__ == "__main__":
    main()
