"""Readers for DPR's file formats, with errors that name the file, the line and the field.

- biencoder training data: `.json` (a list), `.json.gz`, `.jsonl` (one record a line), `.jsonl.gz`
- passages: `psgs_w100.tsv` layout (header `id<TAB>text<TAB>title`), `.tsv.gz` too, streamed;
  `id` and `text` must be non-empty, a missing or empty `title` reads as ""
- QA pairs: the answers column of `nq-test.qa.csv` (`parse_answers`, without eval); the file itself, and
  the BEIR and MS MARCO layouts of questions, are read by `questions.read_qa`
"""
from __future__ import annotations

import ast
import contextlib
import gzip
import json
import math
import logging
import os
import re
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple


from ..common.errors import DprError
from ..common.files import open_text
from ..common.text import NOTHING_TO_SEARCH, id_problem, searchable

logger = logging.getLogger(__name__)


class DataFormatError(DprError, ValueError):
    """Malformed input: the message names the file, the line or record, and what is wrong."""

    def __init__(self, path: str, where: str, what: str):
        self.path, self.where, self.what = path, where, what
        super().__init__(f"{path}: {where}: {what}")


@dataclass
class Passage:
    """One passage: DPR's (title, text) plus the corpus id when known."""

    text: str
    title: str = ""
    id: Optional[str] = None
    teacher_score: Optional[float] = None  # a cross-encoder's score for this record's question (distillation)


@dataclass
class BiEncoderRecord:
    """One training question with its positive, negative and hard-negative passages."""

    question: str
    answers: List[str]
    positives: List[Passage]
    negatives: List[Passage] = field(default_factory=list)
    hard_negatives: List[Passage] = field(default_factory=list)
    teacher: Optional[str] = None  # the reranker that wrote the passages' teacher_score (its fingerprint)


@dataclass
class QAPair:
    """An evaluation question, its acceptable answers (none for relevance-labelled sets) and its id:
    a BEIR or MS MARCO query's own, for DPR's qa.csv (which has none) its position, "1".."N"."""

    question: str
    answers: List[str]
    qid: Optional[str] = None


def _first_bad_utf8(path: str) -> Tuple[int, int]:
    """(line, byte within the line, both from 1) of the first byte that is not UTF-8 in `path`."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return lineno, e.start + 1
    return 0, 0


BROKEN_FILE_ERRORS = (UnicodeDecodeError, EOFError, gzip.BadGzipFile, zlib.error)


@contextlib.contextmanager
def _file_errors(path: str):
    """Turn what a broken file raises deep inside a decoder into one DataFormatError naming the place."""
    try:
        yield
    except UnicodeDecodeError:
        try:
            line, col = _first_bad_utf8(path)
        except (EOFError, OSError, zlib.error):
            line, col = 0, 0
        where = f"line {line}" if line else "somewhere"
        raise DataFormatError(path, where, f"byte {col} of the line is not UTF-8 text" if line else
                              "not UTF-8 text") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataFormatError(path, "end of file", f"truncated or corrupt gzip data ({type(e).__name__}: {e}); "
                              "download or copy the file again") from None


def _check_exists(path: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")


def check_id(path: str, where: str, field: str, value: str) -> str:
    """`value` if it can serve as an id (common.text.id_problem), else a DataFormatError naming the place."""
    problem = id_problem(value)
    if problem:
        raise DataFormatError(path, where, f"field '{field}' {value[:60]!r} {problem}")
    return value


_PLAIN_IDS = re.compile(r"[\x21-\x7e\n]*")  # printable ASCII without spaces, one id a line


def check_ids(path: str, first_line: int, ids: List[str]) -> None:
    """`check_id` for a chunk of ids on consecutive lines from `first_line`; ids of printable ASCII (the
    usual case) pass with one regular-expression scan of the chunk, so a 21M-passage corpus pays
    seconds, not minutes."""
    if _PLAIN_IDS.fullmatch("\n".join(ids)) and all(ids):
        return
    for r, pid in enumerate(ids):
        check_id(path, f"line {first_line + r}", "id", pid)


def check_question(path: str, where: str, field: str, value: str) -> str:
    """`value` if it holds something to search (common.text.searchable), else a DataFormatError."""
    if not searchable(value):
        raise DataFormatError(path, where, f"field '{field}' {NOTHING_TO_SEARCH}")
    return value


# --------------------------------------------------------------------------- biencoder JSON

def _parse_ctx(obj, path: str, where: str, key: str, i: int) -> Passage:
    if not isinstance(obj, dict):
        raise DataFormatError(path, where, f"{key}[{i}] is {type(obj).__name__}, expected an object")
    text = obj.get("text")
    if not isinstance(text, str):
        raise DataFormatError(path, where, f"{key}[{i}] has no string field 'text'")
    title = obj.get("title", "") or ""
    if not isinstance(title, str):
        raise DataFormatError(path, where, f"{key}[{i}].title is {type(title).__name__}, expected a string")
    pid = obj.get("passage_id", obj.get("psg_id"))
    if pid is not None:
        pid = check_id(path, where, f"{key}[{i}].passage_id", str(pid))
    score = obj.get("teacher_score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))
                              or not math.isfinite(score)):
        raise DataFormatError(path, where, f"{key}[{i}].teacher_score is {score!r}, expected a finite number")
    return Passage(text=text, title=title, id=pid, teacher_score=None if score is None else float(score))


def _parse_record(obj, path: str, where: str) -> BiEncoderRecord:
    if not isinstance(obj, dict):
        raise DataFormatError(path, where, f"record is {type(obj).__name__}, expected an object")
    question = obj.get("question")
    if not isinstance(question, str):
        raise DataFormatError(path, where, "missing field 'question'")
    check_question(path, where, "question", question)
    answers = obj.get("answers", [])
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise DataFormatError(path, where, "field 'answers' must be a list of strings")
    lists = {}
    for key in ("positive_ctxs", "negative_ctxs", "hard_negative_ctxs"):
        value = obj.get(key, [])
        if value is None:
            value = []
        if not isinstance(value, list):
            raise DataFormatError(path, where, f"field '{key}' must be a list")
        lists[key] = [_parse_ctx(c, path, where, key, i) for i, c in enumerate(value)]
    if "positive_ctxs" not in obj:
        raise DataFormatError(path, where, "missing field 'positive_ctxs'")
    teacher = obj.get("teacher")
    if teacher is not None and not isinstance(teacher, str):
        raise DataFormatError(path, where, f"field 'teacher' is {teacher!r}, expected the fingerprint of a reranker")
    return BiEncoderRecord(
        question=question,
        answers=answers,
        positives=lists["positive_ctxs"],
        negatives=lists["negative_ctxs"],
        hard_negatives=lists["hard_negative_ctxs"],
        teacher=teacher,
    )


def _line_of_offset(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def json_lines(path: str, f) -> Iterator[Tuple[int, object]]:
    """(line number, parsed value) of each non-empty line of the open JSONL file `f`."""
    for lineno, line in enumerate(f, start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(path, f"line {lineno}", f"invalid JSON: {e.msg} (column {e.colno})") from None


def read_biencoder_records(path: str) -> List[BiEncoderRecord]:
    """Read DPR biencoder training data; records without a positive passage are skipped and counted."""
    _check_exists(path)
    name = path[:-3] if path.endswith(".gz") else path
    records: List[BiEncoderRecord] = []
    with _file_errors(path), open_text(path) as f:
        if name.endswith(".jsonl"):
            for lineno, obj in json_lines(path, f):
                records.append(_parse_record(obj, path, f"line {lineno}"))
        else:
            text = f.read()
            if not text.strip():
                raise DataFormatError(path, "line 1", "file is empty")
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataFormatError(path, f"line {e.lineno}", f"invalid JSON: {e.msg} (column {e.colno})") from None
            if not isinstance(data, list):
                raise DataFormatError(path, "line 1", f"expected a JSON list of records, found {type(data).__name__}")
            # Record positions in the list are what a user can find; lines are not known after json.loads.
            for i, obj in enumerate(data):
                records.append(_parse_record(obj, path, f"record {i}"))
    if not records:
        raise DataFormatError(path, "line 1", "no records")
    empty = 0
    for r in records:  # a passage without text would train the model to match nothing
        for key in ("positives", "negatives", "hard_negatives"):
            passages = getattr(r, key)
            setattr(r, key, [p for p in passages if p.text.strip()])
            empty += len(passages) - len(getattr(r, key))
    if empty:
        logger.warning("%s: %d passages (positive or negative) have an empty text; they are left out", path, empty)
    kept = [r for r in records if r.positives]
    skipped = len(records) - len(kept)
    if skipped:
        logger.info("%s: skipped %d of %d records with no positive passage", path, skipped, len(records))
    if not kept:
        raise DataFormatError(path, "all records", "no record has a positive passage")
    return kept


# --------------------------------------------------------------------------- QA CSV

def parse_answers(field: str) -> List[str]:
    """Parse DPR's answer column, a Python/JSON list literal of strings, without eval."""
    try:
        value = json.loads(field)
    except json.JSONDecodeError:
        try:
            with warnings.catch_warnings():  # "invalid escape sequence" noise on odd strings
                warnings.simplefilter("ignore")
                value = ast.literal_eval(field)  # literals only: no names, calls or attributes
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise ValueError(f"answers {field[:80]!r} are not a list literal") from None
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise ValueError(f"answers {field[:80]!r} are not a list of strings")
    return value
