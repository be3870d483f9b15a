"""python -m dpr_paddle.score_records (dpr-score-records): a reranker scores the positives and hard
negatives of biencoder records, for distillation (train_dense_encoder.py --distill_weight) and, with
--denoise_margin, drops the hard negatives it scores like the positive (false negatives).

    python -m dpr_paddle.score_records --train_data_path train.json --rerank_model runs/reranker/latest \\
        --output train_scored.json [--denoise_margin 0]

Each passage gets its `teacher_score`, each record the teacher's fingerprint (`teacher`). Written in
resumable batches (OUTPUT.partial/), then renamed into place: a killed run resumes where it stopped.
How scores and margins work: retrieval/teacher.py.
"""
from __future__ import annotations

import os


def main(argv=None) -> None:
    """Entry point of `python -m dpr_paddle.score_records` and dpr-score-records."""
    from .cli import run_main
    from .flags import ScoreArgs, parse

    args = parse(ScoreArgs, argv, description=__doc__)

    def body():
        from .common.files import check_input_file, check_output_path
        from .data.readers import read_biencoder_records
        from .retrieval.rerank import Reranker
        from .retrieval.teacher import score_records

        check_input_file(args.train_data_path, "training records")
        check_output_path(args.output)
        records = read_biencoder_records(args.train_data_path)
        reranker = Reranker.load(args.rerank_model, args.backend, args.rerank_batch_size, args.rerank_max_length)
        job = {"train": os.path.abspath(args.train_data_path), "teacher": reranker.info["model_fingerprint"],
               "denoise_margin": args.denoise_margin, "batch_size": args.batch_size}
        stats = score_records(records, reranker, args.output, job, args.denoise_margin, args.batch_size)
        print(f"scored {stats['records']} records" + ("" if args.denoise_margin is None else
              f"; dropped {stats['dropped']} of {stats['hard_negatives']} hard negatives as false negatives "
              f"({stats['left_without_negatives']} records left without one)"))

    run_main(body)


if __name__ == "__main__":
    main()
