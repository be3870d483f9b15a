"""train_reranker.py (dpr-train-reranker): train a cross-encoder that reranks a retriever's top passages,
on the same DPR training records (positive_ctxs, hard_negative_ctxs) the bi-encoder trains on.

    python train_reranker.py --train_data_path train.json --dev_data_path dev.json --save_dir runs/reranker \\
        --model_name_or_path minilm --group_size 8 --batch_size 16 --epochs 1 --learning_rate 3e-5

Each question is scored with its group: its first positive (or a random one with --shuffle_positives)
and GROUP_SIZE-1 of its hard negatives, topped up from negative_ctxs and then repeated when a record
has too few (counted in the log); records without a positive are skipped and counted by the reader.
The loss is the listwise softmax cross-entropy of each group. Every checkpoint is a reranker
directory: pass SAVE_DIR/latest as --rerank_model (dense_retriever.py, search, serve, Retriever) or
--denoise_model (mine_hard_negatives.py).
"""
from __future__ import annotations


def main(argv=None) -> None:
    """Entry point of train_reranker.py and dpr-train-reranker."""
    from .flags import RerankTrainArgs
    from .train import run_training

    run_training(RerankTrainArgs, argv, __doc__)

if __name__ == "__main__":
    main()
