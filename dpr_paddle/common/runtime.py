"""Process set-up that only the commands (and `Retriever.load`) do: logging, CPU thread defaults
applied before paddle first loads, and Paddle's import without its OMP warning; and the one that CPU
training does wherever it starts (`keep_freed_memory`, from `speed_up_training`).

Nothing here runs on `import dpr_paddle`: a user's application that imports the package keeps its
environment and its sys.stderr as they were.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import statistics
import sys
import time
from typing import Callable, List, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)


def setup_logging(level: int = logging.INFO) -> None:
    """Configure the root logger once with a compact format (the commands call this)."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def cpu_threads() -> int:
    """Threads for a CPU inference engine: OMP_NUM_THREADS (which `cpu_defaults` sets to the usable
    cores unless the user did), else the CPU count."""
    return int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))


@functools.lru_cache(maxsize=None)
def _cpuinfo() -> dict:
    """The first processor's fields in /proc/cpuinfo (vendor_id, model name, flags, ...); empty elsewhere."""
    fields = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="ignore") as f:
            for line in f:
                if not line.strip():  # the first processor's block ends here
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


MAX_ISA = "DPR_PADDLE_MAX_ISA"
# DPR_PADDLE_MAX_ISA's levels, named as oneDNN names them, so that an older host (an AVX2 EPYC, a Skylake) can be
# built for, tested and benchmarked on a newer CPU: the flag prefixes each level hides, the flags it keeps
# despite them, and what oneDNN and MKL are told
_NEWER_THAN_AVX2 = ("avx512", "amx", "avx_")
ISA_LEVELS = {
    "avx2": (_NEWER_THAN_AVX2, (), {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}),
    "avx512_core": (_NEWER_THAN_AVX2, ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"),
                    {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "MKL_ENABLE_INSTRUCTIONS": "AVX512"}),
    "avx512_core_bf16": (("amx", "avx512_fp16", "avx_"), (),
                         {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16", "MKL_ENABLE_INSTRUCTIONS": "AVX512"}),
}


def isa_keeps(level: str, flag: str) -> bool:
    """Whether DPR_PADDLE_MAX_ISA=`level` leaves the CPU flag `flag` visible."""
    hidden, kept, _ = ISA_LEVELS[level]
    return flag in kept or not flag.startswith(hidden)


def max_isa() -> str:
    """The DPR_PADDLE_MAX_ISA level ("" when unset); an unknown level is refused in one line."""
    level = os.environ.get(MAX_ISA, "").strip().lower()
    if level and level not in ISA_LEVELS:
        from .errors import DprError

        raise DprError(f"{MAX_ISA}={os.environ[MAX_ISA]!r} is not a level this project knows: use one of "
                       f"{', '.join(ISA_LEVELS)}, or leave it unset to use all of this CPU")
    return level


def cpu_info() -> Tuple[str, frozenset]:
    """(model name, instruction-set flags) of this machine's CPU, from /proc/cpuinfo (the platform's name and
    no flags elsewhere), the flags capped at DPR_PADDLE_MAX_ISA when it is set. Every choice made by CPU
    features (the kernels' build flags, --bf16, bf16 encoding, the keys of measured choices) reads them here."""
    import platform

    fields = _cpuinfo()
    flags = frozenset(fields.get("flags", "").split())
    level = max_isa()
    if level:
        flags = frozenset(f for f in flags if isa_keeps(level, f))
    return fields.get("model name") or platform.processor() or platform.machine(), flags


def cpu_name() -> str:
    """This CPU's model name for messages, naming DPR_PADDLE_MAX_ISA when it hides some of its instructions."""
    level = max_isa()
    return cpu_info()[0] + (f" as capped by {MAX_ISA}={level}" if level else "")


def isa_cap_env() -> dict:
    """The environment that caps oneDNN and MKL at DPR_PADDLE_MAX_ISA's level ({} when unset); it must be set
    before paddle loads, as `cpu_defaults` does."""
    level = max_isa()
    return dict(ISA_LEVELS[level][2]) if level else {}


VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                "amx_bf16", "amx_int8")


def host_line() -> str:
    """This machine in one line for benchmark tables: CPU model, its vector extensions, usable cores."""
    model, flags = cpu_info()
    fields = _cpuinfo()
    if "cpu family" in fields:  # a VM's model name ("AMD EPYC") names no generation; family and model do
        model += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    vector = " ".join(f for f in VECTOR_FLAGS if f in flags) or "no AVX2"
    level = max_isa()
    if level:
        vector += f" (capped by {MAX_ISA}={level})"
    return f"{model}; {vector}; {usable_cores()} cores"


def cpu_key(*parts) -> str:
    """A short key for something measured on this CPU: its model name and every instruction-set flag, with
    `parts` (shapes, lengths) that the measurement depends on."""
    model, flags = cpu_info()
    return hashlib.sha1("|".join([model, " ".join(sorted(flags)), *map(str, parts)]).encode()).hexdigest()[:12]


def time_alternating(calls: Sequence[Callable[[], object]], repeats: int = 3) -> List[float]:
    """Median seconds of each zero-argument call: one warm-up each (first calls allocate and start threads),
    then all of them in turn, `repeats` times, so a machine's drift reaches each alike."""
    for call in calls:
        call()
    times: List[List[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for i, call in enumerate(calls):
            start = time.perf_counter()
            call()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def measured_choice(path: str, measure: Callable[[], dict], valid: Callable[[dict], bool]) -> Tuple[dict, bool]:
    """A choice measured once on this machine and cached as JSON at `path`: (the cached dict, False) when
    `path` holds a dict that `valid` accepts, else (measure(), True) after writing it atomically. Processes
    starting at once measure once (a lock beside it); an unreadable or invalid cache file is measured again."""
    from .files import process_lock, write_json_atomic

    with process_lock(path + ".lock"):
        try:
            with open(path, encoding="utf-8") as f:
                cached = json.load(f)
            if isinstance(cached, dict) and valid(cached):
                return cached, False
        except (OSError, ValueError):
            pass  # not measured yet, or an unreadable file: measure (again) and rewrite it
        choice = measure()
        write_json_atomic(path, choice)
    return choice, True


def _is_amd_cpu() -> bool:
    return _cpuinfo().get("vendor_id") == "AuthenticAMD"


_APPLIED: dict = {}  # what cpu_defaults set in this process (and its parent, before a fork)


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_defaults(threads: Optional[int] = None) -> dict:
    """Set MKL/OpenMP defaults that speed up Paddle's CPU wheel, only where unset; returns what was set.

    Paddle's CPU wheel links MKL, which takes a slow generic code path on AMD CPUs unless
    `MKL_DEBUG_CPU_TYPE=5`; measured here, a 2048^2 matmul goes from ~22 to ~134 GFLOP/s.
    OpenMP gets one thread per usable core, or `threads` (a server's workers split the cores).
    With DPR_PADDLE_MAX_ISA set, oneDNN and MKL get the same cap (`isa_cap_env`).
    `DPR_PADDLE_NO_CPU_DEFAULTS=1` turns this off (but not DPR_PADDLE_MAX_ISA's own cap on the kernels).
    Once paddle is loaded its libraries have read the environment, so setting it then is pointless
    and nothing is set (the commands call this before their first paddle import).
    """
    if os.environ.get("DPR_PADDLE_NO_CPU_DEFAULTS") == "1" or "paddle" in sys.modules:
        return {}
    wanted = {"MKL_DEBUG_CPU_TYPE": "5"} if _is_amd_cpu() else {}
    wanted["OMP_NUM_THREADS"] = str(threads or usable_cores())
    wanted.update(isa_cap_env())
    applied = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(applied)
    _APPLIED.update(applied)
    if applied:
        logger.info("CPU defaults (unset before; DPR_PADDLE_NO_CPU_DEFAULTS=1 keeps them off): %s",
                    " ".join(f"{k}={v}" for k, v in applied.items()))
    return applied


_MALLOC = {"set": None}
_KEEP_BYTES = 1 << 30  # blocks up to this size come from the heap, not from a mapping of their own
_NEVER_TRIM = -1  # M_TRIM_THRESHOLD's "never": malloc.h's size_t threshold read from an int, (size_t) -1


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of returning it to the kernel: blocks of up to
    1 GiB come from the heap, and the heap is never trimmed; True when set (once per process; a no-op without
    glibc or with DPR_PADDLE_NO_CPU_DEFAULTS=1).

    A CPU training step allocates and frees tensors of tens to hundreds of MB (a chunk's attention scores are
    batch x heads x L x L floats). Above its mmap threshold glibc maps each one afresh and unmaps it on free, so
    every step touched new pages: 0.1-1.4 million page faults a step and 9-14 % of its wall time on an AMD EPYC
    host. Trimming did the same a chunk at a time: a reranker's chunk frees gigabytes at the heap's top, past
    any fixed trim threshold, and the next chunk faulted them back in (16.0 against 11.4 s a step;
    docs/benchmarks.md section 14). The cost is that the process keeps its peak heap, which the next step
    reaches again."""
    if _MALLOC["set"] is None:
        _MALLOC["set"] = False
        if os.environ.get("DPR_PADDLE_NO_CPU_DEFAULTS") != "1":
            try:
                import ctypes

                libc = ctypes.CDLL("libc.so.6")
            except OSError:  # not glibc
                return False
            m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
            _MALLOC["set"] = bool(libc.mallopt(m_mmap_threshold, _KEEP_BYTES)
                                  and libc.mallopt(m_trim_threshold, _NEVER_TRIM))
    return _MALLOC["set"]


class _DropLines:
    """A stderr stand-in that drops whole lines starting with given prefixes (and the newline
    `print` writes after them); everything else passes through unchanged."""

    def __init__(self, stream, prefixes):
        self._stream, self._prefixes, self._dropped = stream, tuple(prefixes), False

    def write(self, text):
        if text.startswith(self._prefixes):
            self._dropped = True
            return len(text)
        if self._dropped and text == "\n":
            self._dropped = False
            return len(text)
        self._dropped = False
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def _without_omp_warning():
    saved = sys.stderr
    sys.stderr = _DropLines(saved, ("WARNING: OMP_NUM_THREADS set to", "PLEASE USE OMP_NUM_THREADS WISELY"))
    try:
        yield
    finally:
        sys.stderr = saved


def import_paddle_quietly(applied: dict) -> None:
    """Import paddle now. When `cpu_defaults` set OMP_NUM_THREADS (`applied`), the "OMP_NUM_THREADS set
    to N, not 1 ... PLEASE USE OMP_NUM_THREADS WISELY" lines Paddle prints on import are dropped: one
    thread per core was set on purpose (it is what makes CPU encoding and training fast), so the
    warning would only alarm; a user's own setting still gets it. stderr is ours only for the length
    of the import."""
    if "paddle" in sys.modules:
        return
    with _without_omp_warning() if "OMP_NUM_THREADS" in applied else contextlib.nullcontext():
        import paddle  # noqa: F401


def prepare_process(needs_paddle: bool = True, threads: Optional[int] = None) -> dict:
    """CPU defaults where unset (`threads` OpenMP threads, default one per core), then paddle imported
    quietly when the work needs it; returns what was set."""
    applied = cpu_defaults(threads)
    if needs_paddle:
        import_paddle_quietly(_APPLIED)
    return applied


def quiet_warnings() -> None:
    """Ignore the Python warnings of our dependencies that no user can act on (only these messages):
    Paddle's missing ccache and setuptools' distutils notice on import, and PaddleNLP's word on every
    truncated (title, text) pair, where truncation is what we asked for."""
    import warnings

    for message in ("No ccache found", "Setuptools is replacing distutils", "Be aware, overflowing tokens are not returned"):
        warnings.filterwarnings("ignore", message=message)


def quiet_paddlenlp() -> None:
    """PaddleNLP's INFO lines (weights saved/loaded) drown ours: keep its warnings only."""
    try:
        from paddlenlp.utils.log import logger as paddlenlp_logger

        paddlenlp_logger.set_level("WARNING")
    except ImportError:
        pass


@contextlib.contextmanager
def without_native_lines(*fragments: str):
    """Drop lines containing any of `fragments` that native code (glog) writes to the process's stderr
    (file descriptor 2) inside the block; every other line is written back when it ends."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not any(f in line for f in fragments)]
            if kept:
                sys.stderr.write("".join(kept))
