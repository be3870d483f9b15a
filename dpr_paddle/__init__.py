"""dpr_paddle: Dense Passage Retrieval in PaddlePaddle with an exact gradient cache.

Importing the package sets CPU threading defaults *before* paddle loads (see `cpu_defaults`);
it does not import paddle itself, so the readers and the evaluation stay light.
"""
import os

__version__ = "0.1.0"


def _is_amd_cpu() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="ignore") as f:
            head = f.read(4096)
    except OSError:
        return False
    return "AuthenticAMD" in head


def cpu_defaults() -> dict:
    """Set MKL/OpenMP defaults that speed up Paddle's CPU wheel; never override the user.

    Paddle's CPU wheel links MKL, which takes a slow generic code path on AMD CPUs unless
    `MKL_DEBUG_CPU_TYPE=5`; measured here, a 2048^2 matmul goes from ~22 to ~134 GFLOP/s.
    OpenMP gets one thread per usable core. Each variable is only set when unset, and
    `DPR_PADDLE_NO_CPU_DEFAULTS=1` turns all of this off. Returns what was set.
    """
    if os.environ.get("DPR_PADDLE_NO_CPU_DEFAULTS") == "1":
        return {}
    wanted = {}
    if _is_amd_cpu():
        wanted["MKL_DEBUG_CPU_TYPE"] = "5"
    try:
        wanted["OMP_NUM_THREADS"] = str(len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        wanted["OMP_NUM_THREADS"] = str(os.cpu_count() or 1)
    applied = {}
    for key, value in wanted.items():
        if key not in os.environ:
            os.environ[key] = value
            applied[key] = value
    if "OMP_NUM_THREADS" in applied and applied["OMP_NUM_THREADS"] != "1":
        _silence_paddle_omp_warning()
    return applied


class _DropLines:
    """A stderr wrapper that drops whole lines starting with given prefixes (and the newline
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


def _silence_paddle_omp_warning() -> None:
    """Paddle prints "WARNING: OMP_NUM_THREADS set to N, not 1 ... PLEASE USE OMP_NUM_THREADS WISELY."
    on import whenever OMP_NUM_THREADS > 1. We set it on purpose (one thread per core is what makes
    CPU encoding and training fast), so the warning would only alarm; a user's own setting still
    gets Paddle's warning."""
    import sys

    sys.stderr = _DropLines(sys.stderr, ("WARNING: OMP_NUM_THREADS set to", "PLEASE USE OMP_NUM_THREADS WISELY"))


cpu_defaults()


def __getattr__(name):
    # `from dpr_paddle import Retriever` without importing paddle for every `import dpr_paddle`
    if name == "Retriever":
        from .api import Retriever

        return Retriever
    raise AttributeError(f"module 'dpr_paddle' has no attribute {name!r}")
