"""Readers for DPR's file formats, with errors that name the file, the line and the field.

- biencoder training data: `.json` (a list), `.json.gz`, `.jsonl` (one record a line), `.jsonl.gz`
- passages: `psgs_w100.tsv` layout (header `id<TAB>text<TAB>title`), `.tsv.gz` too, streamed;
  `id` and `text` must be non-empty, a missing or empty `title` reads as ""
- QA pairs: `nq-test.qa.csv` layout (`question<TAB>["a1", "a2"]`), answers parsed without eval
"""
from __future__ import annotations

import ast
import contextlib
import csv
import gzip
import io
import json
import logging
import os
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple

import numpy as np

from ..errors import DprError
from ..utils import open_text

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


@dataclass
class BiEncoderRecord:
    """One training question with its positive, negative and hard-negative passages."""

    question: str
    answers: List[str]
    positives: List[Passage]
    negatives: List[Passage] = field(default_factory=list)
    hard_negatives: List[Passage] = field(default_factory=list)


@dataclass
class QAPair:
    """An evaluation question and its acceptable answers."""

    question: str
    answers: List[str]


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
    return Passage(text=text, title=title, id=None if pid is None else str(pid))


def _parse_record(obj, path: str, where: str) -> BiEncoderRecord:
    if not isinstance(obj, dict):
        raise DataFormatError(path, where, f"record is {type(obj).__name__}, expected an object")
    question = obj.get("question")
    if not isinstance(question, str) or not question.strip():
        raise DataFormatError(path, where, "missing or empty field 'question'")
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
    return BiEncoderRecord(
        question=question,
        answers=answers,
        positives=lists["positive_ctxs"],
        negatives=lists["negative_ctxs"],
        hard_negatives=lists["hard_negative_ctxs"],
    )


def _line_of_offset(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def read_biencoder_records(path: str) -> List[BiEncoderRecord]:
    """Read DPR biencoder training data; records without a positive passage are skipped and counted."""
    _check_exists(path)
    name = path[:-3] if path.endswith(".gz") else path
    records: List[BiEncoderRecord] = []
    with _file_errors(path), open_text(path) as f:
        if name.endswith(".jsonl"):
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataFormatError(path, f"line {lineno}", f"invalid JSON: {e.msg} (column {e.colno})") from None
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
    kept = [r for r in records if r.positives]
    skipped = len(records) - len(kept)
    if skipped:
        logger.info("%s: skipped %d of %d records with no positive passage", path, skipped, len(records))
    if not kept:
        raise DataFormatError(path, "all records", "no record has a positive passage")
    return kept


# --------------------------------------------------------------------------- passages TSV

PASSAGE_COLUMNS = ("id", "text", "title")


def iter_passage_chunks(path: str, chunksize: int = 100_000) -> Iterator[Tuple[List[str], List[str], List[str]]]:
    """Stream a psgs_w100-style TSV as (ids, texts, titles) lists of up to `chunksize` rows.

    pandas' C parser reads DPR's quoting (fields with `"` are quoted, quotes doubled) far faster
    than the csv module. The file is never loaded whole.
    """
    import pandas as pd

    _check_exists(path)
    with _file_errors(path), open_text(path) as f:
        header_line = f.readline()
    if not header_line.strip():
        raise DataFormatError(path, "line 1", "file is empty (expected header 'id<TAB>text<TAB>title')")
    header = next(csv.reader([header_line.rstrip("\r\n")], delimiter="\t"))
    missing = [c for c in PASSAGE_COLUMNS if c not in header]
    if missing:
        raise DataFormatError(path, "line 1", f"header {header} lacks column(s) {missing}; expected 'id<TAB>text<TAB>title'")
    tracked = _TrackedBinary(gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb"))
    short = _ShortRowCheck(path, len(header))
    try:
        reader = _tsv_reader(tracked, header, chunksize)
        crlf = header_line.endswith("\r\n")  # its \r is stripped from the last column below
        row0, held = 0, None
        ids_seen = _DuplicateIds(path, header)
        for chunk in reader:
            if crlf:
                chunk[header[-1]] = chunk[header[-1]].str.removesuffix("\r")
            bad = chunk[["id", "text"]].isna()
            if bad.values.any():
                r, c = [int(x[0]) for x in bad.values.nonzero()]
                column = ("id", "text")[c]
                # Without multi-line fields, data row k (0-based) is on line k + 2.
                raise DataFormatError(path, f"line {row0 + r + 2}", f"missing or empty field '{column}'")
            no_title = np.flatnonzero(chunk["title"].isna().values)
            if len(no_title):  # an empty title is allowed, a missing field is not
                short.check([row0 + int(r) + 2 for r in no_title])
            chunk["title"] = chunk["title"].fillna("")
            ids, texts, titles = chunk["id"].tolist(), chunk["text"].tolist(), chunk["title"].tolist()
            _check_single_line(path, row0, ids, texts, titles)
            ids_seen.add(ids, row0)
            if held is not None:
                yield held
            held = (ids, texts, titles)
            row0 += len(chunk)
        # the last chunk waits until the file's end is known to be whole and its ids unique
        if tracked.last not in (b"", b"\n"):
            raise DataFormatError(path, f"line {row0 + 1}", "the last line ends without a newline: the file looks "
                                  "cut short (an interrupted download or copy?)")
        ids_seen.check_across_chunks()
        if held is not None:
            yield held
    except pd.errors.ParserError as e:
        msg = str(e)
        import re

        m = re.search(r"line (\d+), saw (\d+)", msg)
        if m:
            raise DataFormatError(path, f"line {m.group(1)}", f"wrong number of columns ({msg.strip()})") from None
        m = re.search(r"inside string starting at row (\d+)", msg)
        if m:  # pandas counts the header as row 0, so row R is on line R + 1
            raise DataFormatError(path, f"line {int(m.group(1)) + 1}", "a quoted field opens here and never closes: "
                                  "the file is cut inside quotes, or a '\"' in a text is not doubled") from None
        raise DataFormatError(path, "somewhere", f"unreadable TSV ({msg.strip()})") from None
    except BROKEN_FILE_ERRORS:  # pandas raised them from deep inside its reader
        with _file_errors(path):
            raise
    finally:
        tracked.close()
        short.close()


def _check_single_line(path: str, row0: int, ids, texts, titles) -> None:
    """A field holding a newline means a stray quote swallowed the rows after it (DPR's passages
    are single-line), so rows would go missing without a word."""
    for column, values in (("text", texts), ("title", titles), ("id", ids)):
        if any("\n" in v for v in values):
            r = next(i for i, v in enumerate(values) if "\n" in v)
            raise DataFormatError(path, f"line {row0 + r + 2}", f"field '{column}' runs over several lines: a quote "
                                  "opened here swallows the rows after it (an unbalanced '\"'?)")


def _tsv_reader(source, header: List[str], chunksize: int, **extra):
    """pandas' chunked reader of a passages TSV, with the settings every read of one must share (so
    that row numbers agree)."""
    import pandas as pd

    return pd.read_csv(
        # Only empty fields are NA ("NA" or "null" are real titles); a short row's missing fields are NA too.
        source, sep="\t", dtype=str, keep_default_na=False, na_filter=True, na_values=[""],
        chunksize=chunksize, engine="c", on_bad_lines="error",
        # Only \n ends a row: pandas' default also splits at a lone \r inside a text, which
        # shifts every line number after it.
        lineterminator="\n", header=0, names=header,
        encoding="utf-8-sig",  # a byte-order mark is not part of the header
        **extra,
    )


class _DuplicateIds:
    """Passage ids must be unique, or hits report one passage's text for another's. Within a chunk
    the strings are compared; across chunks 8-byte hashes are kept (168 MB for 21M passages) and
    compared once at the end, and only a hit re-reads the file to name the id and both lines."""

    def __init__(self, path: str, header: List[str]):
        self.path, self.header, self.hashes = path, header, []

    def add(self, ids, row0: int) -> None:
        """Check one chunk's ids (data row row0 first) and remember their hashes."""
        import pandas as pd

        series = pd.Series(ids)
        dup = series.duplicated()
        if dup.any():
            second = int(np.flatnonzero(dup.values)[0])
            first = int(np.flatnonzero((series == series[second]).values)[0])
            self._raise(ids[second], row0 + first, row0 + second)
        self.hashes.append(pd.util.hash_array(np.asarray(ids, dtype=object)))

    def check_across_chunks(self) -> None:
        """Raise on an id that occurs in two chunks."""
        if len(self.hashes) < 2:
            return
        hashes = np.concatenate(self.hashes)  # [N] uint64
        order = np.argsort(hashes, kind="stable")
        same = np.flatnonzero(hashes[order][1:] == hashes[order][:-1])
        if len(same):
            rows = sorted((int(order[i]), int(order[i + 1])) for i in same)
            ids = self._ids_at({r for pair in rows for r in pair})
            for a, b in rows:
                if ids[a] == ids[b]:  # not a 64-bit hash collision
                    self._raise(ids[b], a, b)

    def _ids_at(self, rows) -> dict:
        out, row0 = {}, 0
        for chunk in _tsv_reader(self.path, self.header, 100_000, usecols=["id"]):
            for r in rows:
                if row0 <= r < row0 + len(chunk):
                    out[r] = chunk["id"].iat[r - row0]
            row0 += len(chunk)
        return out

    def _raise(self, pid: str, first_row: int, second_row: int):
        raise DataFormatError(self.path, f"line {second_row + 2}", f"passage id {pid!r} occurs twice, at lines "
                              f"{first_row + 2} and {second_row + 2}; ids must be unique, or hits report one "
                              "passage for another")


class _TrackedBinary(io.RawIOBase):
    """A binary stream that remembers the last byte read, to tell a file whose last line was cut."""

    def __init__(self, raw):
        super().__init__()
        self.raw, self.last = raw, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.raw.readinto(buffer)
        if n:
            self.last = bytes(buffer[n - 1 : n])
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()


class _ShortRowCheck:
    """Tells an empty last field (`id<TAB>text<TAB>`, allowed) from a missing one (a short row, an
    error) by looking at the raw lines, which pandas does not keep. It opens its own reader only
    when a row without a title appears and then moves forward line by line, so a corpus whose
    titles are all present is read once."""

    def __init__(self, path: str, columns: int):
        self.path, self.columns, self.f, self.line = path, columns, None, 0

    def check(self, line_numbers) -> None:
        if self.f is None:
            self.f = gzip.open(self.path, "rb") if self.path.endswith(".gz") else open(self.path, "rb")
        for target in line_numbers:
            raw = b""
            while self.line < target:
                raw = self.f.readline()
                self.line += 1
            fields = raw.rstrip(b"\r\n").count(b"\t") + 1
            if fields < self.columns:
                raise DataFormatError(self.path, f"line {target}", f"{fields} fields, the header has {self.columns} "
                                      "(a cut or malformed row)")

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


def iter_passages(path: str, chunksize: int = 100_000) -> Iterator[Passage]:
    """Stream passages one at a time (see `iter_passage_chunks`)."""
    for ids, texts, titles in iter_passage_chunks(path, chunksize):
        for pid, text, title in zip(ids, texts, titles):
            yield Passage(text=text, title=title, id=pid)


def count_passages(path: str) -> int:
    """Number of passages in a TSV, by streaming it once."""
    return sum(len(ids) for ids, _, _ in iter_passage_chunks(path))


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


def read_qa(path: str) -> List[QAPair]:
    """Read a DPR QA file (`question<TAB>[answers]`, no header)."""
    _check_exists(path)
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
            if not question.strip():
                raise DataFormatError(path, f"line {lineno}", "empty field 'question'")
            try:
                parsed = parse_answers(answers)
            except ValueError as e:
                raise DataFormatError(path, f"line {lineno}", f"field 'answers': {e}") from None
            out.append(QAPair(question=question, answers=parsed))
    if not out:
        raise DataFormatError(path, "line 1", "no questions (file is empty)")
    return out
