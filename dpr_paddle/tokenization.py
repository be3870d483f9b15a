"""`python -m dpr_paddle.tokenization --verify CTX_FILE`: check that the fast tokenizer gives
PaddleNLP's ids on a corpus, and time both; one JSON line, exit 1 when any passage differs."""
from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv=None) -> None:
    """Entry point of `python -m dpr_paddle.tokenization --verify` (dpr-verify-tokenizer)."""
    from .modeling.tokenization import DEFAULT_MAX_PASSAGE_LENGTH

    p = argparse.ArgumentParser(description="Check that the fast tokenizer gives PaddleNLP's ids on a corpus, "
                                            "and time both. Exits 1 when any passage differs.")
    p.add_argument("--verify", required=True, metavar="CTX_FILE", help="passages TSV (id, text, title)")
    p.add_argument("--model_name_or_path", default="minilm", help="encoder whose tokenizer is checked")
    p.add_argument("--limit", type=int, default=20000, help="first N passages (0 = all; the slow path does ~500/s)")
    p.add_argument("--max_length", type=int, default=DEFAULT_MAX_PASSAGE_LENGTH)
    p.add_argument("--threads", type=int, default=1, help="threads of the fast tokenizer (timed on one by default)")
    args = p.parse_args(argv)
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # before tokenizers starts its pool

    from .cli import run_main

    def body():
        from paddlenlp.transformers import AutoTokenizer

        from .common.files import check_input_file
        from .modeling.pretrained import resolve_model
        from .modeling.tokenization import verify

        check_input_file(args.verify, "passages")
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.model_name_or_path))
        result = verify(args.verify, tokenizer, args.limit, args.max_length)
        print(json.dumps(result))
        if result["differ"]:
            sys.exit(1)

    run_main(body)


if __name__ == "__main__":
    main()
