"""train_dense_encoder.py (dpr-train): train a DPR bi-encoder (question + passage encoders) with an
exact gradient cache.

    python train_dense_encoder.py --batch_size 128 --learning_rate 2e-05 --save_dir save_biencoder \\
        --warmup_steps 1237 --epoches 40 --max_grad_norm 2 --train_data_path data/sample/train.json --chunk_size 16

Multi-process: python -m paddle.distributed.launch --devices 0,1,2,3 train_dense_encoder.py ...
"""
from __future__ import annotations


def main(argv=None) -> None:
    """Entry point of train_dense_encoder.py and dpr-train."""
    from .flags import TrainArgs

    run_training(TrainArgs, argv, __doc__)


def run_training(args_class, argv, description: str) -> None:
    """Parse `argv` into `args_class` (a TrainConfig or RerankConfig) and run the training loop on it: the
    body of dpr-train and dpr-train-reranker."""
    from .cli import run_main
    from .flags import parse

    config = parse(args_class, argv, description=description)

    def body():
        from .training.loop import train

        train(config)

    run_main(body)


if __name__ == "__main__":
    main()
