"""Train a DPR bi-encoder (question + passage encoders) with an exact gradient cache.

    python train_dense_encoder.py --batch_size 128 --learning_rate 2e-05 --save_dir save_biencoder \
        --warmup_steps 1237 --epoches 40 --max_grad_norm 2 --train_data_path data/sample/train.json --chunk_size 16

Multi-process: python -m paddle.distributed.launch --devices 0,1,2,3 train_dense_encoder.py ...
"""
import dpr_paddle  # noqa: F401  (sets CPU thread defaults before paddle loads)


def main(argv=None) -> None:
    from dpr_paddle.cli import run_main
    from dpr_paddle.config import TrainArgs, parse

    args = parse(TrainArgs, argv, description=__doc__)

    def body():
        from dpr_paddle.train import train

        train(args)

    run_main(body)


if __name__ == "__main__":
    main()
