"""dense_retriever.py (dpr-retrieve): retrieve passages for every question of a QA file and report
DPR's top-k accuracy.

    python dense_retriever.py --hnsw_index --out_file results.json --encoded_ctx_file 'emb/sample_*' \\
        --ctx_file data/sample/passages.tsv --qa_file data/sample/qa_test.csv \\
        --que_model_path save_biencoder/best/question_encoder --con_model_path save_biencoder/best/context_encoder

Exact inner-product search is the default; --hnsw_index uses hnswlib (--index_path keeps the graph).
--bm25 retrieves with BM25 alone (bm25s); --hybrid fuses dense and BM25 (--fusion weighted|rrf).
--index picks the engine: exact | hnsw | hnsw_per_shard | milvus (milvus-lite, or a server by --milvus_uri).
Sharded across machines: each runs `--encoded_ctx_file emb/wiki_K --topk_out topk_K.npz`, then
`python -m dpr_paddle.reduce 'topk_*.npz' --qa_file ... --ctx_file ...` merges and evaluates.
"""
from __future__ import annotations


def main(argv=None) -> None:
    """Entry point of dense_retriever.py and dpr-retrieve."""
    from .cli import run_main
    from .flags import RetrieverArgs, index_spec, parse, report_spec, search_spec, tower_spec

    args = parse(RetrieverArgs, argv, description=__doc__)

    def body():
        from .common.files import check_input_file, check_output_path
        from .retrieval.run import RetrieverError, retrieve, search_some_shards
        from .retrieval.searcher import Searcher

        # inputs and every output location first: a bad path must not cost a model load and a search
        check_input_file(args.qa_file, "QA")
        check_input_file(args.ctx_file, "passages")
        for path in (args.out_file, args.metrics_file, args.trec_file, args.topk_out):
            if path:
                check_output_path(path)
        search = search_spec(args)
        if search.mode != "bm25" and not args.encoded_ctx_file:
            raise RetrieverError("--encoded_ctx_file is needed for dense and --hybrid retrieval (or pass --bm25)")
        if args.topk_out and search.mode != "dense":
            raise RetrieverError("--topk_out writes a dense search of some shards; it does not combine with --bm25/--hybrid")
        if args.topk_out:
            from .retrieval.dense import DenseSearcher

            dense = DenseSearcher.load(tower_spec(args), args.encoded_ctx_file, index_spec(args), args.batch_size,
                                       partial=True)
            search_some_shards(dense, args.qa_file, args.n_docs, args.encoded_ctx_file, args.topk_out)
            return
        seconds = {}
        searcher = Searcher.load(search, args.ctx_file, tower_spec(args), args.encoded_ctx_file, index_spec(args),
                                 args.batch_size, timings=seconds)
        retrieve(searcher, args.qa_file, args.n_docs, report_spec(args), args.encoded_ctx_file, args.validate_index,
                 seconds)

    run_main(body, needs_paddle=not args.bm25 or bool(args.rerank_model))


if __name__ == "__main__":
    main()
