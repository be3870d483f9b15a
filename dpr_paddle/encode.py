"""generate_dense_embedding.py (dpr-encode): encode a passage corpus into dense vectors, the whole of
it or one shard.

    python generate_dense_embedding.py --model_file save_biencoder/best --ctx_file data/sample/passages.tsv \\
        --shard_id 0 --num_shards 1 --out_file emb/sample
    python generate_dense_embedding.py --ctx_file psgs_w100.tsv --out_file emb/wiki \\
        --que_model_path Q_DIR --con_model_path C_DIR

Under `python -m paddle.distributed.launch --nproc_per_node K` each process encodes the shard of
its rank. Shard k goes to OUT_FILE_k/ (vectors.npy, ids.txt, meta.json); with --hnsw_per_shard its
hnswlib graph is built right after and saved inside it, for dense_retriever.py --hnsw_per_shard.
"""
from __future__ import annotations


def main(argv=None) -> None:
    """Entry point of generate_dense_embedding.py and dpr-encode."""
    from .cli import run_main
    from .flags import EmbedArgs, parse, tower_spec

    args = parse(EmbedArgs, argv, description=__doc__)

    def body():
        from .common.files import check_input_file, check_output_path
        from .encoding.towers import load_tower, paired_question_fingerprint
        from .encoding.writer import generate_shard
        from .modeling.model import CONTEXT
        from .training.distributed import World

        check_input_file(args.ctx_file, "passages")  # before the model loads
        check_output_path(args.out_file + "_0", "embedding shard")

        world = World.from_launcher()  # each launched process encodes the shard of its rank
        shard_id = args.shard_id if args.shard_id is not None else world.rank
        num_shards = args.num_shards if args.num_shards is not None else world.size
        spec = tower_spec(args)
        encode, tensorizer, info = load_tower(CONTEXT, spec)
        # which question encoder these passages pair with: every search checks its own against it
        info["question_fingerprint"] = paired_question_fingerprint(spec, info["model_fingerprint"])
        path = generate_shard(encode, tensorizer, args.ctx_file, args.out_file, shard_id, num_shards, info,
                              batch_size=args.batch_size, dtype="float16" if args.fp16 else "float32",
                              block=args.read_chunk, overwrite=args.overwrite, sort_by_length=args.sort_by_length)
        if args.hnsw_per_shard:  # the graph is built here, by the machine that encoded the shard
            from .index.hnsw import build_shard_graph
            from .index.shards import load_shards

            build_shard_graph(load_shards(path, partial=True)[0], args.hnsw_m, args.ef_construction, args.hnsw_space)

    run_main(body)


if __name__ == "__main__":
    main()
