"""Reading questions in any layout: DPR's qa.csv (`question<TAB>[answers]`), BEIR's queries.jsonl and
MS MARCO's queries.tsv (data/corpora.py reads those two and tells the layouts apart). Above both
`readers` and `corpora`, so that neither imports the other."""
from __future__ import annotations

import csv
from typing import List

from ..common.files import open_text
from .corpora import query_layout, read_beir_queries, read_id_text_queries
from .readers import DataFormatError, QAPair, _file_errors, check_question, parse_answers


def read_qa(path: str) -> List[QAPair]:
    """Read questions: DPR's QA file (`question<TAB>[answers]`, no header; ids "1".."N" by position),
    BEIR's queries.jsonl or MS MARCO's queries.tsv (`qid<TAB>query`), told apart by data/corpora.py."""
    layout = query_layout(path)
    if layout == "beir":
        return read_beir_queries(path)
    if layout == "id_text":
        return read_id_text_queries(path)
    out: List[QAPair] = []
    with _file_errors(path), open_text(path) as f:
        reader = csv.reader(f, delimiter="\t")
        end = 0
        for row in reader:
            lineno, end = end + 1, reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if end > lineno:  # a stray quote made one row of several lines, and questions vanish
                raise DataFormatError(path, f"line {lineno}", f"a quoted field runs from here to line {end}, "
                                      "swallowing the rows between (an unbalanced '\"'?)")
            if len(row) != 2:
                raise DataFormatError(path, f"line {lineno}", f"expected 2 tab-separated columns (question, answers), found {len(row)}")
            question, answers = row
            check_question(path, f"line {lineno}", "question", question)
            try:
                parsed = parse_answers(answers)
            except ValueError as e:
                raise DataFormatError(path, f"line {lineno}", f"field 'answers': {e}") from None
            out.append(QAPair(question=question, answers=parsed, qid=str(len(out) + 1)))
    if not out:
        raise DataFormatError(path, "line 1", "no questions (file is empty)")
    return out
