"""`python -m dpr_paddle.passage_store CTX_FILE --output PATH`: build (or finish) the SQLite passage
store that the API, the server and dense_retriever.py read passage texts from."""
from __future__ import annotations

import argparse


def main(argv=None) -> None:
    """Entry point of `python -m dpr_paddle.passage_store` (dpr-passage-store)."""
    from .cli import run_main
    from .retrieval import passage_store

    p = argparse.ArgumentParser(description=passage_store.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ctx_file")
    p.add_argument("--output", required=True, help="the SQLite file (e.g. beside the shards: emb/passages.sqlite)")
    args = p.parse_args(argv)
    def body():
        store = passage_store.PassageStore.open_or_build(args.ctx_file, args.output)
        store.verify(args.ctx_file)  # every page and row read: a store damaged in its middle is refused
        print(store.path)

    run_main(body, needs_paddle=False)


if __name__ == "__main__":
    main()
