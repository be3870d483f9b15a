"""Passages and queries in the layouts retrieval benchmarks ship, beside DPR's own.

- BEIR: `corpus.jsonl`, one object a line with `_id`, `text` and an optional `title`; `queries.jsonl`
  with `_id` and `text` (and, where a converter kept them, `answers`).
- MS MARCO / T2Ranking: `collection.tsv`, `pid<TAB>text` (MS MARCO without a header, T2Ranking with
  `pid<TAB>text`); `queries.tsv`, `qid<TAB>query`. Lines are split at the tab and taken as they are:
  these files do not quote, and their texts hold `"` freely.

Every reader streams, names the file and line of a bad row in one `DataFormatError` and refuses a
repeated id; a TSV whose last line was cut (no final newline) is refused as DPR's TSV reader does
(a cut JSON line is invalid JSON).
"""
from __future__ import annotations

from typing import Iterator, List, Tuple

import numpy as np

from ..common.files import open_text
from .readers import DataFormatError, QAPair, _check_exists, _file_errors, check_id, check_question, json_lines

Chunk = Tuple[List[str], List[str], List[str]]


def _lines(path: str) -> Iterator[Tuple[int, str]]:
    """(line number from 1, line without its newline), refusing a cut last line."""
    with _file_errors(path), open_text(path) as f:
        lineno, line = 0, "\n"
        for lineno, line in enumerate(f, start=1):
            yield lineno, line.rstrip("\n").removesuffix("\r")
        if lineno and not line.endswith("\n"):
            raise DataFormatError(path, f"line {lineno}", "the last line ends without a newline: the file looks cut "
                                  "short (an interrupted download or copy?)")


class _UniqueIds:
    """Ids must be unique: 8-byte hashes and their lines are kept (about 16 bytes an id) and compared at
    the end; a hash hit is confirmed by the ids themselves before it is reported."""

    def __init__(self, path: str, what: str):
        self.path, self.what, self.hashes, self.lines = path, what, [], []

    def add(self, ids: List[str], lines: List[int]) -> None:
        """Remember one chunk's ids and the lines they are on."""
        import pandas as pd

        self.hashes.append(pd.util.hash_array(np.asarray(ids, dtype=object)))
        self.lines.append(np.asarray(lines, dtype=np.int64))

    def check(self, id_at) -> None:
        """Raise on a repeated id; `id_at(lines)` gives {line: id} by reading the file again."""
        if not self.hashes:
            return
        hashes, lines = np.concatenate(self.hashes), np.concatenate(self.lines)  # [N], [N]
        order = np.argsort(hashes, kind="stable")
        same = np.flatnonzero(hashes[order][1:] == hashes[order][:-1])
        if not len(same):
            return
        pairs = sorted((int(lines[order[i]]), int(lines[order[i + 1]])) for i in same)
        ids = id_at({x for pair in pairs for x in pair})
        for a, b in pairs:
            if ids[a] == ids[b]:  # not a 64-bit collision
                raise DataFormatError(self.path, f"line {b}", f"{self.what} id {ids[b]!r} occurs twice, at lines {a} "
                                      f"and {b}; ids must be unique")


# --------------------------------------------------------------------------- BEIR jsonl

def _json_rows(path: str, required: Tuple[str, ...]) -> Iterator[Tuple[int, dict]]:
    with _file_errors(path), open_text(path) as f:
        for lineno, obj in json_lines(path, f):
            yield lineno, _object(path, lineno, obj, required)


def _object(path: str, lineno: int, obj, required: Tuple[str, ...]) -> dict:
    """`obj` checked: a JSON object whose `required` fields are non-empty strings (a numeric `_id` is read as text)."""
    if not isinstance(obj, dict):
        raise DataFormatError(path, f"line {lineno}", "not a JSON object")
    for key in required:
        value = obj.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and key == "_id":
            value = obj[key] = str(value)
        if not isinstance(value, str) or not value.strip():
            raise DataFormatError(path, f"line {lineno}", f"field '{key}' is missing or empty")
        if key == "_id":
            check_id(path, f"line {lineno}", key, value)
    return obj


def beir_corpus_chunks(path: str, chunksize: int = 100_000) -> Iterator[Chunk]:
    """BEIR's corpus.jsonl as (ids, texts, titles) chunks."""
    _check_exists(path)
    unique = _UniqueIds(path, "passage")
    ids, texts, titles, lines = [], [], [], []
    for lineno, obj in _json_rows(path, ("_id", "text")):
        title = obj.get("title") or ""
        if not isinstance(title, str):
            raise DataFormatError(path, f"line {lineno}", "field 'title' is not a string")
        ids.append(obj["_id"]), texts.append(obj["text"]), titles.append(title), lines.append(lineno)
        if len(ids) == chunksize:
            unique.add(ids, lines)
            yield ids, texts, titles
            ids, texts, titles, lines = [], [], [], []
    if ids:
        unique.add(ids, lines)
    unique.check(lambda wanted: {n: o["_id"] for n, o in _json_rows(path, ("_id",)) if n in wanted})
    if ids:
        yield ids, texts, titles


def read_beir_queries(path: str) -> List[QAPair]:
    """BEIR's queries.jsonl (`_id`, `text`; `answers` kept when present)."""
    _check_exists(path)
    out, lines = [], []
    for lineno, obj in _json_rows(path, ("_id", "text")):
        answers = obj.get("answers", [])
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise DataFormatError(path, f"line {lineno}", "field 'answers' is not a list of strings")
        check_question(path, f"line {lineno}", "text", obj["text"])
        out.append(QAPair(question=obj["text"], answers=answers, qid=obj["_id"]))
        lines.append(lineno)
    return _checked_queries(path, out, lines)


# --------------------------------------------------------------------------- MS MARCO / T2Ranking tsv

def _id_text_rows(path: str, header: bool) -> Iterator[Tuple[int, str, str]]:
    for lineno, line in _lines(path):
        if header and lineno == 1 or not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataFormatError(path, f"line {lineno}", f"expected 2 tab-separated fields (id, text), found "
                                  f"{len(fields)}")
        if not fields[0].strip() or not fields[1].strip():
            raise DataFormatError(path, f"line {lineno}", f"empty field '{'id' if not fields[0].strip() else 'text'}'")
        yield lineno, check_id(path, f"line {lineno}", "id", fields[0]), fields[1]


def id_text_chunks(path: str, header: bool, chunksize: int = 100_000) -> Iterator[Chunk]:
    """MS MARCO's collection.tsv (`pid<TAB>text`; T2Ranking's with a header) as chunks with empty titles."""
    _check_exists(path)
    unique = _UniqueIds(path, "passage")
    ids, texts, lines = [], [], []
    for lineno, pid, text in _id_text_rows(path, header):
        ids.append(pid), texts.append(text), lines.append(lineno)
        if len(ids) == chunksize:
            unique.add(ids, lines)
            yield ids, texts, [""] * len(ids)
            ids, texts, lines = [], [], []
    if ids:
        unique.add(ids, lines)
    unique.check(lambda wanted: {n: pid for n, pid, _ in _id_text_rows(path, header) if n in wanted})
    if ids:
        yield ids, texts, [""] * len(ids)


def read_id_text_queries(path: str, header: bool = False) -> List[QAPair]:
    """MS MARCO / T2Ranking queries.tsv (`qid<TAB>query`), without answers."""
    out, lines = [], []
    for lineno, qid, text in _id_text_rows(path, header):
        check_question(path, f"line {lineno}", "query", text)
        out.append(QAPair(question=text, answers=[], qid=qid))
        lines.append(lineno)
    return _checked_queries(path, out, lines)


def _checked_queries(path: str, queries: List[QAPair], lines: List[int]) -> List[QAPair]:
    if not queries:
        raise DataFormatError(path, "line 1", "no queries (file is empty)")
    seen = {}
    for q, lineno in zip(queries, lines):
        if q.qid in seen:
            raise DataFormatError(path, f"line {lineno}", f"query id {q.qid!r} occurs twice, at lines {seen[q.qid]} "
                                  f"and {lineno}")
        seen[q.qid] = lineno
    return queries


# --------------------------------------------------------------------------- which layout

def passage_layout(path: str) -> str:
    """`beir` (.jsonl), `dpr` (a header naming id, text and title), `id_text_header` (a `pid<TAB>text`
    header: T2Ranking) or `id_text` (two columns, no header: MS MARCO)."""
    if path.endswith((".jsonl", ".jsonl.gz")):
        return "beir"
    first = _first_line(path)
    fields = first.split("\t")
    if "id" in fields and "text" in fields and "title" in fields:
        return "dpr"
    if len(fields) == 2 and fields[1].strip().lower() == "text" and fields[0].strip().lower() in ("pid", "docid"):
        return "id_text_header"
    if len(fields) == 2 and "id" not in fields:  # `id<TAB>text` is a DPR header without its title
        return "id_text"
    return "dpr"  # its reader names what the header lacks


def query_layout(path: str) -> str:
    """`beir` (.jsonl), `id_text` (a .tsv of `qid<TAB>query`, as MS MARCO, T2Ranking and DuReader-retrieval
    name theirs) or `dpr` (`question<TAB>[answers]`, DPR's .qa.csv; what else its reader refuses)."""
    if path.endswith((".jsonl", ".jsonl.gz")):
        return "beir"
    fields = _first_line(path).split("\t")
    if path.endswith((".tsv", ".tsv.gz")) and len(fields) == 2 and not fields[1].strip().startswith("["):
        return "id_text"
    return "dpr"


def _first_line(path: str) -> str:
    _check_exists(path)
    with _file_errors(path), open_text(path) as f:
        for line in f:
            if line.strip():
                return line.rstrip("\r\n")
    return ""
