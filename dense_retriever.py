"""Retrieve passages for every question of a QA file and report DPR's top-k accuracy.

    python dense_retriever.py --hnsw_index --out_file results.json --encoded_ctx_file 'emb/sample_*' \
        --ctx_file data/sample/passages.tsv --qa_file data/sample/qa_test.csv \
        --que_model_path save_biencoder/best/question_encoder --con_model_path save_biencoder/best/context_encoder

Exact inner-product search is the default; --hnsw_index uses hnswlib (--index_path keeps the graph).
--bm25 retrieves with BM25 alone (bm25s); --hybrid fuses dense and BM25 (--fusion weighted|rrf).
--index picks the engine: exact | hnsw | hnsw_per_shard | milvus (milvus-lite, or a server by --milvus_uri).
Sharded across machines: each runs `--encoded_ctx_file emb/wiki_K --topk_out topk_K.npz`, then
`python -m dpr_paddle.reduce 'topk_*.npz' --qa_file ... --ctx_file ...` merges and evaluates.
"""
import dpr_paddle  # noqa: F401  (sets CPU thread defaults before paddle loads)


def main(argv=None) -> None:
    from dpr_paddle.cli import run_main
    from dpr_paddle.config import RetrieverArgs, parse

    args = parse(RetrieverArgs, argv, description=__doc__)

    def body():
        from dpr_paddle.utils import check_input_file, check_output_path

        # inputs and every output location first: a bad path must not cost a model load and a search
        check_input_file(args.qa_file, "QA")
        check_input_file(args.ctx_file, "passages")
        for path in (args.out_file, args.metrics_file, args.trec_file, args.topk_out):
            if path:
                check_output_path(path)
        if args.encoded_ctx_file and not args.bm25:
            from dpr_paddle.shards import shard_paths

            shard_paths(args.encoded_ctx_file)
        from dpr_paddle.inference import load_tower, tower_fingerprint, tower_options
        from dpr_paddle.model import CONTEXT, QUESTION
        from dpr_paddle.retriever import check_encoders, retrieve

        if args.bm25:
            retrieve(args)  # sparse only: no model
            return
        encode, tensorizer, info = load_tower(QUESTION, **tower_options(args))
        if args.encoded_ctx_file and (args.con_model_path or args.model_file):
            # the context encoder named must be the one that made the shards
            check_encoders(args.encoded_ctx_file, tower_fingerprint(CONTEXT, **tower_options(args)), info)
        retrieve(args, encode, tensorizer, info)

    run_main(body)


if __name__ == "__main__":
    main()
