"""BM25 over a passage TSV, with bm25s (sparse-matrix BM25): built by streaming, saved, reused.

A passage is indexed as "title text" (as DPR's and pyserini's BM25 baselines do), lowercased and
split into terms by an analyzer (analyzers.py: `en`, words of two or more characters; `cjk`,
character bigrams of CJK runs; `zh`, jieba words; `auto` picks by the corpus's script), English
stopwords removed, no stemming; k1 = 1.5, b = 0.75 (bm25s' Lucene defaults). Questions go through
the same analyzer, and a query's terms never enter the index's vocabulary (a server's memory stays
flat however many new words it is asked). The index directory holds bm25s' own files (numpy arrays
and JSON, no pickle), `ids.txt` (row -> passage id) and `meta.json`, which records the corpus
it was built from (path, size, a hash of its head and tail, row count) and its analyzer: an index
built from another corpus, or with another analyzer, is refused.

Memory: bm25s takes every passage's token ids as Python lists while building. Measured here:
200,000 synthetic 100-word passages peak at 1.47 GB RSS (24 s; a 163 MB index), i.e. about 7 GB
per million passages; DPR's 21M would need ~150 GB. Past a couple of million passages, build the
index on a larger machine, or use `--bm25_engine lucene` (lucene.py: on disk, memory-mapped). A
build that would not fit in the memory available is refused, naming that flag (`check_fits`).

k1 and b are baked into bm25s' precomputed scores, so an index is searched only with the k1 and b it
was built with (recorded in meta.json; another pair is refused).
"""
from __future__ import annotations

import json
import logging
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..data.passages import iter_passage_chunks
from . import analyzers
from ..common.errors import DprError
from ..common.files import atomic_dir, file_fingerprint, reading, same_file, write_json_atomic

logger = logging.getLogger(__name__)

FORMAT = "dpr_paddle.bm25/1"
PARAMS = {"k1": 1.5, "b": 0.75, "method": "lucene", "stopwords": "en"}
BUILD_BYTES_PER_CORPUS_BYTE = 11  # peak RSS of a build over the corpus file's size (measured: 7 GB per 1M, ~640 MB)


class BM25Error(DprError, RuntimeError):
    """A BM25 index is missing, incomplete or from another corpus."""


def _tokenizer(analyzer: str):
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)  # its DEBUG lines say nothing a user can act on

    return bm25s.tokenization.Tokenizer(lower=True, splitter=analyzers.splitter(analyzer),
                                        stopwords=PARAMS["stopwords"])


def default_index_path(ctx_file: str, analyzer: str = "en", k1: float = PARAMS["k1"], b: float = PARAMS["b"]) -> str:
    """Where the index of `ctx_file` is kept when --bm25_index is not given: the user's cache,
    because corpora often sit in read-only directories; one directory per analyzer (and k1, b)."""
    from ..common.files import cache_root

    name = file_fingerprint(ctx_file)["sha1_ends"][:16] + ("" if analyzer == "en" else "-" + analyzer)
    if (k1, b) != (PARAMS["k1"], PARAMS["b"]):
        name += f"-k1_{k1:g}-b_{b:g}"
    return os.path.join(cache_root(), "bm25", name)


def check_new_index_dir(path: str) -> None:
    """Refuse to build an index at `path` when something else is there: a build replaces the directory whole,
    and `--bm25_index` pointed at a folder of the user's own must not delete it."""
    if os.path.isdir(path) and os.listdir(path) and not os.path.isfile(os.path.join(path, "meta.json")):
        raise BM25Error(f"--bm25_index {path}: a directory that holds other files and no BM25 index; give a new or "
                        "empty directory")
    if os.path.exists(path) and not os.path.isdir(path):
        raise BM25Error(f"--bm25_index {path}: a file, not a directory; give a new or empty directory")


def build_bytes(ctx_file: str) -> int:
    """Peak memory of a bm25s build over `ctx_file`, estimated from its size (a gzipped file is ~3x larger
    read)."""
    size = os.path.getsize(ctx_file) * (3 if ctx_file.endswith(".gz") else 1)
    return size * BUILD_BYTES_PER_CORPUS_BYTE


def memory_plan(ctx_file: str):
    """The MemoryPlan of a bm25s build of `ctx_file` (not logged: `check_fits` logs it once, when it builds)."""
    from ..index.factory import MemoryPlan, available_memory

    return MemoryPlan("bm25s", build_bytes(ctx_file), available_memory(),
                      f"every passage's terms in memory while indexing {os.path.basename(ctx_file)}", [])


def check_fits(ctx_file: str) -> None:
    """Refuse, in one line naming the Lucene engine, a bm25s build that would not fit in memory."""
    from ..index.factory import GB

    plan = memory_plan(ctx_file)
    logger.info(plan.line())
    if not plan.fits:
        raise BM25Error(f"{plan.line()}: bm25s would not fit; use --bm25_engine lucene (an on-disk index searched "
                        f"with a small Java heap), or build on a machine with ~{plan.needed / GB:.0f} GB")


def document_text(text: str, title: str) -> str:
    """What BM25 indexes of a passage, on either engine: "title text" (as DPR's and pyserini's baselines)."""
    return f"{title} {text}" if title else text


def check_source(path: str, meta: dict, ctx_file: Optional[str], analyzer: Optional[str]) -> None:
    """Refuse, in one line, an index (either engine's meta.json) built from another corpus than what `ctx_file`
    holds now, or with another analyzer than `analyzer` (resolved); None skips that check."""
    if ctx_file is not None and not same_file(meta.get("corpus"), ctx_file):
        have, want = meta.get("corpus") or {}, file_fingerprint(ctx_file)
        raise BM25Error(f"{path}: this BM25 index was built from {have.get('path')} ({have.get('size')} bytes, "
                        f"sha1 {str(have.get('sha1'))[:12]}), not from what {want['path']} holds now "
                        f"({want['size']} bytes, sha1 {want['sha1'][:12]}); pass another --bm25_index or delete "
                        "it to rebuild")
    built_with = meta.get("params", {}).get("analyzer", "en")  # indexes made before analyzers were English
    if analyzer is not None and built_with != analyzer:
        raise BM25Error(f"{path}: this BM25 index was built with the {built_with} analyzer, not {analyzer}; pass "
                        f"--bm25_analyzer {built_with}, or another --bm25_index, or delete it to rebuild")


def corpus_analyzer(ctx_file: str, analyzer: str) -> str:
    """`analyzer` resolved for `ctx_file` (`auto` reads the corpus's first passages)."""
    if analyzers.check_name(analyzer) != "auto":
        return analyzer
    ids, texts, titles = next(iter_passage_chunks(ctx_file, analyzers.AUTO_SAMPLE), ([], [], []))
    chosen = analyzers.resolve("auto", (document_text(text, title) for text, title in zip(texts, titles)))
    logger.info("bm25 analyzer auto -> %s (CJK share of %s's first %d passages)", chosen, ctx_file, len(ids))
    return chosen


class BM25Index:
    """A bm25s retriever with the passage ids of its rows; `build`, `load`, `search`."""

    engine = "bm25s"

    def __init__(self, retriever, ids: List[str], meta: dict):
        self.retriever, self.ids, self.meta = retriever, ids, meta
        self.analyzer = meta["params"].get("analyzer", "en")  # indexes made before analyzers were English
        self._terms = analyzers.splitter(self.analyzer)
        self._stopwords = set(_tokenizer(self.analyzer).stopwords)

    @classmethod
    def build(cls, ctx_file: str, path: str, analyzer: str = "en", chunksize: int = 100_000,
              k1: float = PARAMS["k1"], b: float = PARAMS["b"]) -> "BM25Index":
        """Tokenize `ctx_file` chunk by chunk with `analyzer` into one vocabulary, index it, save it to `path`."""
        import bm25s
        from tqdm import tqdm

        check_new_index_dir(path)
        check_fits(ctx_file)
        tokenizer = _tokenizer(analyzer)
        ids, token_ids = [], []
        with tqdm(desc="bm25 tokenize", unit="psg", dynamic_ncols=True) as bar:
            for chunk_ids, texts, titles in iter_passage_chunks(ctx_file, chunksize):
                docs = [document_text(text, title) for text, title in zip(texts, titles)]
                token_ids += tokenizer.tokenize(docs, update_vocab=True, return_as="ids", show_progress=False)
                ids += chunk_ids
                bar.update(len(chunk_ids))
        retriever = bm25s.BM25(k1=k1, b=b, method=PARAMS["method"])
        retriever.index(bm25s.tokenization.Tokenized(ids=token_ids, vocab=tokenizer.get_vocab_dict()),
                        show_progress=False)
        meta = {"format": FORMAT, "corpus": file_fingerprint(ctx_file), "count": len(ids),
                "params": {**PARAMS, "k1": k1, "b": b, "analyzer": analyzer, "engine": "bm25s"}}
        with atomic_dir(path) as tmp:
            retriever.save(tmp, show_progress=False)
            with open(os.path.join(tmp, "ids.txt"), "w", encoding="utf-8") as f:
                f.write("".join(i + "\n" for i in ids))
            write_json_atomic(os.path.join(tmp, "meta.json"), meta)
        logger.info("bm25 index of %d passages (analyzer %s) saved to %s", len(ids), analyzer, path)
        return cls(retriever, ids, meta)

    @classmethod
    def load(cls, path: str, ctx_file: Optional[str] = None, analyzer: Optional[str] = None,
             k1: Optional[float] = None, b: Optional[float] = None) -> "BM25Index":
        """Open a saved index; with `ctx_file`, refuse one that was built from another corpus, with
        `analyzer` (resolved), one built with another analyzer, and with k1 / b, one built with others."""
        import bm25s

        meta_file = os.path.join(path, "meta.json")
        if not os.path.isfile(meta_file):
            raise BM25Error(f"{path}: not a BM25 index (no meta.json); build it with dense_retriever.py --bm25")
        fix = f"delete {path} to rebuild it"
        with reading(meta_file, "BM25 index metadata", fix), open(meta_file, encoding="utf-8") as f:
            meta = json.load(f)
            meta["count"], meta["params"]  # noqa: B018 - a KeyError here is a damaged file
        if meta.get("format") != FORMAT:
            raise BM25Error(f"{path}: a {meta['params'].get('engine', '?')} index, not a bm25s one; pass --bm25_engine "
                            f"{meta['params'].get('engine', '?')}, or another --bm25_index")
        built = (meta["params"].get("k1"), meta["params"].get("b"))
        if (k1 is not None and k1 != built[0]) or (b is not None and b != built[1]):
            raise BM25Error(f"{path}: this bm25s index was built with k1 {built[0]}, b {built[1]} (bm25s bakes them "
                            f"into its scores), not k1 {k1}, b {b}; pass those, another --bm25_index, or delete it "
                            "to rebuild")
        check_source(path, meta, ctx_file, analyzer)
        with reading(path, "BM25 index", fix):
            retriever = bm25s.BM25.load(path, mmap=True, show_progress=False, verbosity=0)
            with open(os.path.join(path, "ids.txt"), encoding="utf-8") as f:
                ids = f.read().splitlines()
        if len(ids) != meta["count"]:
            raise BM25Error(f"{path}: {len(ids)} ids for {meta['count']} passages; delete it to rebuild")
        return cls(retriever, ids, meta)

    @classmethod
    def open(cls, ctx_file: str, path: Optional[str] = None, analyzer: str = "auto", k1: Optional[float] = None,
             b: Optional[float] = None) -> "BM25Index":
        """The index of `ctx_file` with `analyzer` at `path` (default: the cache), built first if it is not there;
        k1 / b default to bm25s' 1.5 / 0.75."""
        analyzer = corpus_analyzer(ctx_file, analyzer)
        k1, b = PARAMS["k1"] if k1 is None else k1, PARAMS["b"] if b is None else b
        path = path or default_index_path(ctx_file, analyzer, k1, b)
        if os.path.isfile(os.path.join(path, "meta.json")):
            index = cls.load(path, ctx_file, analyzer, k1, b)
            logger.info("loaded bm25 index %s (%d passages, analyzer %s)", path, len(index.ids), analyzer)
            return index
        return cls.build(ctx_file, path, analyzer, k1=k1, b=b)

    def __len__(self) -> int:
        return len(self.ids)

    def passage_ids(self):
        """Every passage id of the index, in corpus order."""
        return iter(self.ids)

    def terms(self, text: str) -> List[str]:
        """The index's analyzer applied to a question: its terms, stopwords dropped ("" when none is
        left, as bm25s' tokenizer gives)."""
        return [w for w in self._terms(text.lower()) if w not in self._stopwords] or [""]

    def search(self, questions: Sequence[str], k: int) -> Tuple[np.ndarray, List[List[str]]]:
        """Top k passages per question: (BM25 scores [n, k], passage ids [n][k]), best first."""
        k = min(k, len(self.ids))
        tokens = [self.terms(q) for q in questions]  # unknown terms are dropped by bm25s, never added
        rows, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=0)
        return np.asarray(scores, dtype=np.float32), [[self.ids[r] for r in row] for row in rows]
