"""Turn SQuAD-style reading-comprehension JSON (SQuAD, CMRC 2018, DRCD) into an open-retrieval set.

    python data/convert_squad.py --eval DRCD_dev.json --train DRCD_test.json --output_dir runs/drcd

Every paragraph of every file given (--eval, --train, --pool) is pooled into one corpus; a question's gold passage is the
paragraph it was written on, and its answers are kept. Written, atomically:
- passages.tsv    id<TAB>text<TAB>title (ids 1..N in file order; the title is the article's)
- qa.csv          the --eval questions, question<TAB>["answer", ...] (DPR's QA format)
- qrels.txt       TREC qrels of those questions: `qid 0 pid 1`, qid = line of qa.csv from 1
- queries.jsonl   the same questions as BEIR queries (`_id` = that qid, `text`, `answers`)
- train.json      the --train questions as DPR biencoder records: the gold paragraph as positive
                  and --hard_negatives BM25 hard negatives (dpr_paddle.retrieval.mining: gold and
                  answer-bearing passages dropped; `--bm25_analyzer auto` reads Chinese as Chinese)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Tuple

from dpr_paddle.cli import run_main
from dpr_paddle.common.errors import DprError
from dpr_paddle.common.files import write_text_atomic
from dpr_paddle.common.text import NOTHING_TO_SEARCH, searchable
from dpr_paddle.data.readers import BiEncoderRecord, Passage
from dpr_paddle.retrieval.analyzers import ANALYZERS


class SquadFormatError(DprError, ValueError):
    """A SQuAD-style file that does not have SQuAD's layout."""


def _typed(path: str, where: str, value, kind, what: str, optional: bool = False):
    """`value` if it is a `kind` (None for a missing optional field), else one SquadFormatError naming the
    JSON path: SQuAD-style files of the wrong shape end here, never in an AttributeError."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        names = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false"}
        found = "null or missing" if value is None else names.get(type(value), type(value).__name__)
        raise SquadFormatError(f"{path}: {where} is {found}, expected {what}")
    return value


def read_squad(path: str) -> List[Tuple[str, str, List[Tuple[str, List[str]]]]]:
    """[(title, paragraph, [(question, answers)])] of one SQuAD-layout file; a field of the wrong shape is
    one line naming its JSON path (`data[3].paragraphs[0].qas[2].answers[0].text`)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            root = json.load(f)
    except (OSError, ValueError) as e:
        raise SquadFormatError(f"{path}: not readable JSON ({e})") from None
    data = _typed(path, "data", _typed(path, "the top level", root, dict, "an object").get("data"), list, "a list")
    out = []
    for a, article in enumerate(data):
        article = _typed(path, f"data[{a}]", article, dict, "an object")
        title = _typed(path, f"data[{a}].title", article.get("title"), str, "a string", optional=True) or ""
        if any(c in title for c in "\r\n\u2028\u2029"):
            raise SquadFormatError(f"{path}: data[{a}].title holds a line break; a title is one field of one line "
                                   "of passages.tsv")
        paragraphs = _typed(path, f"data[{a}].paragraphs", article.get("paragraphs"), list, "a list")
        for p, para in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{p}]"
            para = _typed(path, where, para, dict, "an object")
            context = _typed(path, f"{where}.context", para.get("context"), str, "a string")
            if not context.strip():
                raise SquadFormatError(f"{path}: {where}.context is empty")
            qas = []
            for q, qa in enumerate(_typed(path, f"{where}.qas", para.get("qas"), list, "a list", optional=True) or []):
                qa = _typed(path, f"{where}.qas[{q}]", qa, dict, "an object")
                question = _typed(path, f"{where}.qas[{q}].question", qa.get("question"), str, "a string")
                if not searchable(question):
                    raise SquadFormatError(f"{path}: {where}.qas[{q}].question {NOTHING_TO_SEARCH}")
                answers = []
                for x, ans in enumerate(_typed(path, f"{where}.qas[{q}].answers", qa.get("answers"), list, "a list",
                                               optional=True) or []):
                    ans = _typed(path, f"{where}.qas[{q}].answers[{x}]", ans, dict, "an object")
                    answers.append(_typed(path, f"{where}.qas[{q}].answers[{x}].text", ans.get("text"), str,
                                          "a string"))
                answers = list(dict.fromkeys(x for x in answers if x.strip()))
                if not answers:  # SQuAD 2.0's unanswerable questions have no gold passage to find
                    continue
                qas.append((" ".join(question.split()), answers))
            out.append((title.strip(), " ".join(context.split()), qas))
    if not out:
        raise SquadFormatError(f"{path}: data holds no paragraph: nothing to convert")
    return out


def tsv_field(text: str) -> str:
    """A field as DPR's TSV writes it: quoted when it holds a quote or a tab, quotes doubled."""
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in '"\t') else text


def write_corpus(out_dir: str, paragraphs) -> List[str]:
    """passages.tsv of every paragraph; returns the passage ids in order."""
    ids = [str(i + 1) for i in range(len(paragraphs))]
    lines = ["id\ttext\ttitle"] + [f"{pid}\t{tsv_field(text)}\t{tsv_field(title)}"
                                   for pid, (title, text, _) in zip(ids, paragraphs)]
    write_text_atomic(os.path.join(out_dir, "passages.tsv"), "\n".join(lines) + "\n")
    return ids


def write_eval(out_dir: str, questions: List[Tuple[str, List[str], str]]) -> None:
    """qa.csv, qrels.txt and queries.jsonl of the evaluation questions [(question, answers, gold id)]."""
    qa = [f"{q.replace(chr(9), ' ')}\t{json.dumps(answers, ensure_ascii=False)}" for q, answers, _ in questions]
    write_text_atomic(os.path.join(out_dir, "qa.csv"), "\n".join(qa) + "\n")
    qrels = [f"{i} 0 {pid} 1" for i, (_, _, pid) in enumerate(questions, start=1)]
    write_text_atomic(os.path.join(out_dir, "qrels.txt"), "\n".join(qrels) + "\n")
    beir = [json.dumps({"_id": str(i), "text": q, "answers": a}, ensure_ascii=False)
            for i, (q, a, _) in enumerate(questions, start=1)]
    write_text_atomic(os.path.join(out_dir, "queries.jsonl"), "\n".join(beir) + "\n")


def write_train(out_dir: str, records: List[BiEncoderRecord], hard_negatives: int, analyzer: str) -> str:
    """train.json: the records with BM25 hard negatives mined over passages.tsv."""
    from dpr_paddle.retrieval.bm25 import BM25Index
    from dpr_paddle.retrieval.mining import mine

    ctx = os.path.join(out_dir, "passages.tsv")
    index = BM25Index.open(ctx, os.path.join(out_dir, "bm25_index"), analyzer)
    job = {"train": "convert_squad", "records": len(records), "analyzer": index.analyzer, "hard": hard_negatives}
    return mine(records, index.search, ctx, os.path.join(out_dir, "train.json"), job, (0, max(50, 3 * hard_negatives)),
                hard_negatives)


def main(argv=None) -> None:
    """Entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval", nargs="*", default=[], help="files whose questions become qa.csv / qrels.txt")
    ap.add_argument("--train", nargs="*", default=[], help="files whose questions become train.json")
    ap.add_argument("--pool", nargs="*", default=[], help="files whose paragraphs join the corpus, their questions unused")
    ap.add_argument("--output_dir", required=True)
    ap.add_argument("--hard_negatives", type=int, default=5, help="BM25 hard negatives per training record")
    ap.add_argument("--bm25_analyzer", default="auto", choices=ANALYZERS, help="how BM25 splits text when mining")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N paragraphs of each file (0 = all)")
    args = ap.parse_args(argv)
    if not args.eval and not args.train:
        ap.error("give --eval and/or --train files")
    if args.hard_negatives < 0:
        ap.error("--hard_negatives must be >= 0")

    def body():
        os.makedirs(args.output_dir, exist_ok=True)
        parts = [(role, read_squad(path)[: args.limit or None]) for role, paths in (("eval", args.eval),
                                                                                    ("train", args.train),
                                                                                    ("pool", args.pool))
                 for path in paths]
        paragraphs = [p for _, ps in parts for p in ps]
        ids = write_corpus(args.output_dir, paragraphs)
        pid_of = iter(ids)
        questions, records = [], []
        for role, ps in parts:
            for title, text, qas in ps:
                pid = next(pid_of)
                for question, answers in qas:
                    if role == "eval":
                        questions.append((question, answers, pid))
                    elif role == "train":
                        records.append(BiEncoderRecord(question, answers, [Passage(text, title, pid)]))
        for flag, made in (("--eval", questions), ("--train", records)):
            if getattr(args, flag[2:]) and not made:
                raise SquadFormatError(f"{flag} {' '.join(getattr(args, flag[2:]))}: no answerable question; nothing "
                                       "to write")
        write_eval(args.output_dir, questions) if questions else None
        write_train(args.output_dir, records, args.hard_negatives, args.bm25_analyzer) if records else None
        print(json.dumps({"passages": len(ids), "eval_questions": len(questions), "train_records": len(records),
                          "output_dir": args.output_dir}, ensure_ascii=False))

    run_main(body, needs_paddle=False)


if __name__ == "__main__":
    sys.exit(main())
