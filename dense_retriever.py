"""Retrieve passages for every question of a QA file and report top-k accuracy.

The command lives in dpr_paddle/retrieve.py (also installed as dpr-retrieve); `python dense_retriever.py --help` lists its flags.
"""
from dpr_paddle.retrieve import main

if __name__ == "__main__":
    main()
