"""python -m dpr_paddle.bm25_index (dpr-bm25-index): build the BM25 index of a corpus, or one shard of it.

    dpr-bm25-index --ctx_file psgs_w100.tsv --bm25_engine lucene --bm25_index bm25/shard_0 --shard_id 0 --num_shards 4
    ... (the other shards, on other machines)
    dense_retriever.py --bm25 --bm25_engine lucene --bm25_index 'bm25/shard_*' --ctx_file psgs_w100.tsv ...

Shards split the corpus's rows as generate_dense_embedding.py does; searched together (a glob) they
are one index (Lucene's MultiReader sums BM25's statistics), so the ranking equals that of one index
over the whole corpus. bm25s builds whole indexes only. Searching builds a missing index by itself;
this command is for building ahead of time and in shards.
"""
from __future__ import annotations


def main(argv=None) -> None:
    """Entry point of `python -m dpr_paddle.bm25_index` and dpr-bm25-index."""
    from .cli import run_main
    from .flags import BM25IndexArgs, parse

    args = parse(BM25IndexArgs, argv, description=__doc__)

    def body():
        from .common.errors import DprError
        from .flags import bm25_fields
        from .retrieval.searcher import SearchSpec, bm25_plan, open_bm25

        spec = SearchSpec(mode="bm25", **bm25_fields(args))
        analyzer, engine = plan = bm25_plan(spec, args.ctx_file)
        if args.num_shards == 1:
            index = open_bm25(spec, args.ctx_file, plan)
        elif engine != "lucene" or not args.bm25_index:
            raise DprError("--num_shards > 1 builds Lucene shards: give --bm25_engine lucene and --bm25_index (one "
                           "directory per shard)")
        else:
            from .retrieval.lucene import LuceneIndex

            index = LuceneIndex.build(args.ctx_file, args.bm25_index, analyzer, args.bm25_heap, args.bm25_threads,
                                      args.shard_id, args.num_shards)
        print(f"{index.engine} index of {len(index)} passages (analyzer {analyzer})")

    run_main(body, needs_paddle=False)


if __name__ == "__main__":
    main()
