"""Train a cross-encoder (reranker) on DPR training records.

The command lives in dpr_paddle/train_reranker.py (also installed as dpr-train-reranker); `python train_reranker.py --help` lists its flags.
"""
from dpr_paddle.train_reranker import main

if __name__ == "__main__":
    main()
