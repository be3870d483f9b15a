"""python -m dpr_paddle.ensemble_rerankers (dpr-ensemble-rerankers): an ensemble of rerankers, a directory
that goes wherever one reranker does (--rerank_model, --denoise_model, Retriever.load, serve) and scores
each (question, passage) pair by the mean of its members' scores.

    python -m dpr_paddle.ensemble_rerankers --members runs/rr_a/latest runs/rr_b/latest --output_dir runs/rr_ab

The directory records each member's path (relative to it) and model fingerprint: a member retrained or
replaced afterwards is refused when the ensemble is loaded. It holds no weights and cannot be trained.
"""
from __future__ import annotations


def main(argv=None) -> None:
    """Entry point of `python -m dpr_paddle.ensemble_rerankers` and dpr-ensemble-rerankers."""
    from .cli import run_main
    from .flags import EnsembleArgs, parse

    args = parse(EnsembleArgs, argv, description=__doc__)

    def body():
        from .encoding.reranker import make_ensemble

        make_ensemble(args.members, args.output_dir)
        print(f"wrote {args.output_dir}: the mean of {len(args.members)} rerankers")

    run_main(body)


if __name__ == "__main__":
    main()
