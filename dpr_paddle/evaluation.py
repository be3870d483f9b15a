"""`python -m dpr_paddle.evaluation NAME=FILE ...`: the tables of several retrievers' metrics files side by
side: top-k answer accuracy for the runs that have answers, MRR@10, nDCG@10, MAP and Recall@k for the
runs that were given relevance labels (`--qrels`), as BEIR folders are."""
from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> None:
    """Print the metrics tables of retriever metrics files: `python -m dpr_paddle.evaluation NAME=FILE ...`."""
    from .cli import expected_errors, one_line
    from .common.errors import DprError
    from .retrieval.evaluation import format_top_k_table
    from .retrieval.qrels import METRIC_KEYS, format_gold_table

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("runs", nargs="+", help="NAME=path/to/results.json.metrics.json")
    args = ap.parse_args(argv)

    def body():
        top_k, gold = {}, {}
        for item in args.runs:
            name, _, path = item.partition("=")
            if not path:
                raise DprError(f"{item!r}: give NAME=path/to/results.json.metrics.json")
            with open(path, encoding="utf-8") as f:
                try:
                    metrics = json.load(f)
                except ValueError:
                    raise DprError(f"{path}: not a metrics file (not JSON)") from None
            if not isinstance(metrics, dict) or not ("top_k_accuracy" in metrics or "mrr@10" in metrics):
                raise DprError(f"{path}: not a metrics file of dense_retriever.py (no top_k_accuracy or mrr@10)")
            if "top_k_accuracy" in metrics:
                top_k[name] = {int(k): v for k, v in metrics["top_k_accuracy"].items()}
            if all(k in metrics for k in METRIC_KEYS):
                gold[name] = {k: metrics[k] for k in METRIC_KEYS}
        if top_k:
            print(format_top_k_table(top_k, sorted({k for acc in top_k.values() for k in acc})))
        if gold:
            print(("\n" if top_k else "") + format_gold_table(gold))

    try:  # no process set-up: this reads JSON, and its table is what `make demo` ends with
        body()
    except expected_errors() as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
