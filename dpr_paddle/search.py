"""`python -m dpr_paddle.search` (dpr-search): ask the retriever from the command line, a ranked table
per question.

    python -m dpr_paddle.search --model_file save_biencoder/latest --encoded_ctx_file 'emb/wiki_*' \
        --ctx_file psgs.tsv "who wrote hamlet" --answers Shakespeare
    python -m dpr_paddle.search --bm25 --ctx_file psgs.tsv          # no question: one per line from stdin

Takes dense_retriever.py's model and index flags (--hybrid, --bm25, --hnsw_index, ...); `--n_docs`
hits per question (default here 10). Words of `--answers` are marked **like this** in the snippets.
"""
from __future__ import annotations

import re
import sys
from typing import Dict, List, Sequence

DEFAULT_K = 10


def snippet(text: str, answers: Sequence[str], chars: int) -> str:
    """Up to `chars` characters of `text`, centred on the first answer found, answers marked **so**."""
    pattern = re.compile("|".join(re.escape(a) for a in answers if a.strip()), re.IGNORECASE) if answers else None
    m = pattern.search(text) if pattern else None
    start = max(0, min(m.start() - chars // 3, len(text) - chars)) if m else 0
    cut = text[start : start + chars]
    cut = ("…" if start else "") + cut + ("…" if start + chars < len(text) else "")
    return pattern.sub(lambda x: f"**{x.group(0)}**", cut) if pattern else cut


def format_hits(question: str, hits: List[Dict], answers: Sequence[str] = (), chars: int = 240) -> str:
    """A plain-text ranked table of one question's hits."""
    first = bool(hits) and "first_stage_score" in hits[0]  # reranked: the first stage's score beside
    lines = [f"Q: {question}", f"{'rank':>4}  {'score':>9}  " + (f"{'1st stage':>9}  " if first else "") +
             f"{'id':<10}  title | snippet"]
    for rank, h in enumerate(hits, start=1):
        text = snippet(" ".join(h["text"].split()), answers, chars)
        lines.append(f"{rank:>4}  {h['score']:>9.4f}  " + (f"{h['first_stage_score']:>9.4f}  " if first else "") +
                     f"{h['id']:<10}  {h['title']} | {text}")
    return "\n".join(lines)


def stdin_lines():
    """Standard input's lines as text; a line that is not UTF-8 is reported by number and skipped."""
    for n, raw in enumerate(sys.stdin.buffer, start=1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as e:
            print(f"error: standard input line {n}: not UTF-8 text (byte {e.start + 1}); skipped", file=sys.stderr,
                  flush=True)


def main(argv=None) -> None:
    """CLI entry point."""
    from .cli import run_main
    from .common.errors import DprError
    from .flags import AskArgs, load_retriever, parse

    args = parse(AskArgs, argv, __doc__, defaults={"n_docs": DEFAULT_K})

    def body():
        retriever = load_retriever(args)
        questions = args.questions or None
        interactive = questions is None and sys.stdin.isatty()
        if questions is None:
            questions = iter(lambda: input("question> "), "") if interactive else stdin_lines()
        for q in questions:
            q = q.strip()
            if not q and not args.questions:  # a blank line between questions typed or piped in
                continue
            try:  # with --rerank_model the answer is the reranked list
                hits = retriever.search([q], k=args.n_docs, mode="rerank" if args.rerank_model else None)[0]
            except DprError as e:  # one bad question is reported; the next ones are still answered
                print(f"error: {e}", file=sys.stderr, flush=True)
                continue
            print(format_hits(q, hits, args.answers or (), args.snippet_chars), flush=True)
            print(flush=True)

    try:
        run_main(body, needs_paddle=not args.bm25 or bool(args.rerank_model))
    except (EOFError, KeyboardInterrupt):
        print()


if __name__ == "__main__":
    main()
