"""`python -m dpr_paddle.pretrained NAME --output_dir DIR`: export an encoder (minilm, tiny, a local
or PaddleNLP model) as a ready PaddleNLP directory."""
from __future__ import annotations

import argparse


def main(argv=None) -> None:
    """Entry point of `python -m dpr_paddle.pretrained` (dpr-export-encoder)."""
    from .cli import run_main
    from .modeling import pretrained

    p = argparse.ArgumentParser(description=pretrained.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="minilm | tiny | a local model dir | a PaddleNLP built-in name")
    p.add_argument("--output_dir", required=True)
    args = p.parse_args(argv)
    run_main(lambda: print(pretrained.export(args.name, args.output_dir)))


if __name__ == "__main__":
    main()
