"""Merge per-shard top-k files searched on different machines and evaluate, as dense_retriever.py
would have in one process (Tevatron's reducer).

    python dense_retriever.py ... --encoded_ctx_file emb/wiki_3 --topk_out runs/topk_3.npz   # on each machine
    python -m dpr_paddle.reduce 'runs/topk_*.npz' --qa_file nq-test.qa.csv --ctx_file psgs_w100.tsv \
        --out_file results.json

The files must come from one model and one questions file and cover every shard exactly once.
The merge is the one the retriever does in process (`index.merge_topk`), so the result is the same.
"""
from __future__ import annotations

import glob
import logging
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from .config import _f
from .index import merge_topk
from .topk_file import TopKFileError, read_topk

logger = logging.getLogger(__name__)


@dataclass
class ReduceArgs:
    """python -m dpr_paddle.reduce."""

    topk_files: list = _f(None, "top-k files (.npz) of dense_retriever.py --topk_out, or globs", positional=True,
                          nargs="+")
    qa_file: str = _f(None, "the questions file every part searched", required=True)
    ctx_file: str = _f(None, "passages TSV, for titles/texts", required=True)
    passage_store: Optional[str] = _f(None, "SQLite passage store (default: stream --ctx_file)")
    n_docs: int = _f(0, "passages kept per question (default: the parts' k)")
    out_file: Optional[str] = _f(None, "retrieval results JSON (DPR format)")
    metrics_file: Optional[str] = _f(None, "top-k accuracy JSON (default: OUT_FILE.metrics.json)")
    trec_file: Optional[str] = _f(None, "also write a TREC run file")
    match: str = _f("string", "answer matching: string | regex", choices=("string", "regex"))
    validation_workers: int = _f(1, "processes for answer matching")


def expand(patterns: List[str]) -> List[str]:
    """Files named directly or by glob, each once, in order."""
    out = []
    for p in patterns:
        for path in sorted(glob.glob(p)) or [p]:
            if path not in out:
                out.append(path)
    return out


def merge_parts(paths: List[str]) -> Tuple[np.ndarray, List[List[str]], dict]:
    """Check that the parts make one search and merge them: (scores [n, k], ids, meta)."""
    parts = sorted((read_topk(p) + (p,) for p in paths), key=lambda part: part[2]["shard_ids"])
    first = parts[0][2]
    for scores, _, meta, path in parts:
        for key in ("model_fingerprint", "num_shards", "qa", "questions", "k"):
            if meta.get(key) != first.get(key):
                raise TopKFileError(f"{path}: {key} {meta.get(key)!r}, but {parts[0][3]} has {first.get(key)!r}; "
                                    "every part must search with one model, one questions file and one --n_docs")
    seen = {}
    for _, _, meta, path in parts:
        for s in meta["shard_ids"]:
            if s in seen:
                raise TopKFileError(f"shard {s} is in both {seen[s]} and {path}; give each shard's result once")
            seen[s] = path
    missing = sorted(set(range(first["num_shards"])) - set(seen))
    if missing:
        raise TopKFileError(f"{len(parts)} top-k file(s) cover shards {sorted(seen)} of {first['num_shards']}; "
                            f"missing {missing}")
    ids = np.concatenate([part[1] for part in parts], axis=1)  # [n, sum k_i]
    offsets = np.cumsum([0] + [part[0].shape[1] for part in parts])
    lists = [(part[0], np.broadcast_to(np.arange(offsets[i], offsets[i + 1]), part[0].shape))
             for i, part in enumerate(parts)]
    scores, cols = merge_topk(lists, first["k"])
    merged = {**first, "passages": sum(part[2]["passages"] for part in parts), "files": len(parts)}
    return scores, np.take_along_axis(ids, cols, axis=1).tolist(), merged


def main(argv=None) -> None:
    """Entry point of `python -m dpr_paddle.reduce`."""
    from .cli import run_main
    from .config import parse

    args = parse(ReduceArgs, argv, description=__doc__)

    def body():
        from .data.readers import read_qa
        from .retriever import report
        from .utils import check_input_file, check_output_path

        check_input_file(args.qa_file, "QA")
        check_input_file(args.ctx_file, "passages")
        for path in (args.out_file, args.metrics_file, args.trec_file):
            if path:
                check_output_path(path)
        scores, ids, meta = merge_parts(expand(args.topk_files))
        qa = read_qa(args.qa_file)
        if len(qa) != meta["questions"]:
            raise TopKFileError(f"{args.qa_file} has {len(qa)} questions; the parts searched {meta['questions']}")
        metrics = {"mode": "dense", "questions": len(qa), "n_docs": min(args.n_docs or meta["k"], meta["k"]),
                   "match": args.match, "seconds": {}, "index": meta.get("index"), "passages": meta["passages"],
                   "reduced_from": meta["files"]}
        report(qa, scores, ids, metrics, qa_file=args.qa_file, ctx_file=args.ctx_file,
               passage_store=args.passage_store, shards_pattern=None, match=args.match,
               workers=args.validation_workers, out_file=args.out_file, metrics_file=args.metrics_file,
               trec_file=args.trec_file, label="reduced")

    run_main(body)


if __name__ == "__main__":
    main()
