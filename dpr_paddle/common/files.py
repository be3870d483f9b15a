"""Files: atomic writes, text files that may be gzipped, cheap file fingerprints, checked input and
output paths, and the cache directory."""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
import tempfile
from typing import IO, Iterator, Optional

from .errors import DprError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def cache_root() -> str:
    """Where converted models, exports and derived indexes live: $DPR_PADDLE_HOME or ~/.cache/dpr_paddle."""
    return os.environ.get("DPR_PADDLE_HOME", os.path.join(os.path.expanduser("~"), ".cache", "dpr_paddle"))


@contextlib.contextmanager
def process_lock(path: str) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (made if missing): processes that build one thing at
    once (a server's workers, two runs) take turns. The kernel frees it when the holder dies."""
    import fcntl

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def claim(path: str, what: str):
    """Take the exclusive lock on the file `path` without waiting, for as long as the returned open file
    lives (the kernel frees it when the process dies, however it dies); the holder's pid is written in
    it. A lock another process holds is one DprError naming that process and `what` it guards."""
    import fcntl

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise DprError(f"{what} is in use by another process (pid {holder}); wait for it to finish, or choose "
                       "another location") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def open_text(path: str, mode: str = "rt") -> IO[str]:
    """Open a text file for reading, transparently un-gzipping `.gz` files; a UTF-8 byte-order
    mark (as Windows editors write it) is dropped instead of becoming part of the first field."""
    encoding = "utf-8-sig" if "r" in mode else "utf-8"
    if path.endswith(".gz"):
        return gzip.open(path, mode, encoding=encoding, newline="")
    return open(path, mode, encoding=encoding, newline="")


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path next to `path`; on success rename it onto `path`.

    The rename is atomic on POSIX, so readers see the old file or the complete new one,
    never a half-written file. On error the temporary file is removed.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """Yield a temporary directory next to `path`; on success it replaces `path`.

    An existing `path` is moved aside first and deleted only after the new one is in place.
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=parent)
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        old = None
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=os.path.basename(path) + ".", suffix=".old", dir=parent)
            os.rmdir(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json_atomic(path: str, obj, indent: int = 2) -> None:
    """Write `obj` as JSON to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent, ensure_ascii=False)
            f.write("\n")


def write_text_atomic(path: str, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        with io.open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def file_fingerprint(path: str, span: int = 1 << 16) -> dict:
    """Identify a (possibly huge) file: absolute path, size, a SHA-1 of its first and last `span` bytes
    (`sha1_ends`, cheap, for naming cache directories) and a SHA-1 of all of it (`sha1`, so that an
    edit anywhere is caught). The full digest is computed once per file version and cached by (path,
    size, mtime, ctime, inode): 1.36 GB/s measured here, about 10 s for DPR's 13 GB psgs_w100.tsv
    (docs/benchmarks.md section 9); later opens cost a stat. Derived files (a BM25 index, a passage store, shards) record
    it to refuse another corpus (`same_file`); a copy of the same corpus elsewhere matches."""
    import hashlib

    size = os.path.getsize(path)
    h = hashlib.sha1()
    with open(path, "rb") as f:
        h.update(f.read(span))
        if size > span:
            f.seek(max(size - span, span))
            h.update(f.read(span))
    return {"path": os.path.abspath(path), "size": size, "sha1_ends": h.hexdigest(), "sha1": content_sha1(path)}


def content_sha1(path: str, block: int = 1 << 22) -> str:
    """SHA-1 of the whole file, cached under the cache root by (absolute path, size, mtime, change time,
    inode). The change time is what makes the cache safe: `cp -p` and `rsync -t` set the modification
    time back after an edit, but no tool can set the change time (any write or chmod moves it; a
    moved ctime only costs a re-hash)."""
    import hashlib

    st = os.stat(path)
    key = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()
    stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    cache = os.path.join(cache_root(), "digests", key + ".json")
    try:
        with open(cache, encoding="utf-8") as f:
            saved = json.load(f)
        if saved.get("stamp") == stamp and isinstance(saved.get("sha1"), str):
            return saved["sha1"]
    except (OSError, ValueError):
        pass
    digest = sha1_of_file(path, block)
    try:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        write_json_atomic(cache, {"path": os.path.abspath(path), "stamp": stamp, "sha1": digest})
    except OSError:  # a read-only cache costs a re-hash next time, nothing else
        pass
    return digest


def sha1_of_file(path: str, block: int = 1 << 22) -> str:
    """SHA-1 of the whole file, read now (no cache: a bit flipped on disk keeps size and mtime)."""
    import hashlib

    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


def same_file(recorded: Optional[dict], path: str) -> bool:
    """Whether `path` holds what the fingerprint `recorded` (an earlier file_fingerprint) describes:
    same size and same full digest (a fingerprint from before full digests never matches)."""
    if not isinstance(recorded, dict):
        return False
    now = file_fingerprint(path)
    return recorded.get("size") == now["size"] and recorded.get("sha1") == now["sha1"]


def check_output_path(path: str, what: str = "output") -> None:
    """Fail now, in one line, if `path` could not be written later (its directory is missing and
    cannot be made, is read-only, or sits under a regular file); nothing is left behind."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    try:
        os.makedirs(directory, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".dpr_paddle_probe.", dir=directory)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise DprError(f"{path}: the {what} cannot be written there ({e.strerror or e}); "
                       "choose another location or fix the permissions") from None


def check_input_file(path: str, what: str = "input") -> None:
    """Fail now, in one line, if an input file is missing."""
    if not os.path.isfile(path):
        raise DprError(f"{path}: no such {what} file")


class ArtefactError(DprError, RuntimeError):
    """A file dpr_paddle wrote earlier (shard, graph, store, index, checkpoint) is damaged or foreign."""


# what a damaged file raises from the libraries that read them back (numpy, json, zipfile, sqlite3,
# hnswlib, bm25s, paddle): each is turned into one line naming the file and what to do
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, IndexError, TypeError, RuntimeError, AttributeError,
                SyntaxError, ArithmeticError, MemoryError)  # numpy parses a .npy header as a Python literal


@contextlib.contextmanager
def reading(path: str, what: str, fix: str) -> Iterator[None]:
    """Read an artefact: any failure becomes one ArtefactError naming `path`, `what` it is and the `fix`."""
    import sqlite3
    import tokenize
    import zipfile

    try:
        yield
    except DprError:
        raise
    except (*_READ_ERRORS, zipfile.BadZipFile, sqlite3.DatabaseError, tokenize.TokenError) as e:
        detail = " ".join(str(e).split())[:200] or type(e).__name__
        raise ArtefactError(f"{path}: damaged or unreadable {what} ({type(e).__name__}: {detail}); {fix}") from None
