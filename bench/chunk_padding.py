"""Padded tokens the gradient cache computes per epoch, with chunks in batch order and with
length-sorted chunks (train_step's default, --sort_chunks), on real training batches.

    .venv/bin/python bench/chunk_padding.py --train ../shared/data/squad1_open/train.json \\
        --settings 64:16 128:16 128:32 --json bench/results/chunk_padding.json

Batches are those of epoch 0 (seed 12345, one hard negative, questions 32 and passages 256 tokens:
train_dense_encoder.py's defaults) tokenized by MiniLM's tokenizer. For each chunk size, "tokens" is
the sum over chunks of rows x the chunk's longest sequence, which is what the encoder computes;
"attention" the sum of rows x length^2 (the part that grows with the square); "real" the tokens
without any padding. No model runs.
"""
from __future__ import annotations

import argparse

from common import markdown_table, save_results  # also puts the repo on sys.path


def chunk_cost(mask, size: int, order=None):
    """(tokens, attention units) computed for a [B, L] mask split into chunks of `size` rows."""
    lengths = mask.sum(axis=1)
    if order is not None:
        lengths = lengths[order]
    tokens = attention = 0
    for i in range(0, len(lengths), size):
        part = lengths[i : i + size]
        tokens += len(part) * int(part.max())
        attention += len(part) * int(part.max()) ** 2
    return tokens, attention


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True)
    ap.add_argument("--settings", nargs="+", default=["64:16", "128:16", "128:32"], help="BATCH:CHUNK")
    ap.add_argument("--max_query_length", type=int, default=32)
    ap.add_argument("--max_passage_length", type=int, default=256)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from dpr_paddle.data import BiEncoderCollator, BiEncoderDataset, epoch_batches, read_biencoder_records
    from dpr_paddle.modeling.pretrained import load_encoder
    from dpr_paddle.modeling.tokenization import Tensorizer
    from dpr_paddle.training.step import length_order

    _, tokenizer = load_encoder("minilm")
    collator = BiEncoderCollator(Tensorizer(tokenizer, args.max_query_length, args.max_passage_length))
    dataset = BiEncoderDataset(read_biencoder_records(args.train), 1, seed=12345)
    rows = []
    for setting in args.settings:
        batch_size, chunk = map(int, setting.split(":"))
        totals = {}
        for ids in epoch_batches(len(dataset), batch_size, 0, 12345):
            batch = collator([dataset.example(i, 0) for i in ids])
            for group in ("question", "context"):
                arrays = batch[group]
                mask = arrays["attention_mask"]
                plain = chunk_cost(mask, chunk)
                by_length = chunk_cost(mask, chunk, length_order(arrays, chunk))
                t = totals.setdefault(group, [0, 0, 0, 0, 0])
                t[0] += int(mask.sum())
                t[1:3] = [t[1] + plain[0], t[2] + by_length[0]]
                t[3:5] = [t[3] + plain[1], t[4] + by_length[1]]
        for group, (real, tok_plain, tok_sorted, att_plain, att_sorted) in totals.items():
            rows.append({"batch": batch_size, "chunk": chunk, "group": group, "real_tokens": real,
                         "tokens_batch_order": tok_plain, "tokens_sorted": tok_sorted,
                         "token_saving": round(1 - tok_sorted / tok_plain, 4),
                         "attention_saving": round(1 - att_sorted / att_plain, 4)})
    if args.json:
        save_results(args.json, rows)
    print(markdown_table(["batch", "chunk", "tower", "real tokens", "computed, batch order", "computed, sorted",
                          "tokens saved", "attention saved"],
                         [[str(r["batch"]), str(r["chunk"]), r["group"], f"{r['real_tokens']:,}",
                           f"{r['tokens_batch_order']:,}", f"{r['tokens_sorted']:,}", f"{r['token_saving']:.1%}",
                           f"{r['attention_saving']:.1%}"] for r in rows]))


if __name__ == "__main__":
    main()
