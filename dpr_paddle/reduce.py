"""Merge per-shard top-k files searched on different machines and evaluate, as dense_retriever.py
would have in one process (Tevatron's reducer).

    python dense_retriever.py ... --encoded_ctx_file emb/wiki_3 --topk_out runs/topk_3.npz   # on each machine
    python -m dpr_paddle.reduce 'runs/topk_*.npz' --qa_file nq-test.qa.csv --ctx_file psgs_w100.tsv \
        --out_file results.json

The files must come from one model and one questions file and cover every shard exactly once.
The merge is the one the retriever does in process (`index.exact.merge_topk`), so the result is the same.
"""
from __future__ import annotations


def main(argv=None) -> None:
    """Entry point of `python -m dpr_paddle.reduce` (dpr-reduce)."""
    from .cli import run_main
    from .flags import ReduceArgs, parse, report_spec

    args = parse(ReduceArgs, argv, description=__doc__)

    def body():
        from .common.files import check_input_file, check_output_path, file_fingerprint
        from .data.questions import read_qa
        from .data.passages import iter_passage_chunks
        from .retrieval.run import load_questions, report
        from .retrieval.topk_file import TopKFileError, expand, merge_parts

        check_input_file(args.qa_file, "QA")
        check_input_file(args.ctx_file, "passages")
        for path in (args.out_file, args.metrics_file, args.trec_file):
            if path:
                check_output_path(path)
        scores, ids, meta = merge_parts(expand(args.topk_files))
        qa = read_qa(args.qa_file)
        if meta.get("qa") != file_fingerprint(args.qa_file)["sha1"]:
            raise TopKFileError(f"{args.qa_file} is not the questions file the parts searched ({meta.get('qa_file')}, "
                                f"{meta['questions']} questions): its content differs; pass that file")
        qa, qrels, keep = load_questions(args.qa_file, args.qrels, lambda: {i for c in iter_passage_chunks(
            args.ctx_file) for i in c[0]}, qa=qa)
        scores, ids = scores[keep], [ids[i] for i in keep]
        metrics = {"mode": "dense", "questions": len(qa), "n_docs": min(args.n_docs or meta["k"], meta["k"]),
                   "match": args.match, "seconds": {}, "index": meta.get("index"), "passages": meta["passages"],
                   "reduced_from": meta["files"]}
        report(qa, scores, ids, metrics, report_spec(args), qa_file=args.qa_file, shards_pattern=None, label="dense",
               qrels=qrels)

    run_main(body, needs_paddle=False)


if __name__ == "__main__":
    main()
