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
from typing import IO, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def cache_root() -> str:
    """Where converted models, exports and derived indexes live: $DPR_PADDLE_HOME or ~/.cache/dpr_paddle."""
    return os.environ.get("DPR_PADDLE_HOME", os.path.join(os.path.expanduser("~"), ".cache", "dpr_paddle"))


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
    """Identify a (possibly huge) file cheaply: absolute path, size, and a SHA-1 of its first and
    last `span` bytes. Derived files (a BM25 index, a passage store) record it to refuse a
    different corpus; a copy of the same corpus elsewhere matches on size and hash."""
    import hashlib

    size = os.path.getsize(path)
    h = hashlib.sha1()
    with open(path, "rb") as f:
        h.update(f.read(span))
        if size > span:
            f.seek(max(size - span, span))
            h.update(f.read(span))
    return {"path": os.path.abspath(path), "size": size, "sha1_ends": h.hexdigest()}


def check_output_path(path: str, what: str = "output") -> None:
    """Fail now, in one line, if `path` could not be written later (its directory is missing and
    cannot be made, is read-only, or sits under a regular file); nothing is left behind."""
    from .errors import DprError

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
    from .errors import DprError

    if not os.path.isfile(path):
        raise DprError(f"{path}: no such {what} file")
