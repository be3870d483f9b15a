"""mine_hard_negatives.py (dpr-mine): mine hard negatives for DPR training data with BM25 or a
trained bi-encoder, or both fused.

    python mine_hard_negatives.py --train_data_path data/sample/train.json --ctx_file data/sample/passages.tsv \\
        --output data/sample/train_mined.json --retriever bm25 --rank_range 0 50 --num_negatives 10
    python mine_hard_negatives.py --train_data_path train.json --ctx_file psgs.tsv --output mined.json \\
        --retriever dense --model_file save_biencoder/latest --encoded_ctx_file emb/wiki   # or --retriever hybrid

    python mine_hard_negatives.py --qa_file queries.jsonl --qrels qrels/train.tsv --ctx_file corpus.jsonl \
        --output train.json                      # BEIR / MS MARCO-style: positives from the qrels

Gold passages and every passage containing an answer are never kept. How negatives are chosen, and
how an interrupted run resumes: retrieval/mining.py.
"""
from __future__ import annotations

import os


def main(argv=None) -> None:
    """Entry point of mine_hard_negatives.py, `python -m dpr_paddle.mine` and dpr-mine."""
    from .cli import run_main
    from .flags import MineArgs, bm25_fields, parse, tower_spec

    args = parse(MineArgs, argv, description=__doc__)

    def body():
        from .data.readers import read_biencoder_records
        from .retrieval.mining import MiningError, check_gold_in_corpus, mine, records_from_qrels
        from .retrieval.run import corpus_ids_of
        from .retrieval.searcher import Searcher, SearchSpec, rerank_backend

        if bool(args.train_data_path) == bool(args.qa_file and args.qrels) or bool(args.qa_file) != bool(args.qrels):
            raise MiningError("give either --train_data_path (biencoder records) or --qa_file with --qrels")
        source = args.train_data_path or args.qrels
        records = (read_biencoder_records(args.train_data_path) if args.train_data_path else
                   records_from_qrels(args.qa_file, args.qrels, args.ctx_file))
        job = {"train": os.path.abspath(source), "ctx_file": os.path.abspath(args.ctx_file),
               "retriever": args.retriever, "rank_range": list(args.rank_range), "num_negatives": args.num_negatives,
               "sample": args.sample, "seed": args.seed, "batch_size": args.batch_size, "match": args.match}
        if args.retriever != "bm25" and not args.encoded_ctx_file:
            raise MiningError(f"--retriever {args.retriever} needs --encoded_ctx_file (shards of the corpus) and the "
                              "model flags")
        if args.retriever == "hybrid":
            job.update(fusion=args.fusion, hybrid_alpha=args.hybrid_alpha, hybrid_depth=args.hybrid_depth)
        spec = SearchSpec(mode=args.retriever, fusion=args.fusion, alpha=args.hybrid_alpha, depth=args.hybrid_depth,
                          rerank_backend=args.rerank_backend, rerank_max_length=args.rerank_max_length,
                          **bm25_fields(args))
        searcher = Searcher.load(spec, args.ctx_file, tower_spec(args), args.encoded_ctx_file)
        if searcher.dense is not None:
            job["model_fingerprint"] = searcher.dense.index.shards[0].meta.get("model_fingerprint")
        check_gold_in_corpus(records, corpus_ids_of(searcher), source, args.ctx_file)
        denoise = None
        if args.denoise_model:
            from .retrieval.rerank import Reranker
            from .retrieval.teacher import Denoiser

            denoise = Denoiser(Reranker.load(args.denoise_model, rerank_backend(spec, tower_spec(args)),
                                             args.rerank_batch_size, args.rerank_max_length), args.denoise_margin)
            job.update(denoise_model=denoise.fingerprint, denoise_margin=args.denoise_margin)
        mine(records, searcher.search, args.ctx_file, args.output, job, tuple(args.rank_range), args.num_negatives,
             args.sample, args.seed, args.batch_size, args.match, denoise)

    run_main(body, needs_paddle=args.retriever != "bm25" or bool(args.denoise_model))


if __name__ == "__main__":
    main()
