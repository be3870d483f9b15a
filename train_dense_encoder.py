"""Train a DPR bi-encoder with an exact gradient cache.

The command lives in dpr_paddle/train.py (also installed as dpr-train); `python train_dense_encoder.py --help` lists its flags.
"""
from dpr_paddle.train import main

if __name__ == "__main__":
    main()
