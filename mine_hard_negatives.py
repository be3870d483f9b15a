"""Mine hard negatives for DPR training data with BM25 or a trained bi-encoder.

    python mine_hard_negatives.py --train_data_path data/sample/train.json --ctx_file data/sample/passages.tsv \
        --output data/sample/train_mined.json --retriever bm25 --rank_range 0 50 --num_negatives 10
    python mine_hard_negatives.py --train_data_path train.json --ctx_file psgs.tsv --output mined.json \
        --retriever dense --model_file save_biencoder/latest --encoded_ctx_file emb/wiki

Gold passages and every passage containing an answer (DPR's has_answer) are never kept.
"""
import dpr_paddle  # noqa: F401  (sets CPU thread defaults before paddle loads)


def main(argv=None) -> None:
    from dpr_paddle.mine import main as mine_main

    mine_main(argv)


if __name__ == "__main__":
    main()
