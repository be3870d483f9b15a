"""Encode a passage corpus (or one shard of it) into dense vectors.

The command lives in dpr_paddle/encode.py (also installed as dpr-encode); `python generate_dense_embedding.py --help` lists its flags.
"""
from dpr_paddle.encode import main

if __name__ == "__main__":
    main()
