"""Passage texts by id without reading the TSV: an SQLite file built once by streaming it.

Table `passages(id TEXT PRIMARY KEY, row INTEGER, title TEXT, text TEXT)`, `row` being the
0-based data row of the TSV; table `meta(key, value)` records the corpus (path, size, a hash of
its head and tail: common.files.file_fingerprint), the rows stored so far and, once complete, the row
count. Inserts go in batches, one transaction each, and `rows_done` is updated in the same
transaction, so an interrupted build resumes after its last committed batch with nothing lost
or doubled. A store built from another corpus is refused; a passage id that occurs twice in the
corpus is an error naming both lines.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
from typing import Dict, Iterable, Optional, Tuple

from ..data.passages import iter_passage_chunks
from ..index.shards import EmbeddingError, shard_paths
from ..common.errors import DprError
from ..common.files import file_fingerprint, process_lock, reading, same_file

logger = logging.getLogger(__name__)

FORMAT = "dpr_paddle.passages/1"
STORE_NAME = "passages.sqlite"


class PassageStoreError(DprError, RuntimeError):
    """A passage store is from another corpus, incomplete, or the corpus repeats an id."""


def default_store_path(shard_dir: str) -> str:
    """The store kept beside embedding shards: SHARDS_PARENT/passages.sqlite."""
    return os.path.join(os.path.dirname(os.path.abspath(shard_dir)), STORE_NAME)


class PassageStore:
    """Look up (text, title) by passage id; `build` streams a TSV into it, `open` checks it."""

    def __init__(self, path: str, conn: sqlite3.Connection, meta: dict):
        self.path, self.conn, self.meta = path, conn, meta

    def __len__(self) -> int:
        return int(self.meta["count"])

    @staticmethod
    def _meta(conn) -> dict:
        return {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}

    @classmethod
    def build(cls, ctx_file: str, path: str, batch: int = 50_000) -> "PassageStore":
        """Stream `ctx_file` into the store at `path`, resuming an interrupted build of the same corpus."""
        from tqdm import tqdm

        corpus = file_fingerprint(ctx_file)
        conn = sqlite3.connect(path, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("CREATE TABLE IF NOT EXISTS passages (id TEXT PRIMARY KEY, row INTEGER, title TEXT, text TEXT)")
        with reading(path, "passage store", f"delete {path} to rebuild it"):
            meta = cls._meta(conn)
        if meta and not same_file(meta.get("corpus"), ctx_file):
            conn.close()
            raise PassageStoreError(f"{path}: a passage store of {meta.get('corpus', {}).get('path')}, not of "
                                    f"{ctx_file}; delete it or pass another path")
        with conn:
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?), ('corpus', ?), ('rows_done', '0')",
                         (json.dumps(FORMAT), json.dumps(corpus)))
        done = int(cls._meta(conn)["rows_done"])
        row = 0
        with tqdm(total=None, initial=done, desc="passage store", unit="psg", dynamic_ncols=True) as bar:
            for ids, texts, titles in iter_passage_chunks(ctx_file, batch):
                if row + len(ids) <= done:  # committed by an earlier run
                    row += len(ids)
                    continue
                skip = max(done - row, 0)
                rows = [(pid, row + i, title, text) for i, (pid, text, title) in enumerate(zip(ids, texts, titles))][skip:]
                cls._insert(conn, ctx_file, rows, row + len(ids))
                row += len(ids)
                bar.update(len(rows))
        with conn:
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('count', ?)", (json.dumps(row),))
        logger.info("passage store %s: %d passages", path, row)
        return cls(path, conn, cls._meta(conn))

    @staticmethod
    def _insert(conn, ctx_file: str, rows, rows_done: int) -> None:
        try:
            with conn:  # one transaction: the rows and the progress mark together
                conn.executemany("INSERT INTO passages VALUES (?, ?, ?, ?)", rows)
                conn.execute("UPDATE meta SET value = ? WHERE key = 'rows_done'", (json.dumps(rows_done),))
        except sqlite3.IntegrityError:
            seen = {}
            for pid, r, _, _ in rows:  # find the first repeat, within the batch or against the store
                first = seen.get(pid)
                if first is None:
                    hit = conn.execute("SELECT row FROM passages WHERE id = ?", (pid,)).fetchone()
                    first = hit[0] if hit else None
                if first is not None:
                    raise PassageStoreError(f"{ctx_file}: passage id {pid!r} occurs twice, at lines {first + 2} "
                                            f"and {r + 2}; ids must be unique") from None
                seen[pid] = r
            raise

    @classmethod
    def open(cls, path: str, ctx_file: Optional[str] = None) -> "PassageStore":
        """Open a complete store; with `ctx_file`, refuse one that was built from another corpus (or
        another version of it)."""
        if not os.path.isfile(path):
            raise PassageStoreError(f"{path}: no passage store; build it with python -m dpr_paddle.passage_store")
        with reading(path, "passage store", f"delete {path} to rebuild it"):
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            meta = cls._meta(conn)
        if "count" not in meta:
            conn.close()
            raise PassageStoreError(f"{path}: incomplete passage store; re-run its build to finish it")
        if ctx_file is not None and not same_file(meta.get("corpus"), ctx_file):
            conn.close()
            raise PassageStoreError(f"{path}: built from {meta['corpus']['path']} ({meta['corpus']['size']} bytes), "
                                    f"not from what {ctx_file} holds now; delete it to rebuild")
        return cls(path, conn, meta)

    @classmethod
    def is_complete(cls, path: str) -> bool:
        """Whether `path` is a finished store (an interrupted build has no row count yet)."""
        if not os.path.isfile(path):
            return False
        with reading(path, "passage store", f"delete {path} to rebuild it"):
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                has_meta = conn.execute("SELECT name FROM sqlite_master WHERE name = 'meta'").fetchone()
                return bool(has_meta) and "count" in cls._meta(conn)
            finally:
                conn.close()

    def verify(self, ctx_file: str) -> None:
        """Read every page (SQLite's integrity check) and compare every row with `ctx_file`: a store
        damaged anywhere, even inside a text, is one line. It reads both whole files (about as long as
        a build): the command runs it, searches do not."""
        fix = f"delete {self.path} to rebuild it"
        with reading(self.path, "passage store", fix):
            problems = [r[0] for r in self.conn.execute("PRAGMA integrity_check(5)")]
            if problems != ["ok"]:
                raise PassageStoreError(f"{self.path}: damaged passage store ({' '.join('; '.join(problems).split())[:200]}); "
                                        f"{fix}")
            stored = self.conn.execute("SELECT id, text, title FROM passages ORDER BY rowid")
            row = 0
            for ids, texts, titles in iter_passage_chunks(ctx_file, 50_000):
                got = stored.fetchmany(len(ids))
                want = list(zip(ids, texts, titles))
                if got != want:
                    bad = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
                    raise PassageStoreError(f"{self.path}: passage {row + bad} (line {row + bad + 2} of {ctx_file}) "
                                            f"differs from the corpus: the passage store is damaged; {fix}")
                row += len(ids)
            if stored.fetchone() is not None or row != len(self):
                raise PassageStoreError(f"{self.path}: more passages than {ctx_file} holds; {fix}")

    @classmethod
    def open_or_build(cls, ctx_file: str, path: str) -> "PassageStore":
        """The store of `ctx_file` at `path`, built (or finished) first when needed. Processes that open
        one store at once (a server's workers, two runs) take turns: one builds, the others then open it."""
        if cls.is_complete(path):
            return cls.open(path, ctx_file)
        with process_lock(path + ".lock"):
            return cls.open(path, ctx_file) if cls.is_complete(path) else cls.build(ctx_file, path)

    def get(self, ids: Iterable[str]) -> Dict[str, Tuple[str, str]]:
        """{id: (text, title)} for the ids that are in the store."""
        ids = list(dict.fromkeys(ids))
        out = {}
        for i in range(0, len(ids), 900):  # SQLite's default limit on bound parameters is 999
            part = ids[i : i + 900]
            q = f"SELECT id, text, title FROM passages WHERE id IN ({','.join('?' * len(part))})"
            with reading(self.path, "passage store", f"delete {self.path} to rebuild it"):
                out.update({pid: (text, title) for pid, text, title in self.conn.execute(q, part)})
        return out


def fetch_passages(ctx_file: str, wanted: set) -> Dict[str, tuple]:
    """{id: (text, title)} for the wanted ids only, streaming the TSV (21M rows need not fit), with a bar."""
    from tqdm import tqdm

    found = {}
    with tqdm(desc="passage texts", unit="psg", dynamic_ncols=True, leave=False) as bar:
        for ids, texts, titles in iter_passage_chunks(ctx_file):
            for pid, text, title in zip(ids, texts, titles):
                if pid in wanted:
                    found[pid] = (text, title)
            bar.update(len(ids))
    missing = wanted - found.keys()
    if missing:
        sample = sorted(missing)[:5]
        raise EmbeddingError(f"{ctx_file}: {len(missing)} retrieved passage ids are not in the ctx file "
                             f"(e.g. {sample}); were the embeddings made from another corpus?")
    return found


def passage_texts(ctx_file: str, wanted: set, store: Optional[str], shards_pattern: Optional[str]) -> Dict[str, tuple]:
    """{id: (text, title)}: from the passage store (`store`, or passages.sqlite beside the shards)
    when there is one, else by streaming the TSV."""
    path = store or (default_store_path(shard_paths(shards_pattern)[0]) if shards_pattern else None)
    if not (path and PassageStore.is_complete(path)):
        if store:
            raise PassageStoreError(f"--passage_store {store}: no complete store there; build it with "
                                 f"python -m dpr_paddle.passage_store {ctx_file} --output {store}")
        return fetch_passages(ctx_file, wanted)  # an unfinished store beside the shards is not used
    found = PassageStore.open(path, ctx_file).get(wanted)
    missing = wanted - found.keys()
    if missing:
        raise EmbeddingError(f"{path}: {len(missing)} retrieved passage ids are not in the passage store "
                             f"(e.g. {sorted(missing)[:5]}); were the embeddings made from another corpus?")
    logger.info("passage texts from %s", path)
    return found
