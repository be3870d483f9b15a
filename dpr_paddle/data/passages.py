"""The passages TSV (DPR's psgs_w100.tsv: id, text, title), streamed in chunks.

Each row is checked as it is read: a short row, a quoted field cut or left open, a field running
over lines, invalid UTF-8 and a repeated passage id each end the read with one line naming the
file and line. Only `\n` ends a row (a lone `\r` inside a text stays in the text).
"""
from __future__ import annotations

import csv
import gzip
import io
from typing import Iterator, List, Optional, Tuple

import numpy as np

from ..common.files import open_text
from .corpora import beir_corpus_chunks, id_text_chunks, passage_layout
from .readers import BROKEN_FILE_ERRORS, DataFormatError, Passage, _check_exists, _file_errors, check_ids

PASSAGE_COLUMNS = ("id", "text", "title")


def iter_passage_chunks(path: str, chunksize: int = 100_000) -> Iterator[Tuple[List[str], List[str], List[str]]]:
    """Stream a corpus as (ids, texts, titles) lists of up to `chunksize` rows: DPR's psgs_w100 TSV,
    BEIR's corpus.jsonl or MS MARCO's / T2Ranking's collection.tsv (data/corpora.py tells them apart)."""
    layout = passage_layout(path)
    if layout == "beir":
        chunks = beir_corpus_chunks(path, chunksize)
    elif layout.startswith("id_text"):
        chunks = id_text_chunks(path, layout == "id_text_header", chunksize)
    else:
        chunks = _dpr_tsv_chunks(path, chunksize)
    return _not_empty(path, chunks, "line 2" if layout in ("dpr", "id_text_header") else "line 1")


def _not_empty(path: str, chunks, where: str):
    """`chunks` as they come, and an error at their end when there were none: every reader of a corpus
    (encoding, BM25, the passage store, mining) refuses a corpus without passages in one place, instead
    of writing empty shards or indexes that fail later somewhere else."""
    n = 0
    for chunk in chunks:
        n += len(chunk[0])
        yield chunk
    if not n:
        raise DataFormatError(path, where, "no passages (the file holds no data rows)")


def _dpr_tsv_chunks(path: str, chunksize: int):
    """DPR's TSV (header id, text, title). pandas' C parser reads DPR's quoting (fields with `"` are
    quoted, quotes doubled) far faster than the csv module. The file is never loaded whole."""
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
            bad["text"] |= chunk["text"].str.strip().eq("")  # a text of spaces is as empty as none (BEIR's rule too)
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
    check_ids(path, row0 + 2, ids)


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


def iter_range(ctx_file: str, start: int, end: Optional[int], block: int) -> Iterator[Tuple[int, List[Passage]]]:
    """Stream passages [start, end) of a corpus (`end` None: to its end) in blocks of `block`, as (block index,
    passages): a shard's rows, for encoding and for a Lucene shard."""
    end = float("inf") if end is None else end
    pos, buf, b = 0, [], 0
    for ids, texts, titles in iter_passage_chunks(ctx_file, chunksize=max(block, 10_000)):
        n = len(ids)
        lo, hi = max(start - pos, 0), min(end - pos, n)
        for i in range(lo, hi):
            buf.append(Passage(text=texts[i], title=titles[i], id=ids[i]))
            if len(buf) == block:
                yield b, buf
                b, buf = b + 1, []
        pos += n
        if pos >= end:
            break
    if buf:
        yield b, buf


def count_passages(path: str) -> int:
    """Number of passages in a corpus, by streaming it once."""
    return sum(len(ids) for ids, _, _ in iter_passage_chunks(path))


