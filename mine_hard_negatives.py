"""Mine hard negatives for DPR training data with BM25 or a trained bi-encoder.

The command lives in dpr_paddle/mine.py (also installed as dpr-mine); `python mine_hard_negatives.py --help` lists its flags.
"""
from dpr_paddle.mine import main

if __name__ == "__main__":
    main()
