"""BM25 on Lucene (Anserini's jar, through jvm.py): an inverted index on disk, memory-mapped, searched
with a small Java heap, so BM25 reaches DPR's 21M passages where bm25s (in memory) cannot.

An index directory is a plain Lucene index in Anserini's layout (fields `id`, stored and with doc
values for tie-breaking, and `contents`, "title text", frequencies without positions or stored text:
BM25 needs no more, and the corpus and the passage store hold the text), so pyserini's LuceneSearcher
opens it too. Beside Lucene's files: `meta.json` (engine, analyzer, the corpus's identity and the
shard's rows) and `ids.txt` (the shard's passage ids in corpus order). A build writes into a
temporary directory renamed when complete, under a process lock (concurrent builds take turns), and
needs no temporary disk beyond the index itself: passages stream from the corpus, never copied.

Analyzers (analyzers.py names; the Java analyzer each maps to):
- `en`: Anserini's default English analyzer (Porter stemming, Lucene's English stopwords); bm25s'
  `en` does not stem, so the two rank differently.
- `cjk`: Lucene's CJKAnalyzer (Anserini's `-language zh`): CJK character bigrams, a lone character as a
  unigram, English words elsewhere.
- `cjk+uni`: the same chain with CJKBigramFilter's `outputUnigrams`, so every CJK character is also a
  term, as in bm25s' `cjk+uni`.
- `zh`: jieba words made here (analyzers.zh_terms), indexed pretokenized (WhitespaceAnalyzer), the way
  Anserini indexes pretokenized text.

BM25's k1 and b are applied when searching (Lucene keeps term frequencies and lengths), so they are not
baked in: Anserini's 0.9 / 0.4 (DPR's BM25 settings) unless given. Shards built on several machines
(`dpr-bm25-index --shard_id`) are searched as one through Lucene's MultiReader: the collection
statistics are summed, so the scores are those of one index over the whole corpus.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..common.files import atomic_dir, cache_root, file_fingerprint, process_lock, reading, write_json_atomic
from ..data.passages import count_passages, iter_range
from . import analyzers, jvm
from .bm25 import BM25Error, check_new_index_dir, check_source, document_text

logger = logging.getLogger(__name__)

FORMAT = "dpr_paddle.lucene/1"
DEFAULT_K1, DEFAULT_B = 0.9, 0.4  # Anserini's BM25 defaults, as DPR's BM25 baseline used
JAVA_ANALYZER = {
    "en": "Anserini DefaultEnglishAnalyzer (Porter stemming, Lucene English stopwords)",
    "cjk": "Lucene CJKAnalyzer (CJK bigrams)",
    "cjk+uni": "Lucene CJK chain with CJKBigramFilter outputUnigrams (bigrams and characters)",
    "zh": "jieba words (analyzers.zh_terms), pretokenized, WhitespaceAnalyzer",
}
_CONTENTS_SIGNATURE = "(Ljava/lang/String;Ljava/lang/CharSequence;Lorg/apache/lucene/index/IndexableFieldType;)V"


def java_analyzer(name: str):
    """The Lucene Analyzer of a resolved analyzer name (see the module's docstring)."""
    if name == "en":
        (english,) = jvm.classes("io.anserini.analysis.DefaultEnglishAnalyzer")
        return english.newDefaultInstance()
    if name == "cjk":
        (cjk,) = jvm.classes("org.apache.lucene.analysis.cjk.CJKAnalyzer")
        return cjk()
    if name == "cjk+uni":
        (custom,) = jvm.classes("org.apache.lucene.analysis.custom.CustomAnalyzer")
        return (custom.builder().addCharFilter("cjkWidth").withTokenizer("standard").addTokenFilter("lowercase")
                .addTokenFilter("cjkBigram", "outputUnigrams", "true").addTokenFilter("stop").build())
    if name == "zh":
        (whitespace,) = jvm.classes("org.apache.lucene.analysis.core.WhitespaceAnalyzer")
        return whitespace()
    raise analyzers.AnalyzerError(f"--bm25_analyzer {name!r}: one of {', '.join(analyzers.ANALYZERS)}")


def _prepared(analyzer: str):
    """What Python does to a text before Lucene's analyzer: jieba for `zh`, nothing else."""
    if analyzer == "zh":
        return lambda text: " ".join(analyzers.zh_terms(text))
    return lambda text: text


def default_index_path(ctx_file: str, analyzer: str) -> str:
    """The cached Lucene index of `ctx_file` with `analyzer` (one directory per analyzer)."""
    return os.path.join(cache_root(), "bm25", f"{file_fingerprint(ctx_file)['sha1_ends'][:16]}-lucene-{analyzer}")


def index_dirs(path: str) -> List[str]:
    """The index directories `path` names: one directory, or a glob of shard directories."""
    if any(c in path for c in "*?["):
        return sorted(d for d in glob.glob(path) if os.path.isdir(d))
    return [path]


def read_meta(path: str) -> dict:
    """An index directory's meta.json, refused in one line when it is missing, damaged, or another engine's."""
    meta_file = os.path.join(path, "meta.json")
    if not os.path.isfile(meta_file):
        raise BM25Error(f"{path}: not a BM25 index (no meta.json); build it with --bm25_engine lucene, or "
                        "dpr-bm25-index")
    fix = f"delete {path} to rebuild it"
    with reading(meta_file, "BM25 index metadata", fix), open(meta_file, encoding="utf-8") as f:
        meta = json.load(f)
        meta["count"], meta["params"]  # noqa: B018 - a KeyError here is a damaged file
    if meta.get("format") != FORMAT:
        engine = meta.get("params", {}).get("engine", "bm25s")
        raise BM25Error(f"{path}: a {engine} index, not a Lucene one; pass --bm25_engine {engine}, or another "
                        "--bm25_index")
    return meta


def holds_index(path: str) -> bool:
    """Whether `path` holds a Lucene index of ours (its meta.json says so); damage is named by `read_meta`."""
    try:
        with open(os.path.join(path, "meta.json"), encoding="utf-8") as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _check_shards(paths: List[str], metas: List[dict], ctx_file: Optional[str], analyzer: Optional[str]) -> None:
    """Shards searched together must be one corpus, one analyzer, and every shard exactly once."""
    first = metas[0]
    for path, meta in zip(paths, metas):
        check_source(path, meta, ctx_file, analyzer)
        if meta["corpus"].get("sha1") != first["corpus"].get("sha1") or meta["params"] != first["params"]:
            raise BM25Error(f"{path} and {paths[0]}: shards of different corpora or analyzers cannot be searched "
                            "together")
    shards = sorted((m["shard"]["id"], m["shard"]["num_shards"]) for m in metas)
    want = [(i, first["shard"]["num_shards"]) for i in range(first["shard"]["num_shards"])]
    if shards != want:
        raise BM25Error(f"{', '.join(paths)}: shards {[s for s, _ in shards]} of {first['shard']['num_shards']}; every "
                        f"shard 0..{first['shard']['num_shards'] - 1} is needed exactly once")


class LuceneIndex:
    """A Lucene BM25 index (one directory, or shards searched as one); `build`, `load`, `open`, `search`."""

    engine = "lucene"

    def __init__(self, paths: List[str], metas: List[dict], k1: float, b: float, threads: int):
        self.paths, self.metas, self.threads = paths, metas, threads
        self.analyzer = metas[0]["params"]["analyzer"]
        self.meta = {"params": {"engine": "lucene", "analyzer": self.analyzer, "k1": k1, "b": b, "shards": len(paths),
                                "java_analyzer": JAVA_ANALYZER[self.analyzer]}}
        self._count = sum(m["count"] for m in metas)
        self._prepare = _prepared(self.analyzer)
        self._pad: List[str] = []
        self._pool: Optional[ThreadPoolExecutor] = None
        with jvm.java_errors(f"{paths[0]}: opening the Lucene index", f"delete {paths[0]} to rebuild it"):
            self._searcher = self._open_searcher(k1, b)

    def __len__(self) -> int:
        return self._count

    def _open_searcher(self, k1: float, b: float):
        """A Lucene IndexSearcher with BM25(k1, b) over the index, or over Lucene's MultiReader of its shards (BM25's
        statistics are then summed over the whole corpus); queries are Anserini's bag of words, and ties are
        broken by passage id, as Anserini breaks them."""
        reader_cls, directory, paths_cls, multi, searcher_cls, bm25, sort, sort_field, sort_type, generator, \
            scored = jvm.classes(
                "org.apache.lucene.index.DirectoryReader", "org.apache.lucene.store.FSDirectory", "java.nio.file.Paths",
                "org.apache.lucene.index.MultiReader", "org.apache.lucene.search.IndexSearcher",
                "org.apache.lucene.search.similarities.BM25Similarity", "org.apache.lucene.search.Sort",
                "org.apache.lucene.search.SortField", "org.apache.lucene.search.SortField$Type",
                "io.anserini.search.query.BagOfWordsQueryGenerator", "io.anserini.search.ScoredDocs")
        readers = [reader_cls.open(directory.open(paths_cls.get(p))) for p in self.paths]
        held = sum(r.numDocs() for r in readers)
        if held != self._count:
            raise BM25Error(f"{', '.join(self.paths)}: Lucene holds {held} passages, its meta.json says {self._count}; "
                            "a damaged or half-copied index: delete it to rebuild")
        many = "([Lorg/apache/lucene/index/IndexReader;)V"  # MultiReader(IndexReader...): pyjnius needs the signature
        reader = readers[0] if len(readers) == 1 else multi(*readers, signature=many)
        searcher = searcher_cls(reader, signature="(Lorg/apache/lucene/index/IndexReader;)V")
        searcher.setSimilarity(bm25(float(k1), float(b)))
        self._generator, self._analyzer, self._scored = generator(), java_analyzer(self.analyzer), scored
        self._sort = sort(sort_field.FIELD_SCORE, sort_field("id", sort_type.STRING_VAL),
                          signature="([Lorg/apache/lucene/search/SortField;)V")
        return searcher

    @classmethod
    def build(cls, ctx_file: str, path: str, analyzer: str, heap: str = jvm.DEFAULT_HEAP, threads: int = 2,
              shard_id: int = 0, num_shards: int = 1, k1: float = DEFAULT_K1, b: float = DEFAULT_B) -> "LuceneIndex":
        """Index rows [start, end) of shard `shard_id` of `num_shards` of `ctx_file` into `path` with `threads`
        indexing threads (Lucene analyses in Java, outside the GIL), atomically and under a process lock."""
        from ..index.shards import shard_range

        check_new_index_dir(path)
        jvm.start(heap)
        with process_lock(os.path.abspath(path) + ".lock"):
            if os.path.isfile(os.path.join(path, "meta.json")):
                logger.info("lucene index %s was built by another process while this one waited; loaded it", path)
                return cls.load(path, ctx_file, analyzer, k1, b, threads, heap)
            start, end = (0, None) if num_shards == 1 else shard_range(count_passages(ctx_file), shard_id, num_shards)
            with atomic_dir(path) as tmp:
                count = _write_index(tmp, ctx_file, analyzer, start, end, threads)
                meta = {"format": FORMAT, "corpus": file_fingerprint(ctx_file), "count": count,
                        "params": {"engine": "lucene", "analyzer": analyzer},
                        "shard": {"id": shard_id, "num_shards": num_shards, "start": start, "end": start + count},
                        "anserini": jvm.start(heap)["jar"]}
                write_json_atomic(os.path.join(tmp, "meta.json"), meta)
        logger.info("lucene index of %d passages (analyzer %s, shard %d of %d) saved to %s", count, analyzer, shard_id,
                    num_shards, path)
        return cls([path], [meta], k1, b, threads)

    @classmethod
    def load(cls, path: str, ctx_file: Optional[str] = None, analyzer: Optional[str] = None, k1: float = DEFAULT_K1,
             b: float = DEFAULT_B, threads: int = 2, heap: str = jvm.DEFAULT_HEAP) -> "LuceneIndex":
        """Open the index (or shards: a glob) at `path`; refuse another corpus, analyzer, engine or a shard set
        with gaps, in one line."""
        paths = index_dirs(path)
        if not paths:
            raise BM25Error(f"--bm25_index {path}: no directory matches")
        metas = [read_meta(p) for p in paths]
        _check_shards(paths, metas, ctx_file, analyzer)
        jvm.start(heap)
        return cls(paths, metas, k1, b, threads)

    @classmethod
    def open(cls, ctx_file: str, path: Optional[str], analyzer: str, heap: str = jvm.DEFAULT_HEAP, threads: int = 2,
             k1: float = DEFAULT_K1, b: float = DEFAULT_B) -> "LuceneIndex":
        """The Lucene index of `ctx_file` at `path` (default: the cache), built first when it is not there."""
        path = path or default_index_path(ctx_file, analyzer)
        if index_dirs(path) != [path] or os.path.isfile(os.path.join(path, "meta.json")):
            index = cls.load(path, ctx_file, analyzer, k1, b, threads, heap)
            logger.info("loaded lucene index %s (%d passages, analyzer %s, k1 %s, b %s)", path, len(index), analyzer,
                        k1, b)
            return index
        return cls.build(ctx_file, path, analyzer, heap, threads, k1=k1, b=b)

    def passage_ids(self) -> Iterator[str]:
        """Every passage id of the index, shard by shard in corpus order."""
        for _, path in sorted((m["shard"]["id"], p) for m, p in zip(self.metas, self.paths)):
            with open(os.path.join(path, "ids.txt"), encoding="utf-8") as f:
                for line in f:
                    yield line.rstrip("\n")

    def _padding(self, k: int) -> List[str]:
        """The corpus's first k ids: a question with fewer than k matching passages (only stopwords, say) is
        filled with passages scored 0, as bm25s returns them, so every row has k."""
        if len(self._pad) < k:
            self._pad = [pid for _, pid in zip(range(k), self.passage_ids())]
        return self._pad

    def _search_one(self, prepared: str, k: int) -> Tuple[List[str], List[float]]:
        query = self._generator.buildQuery("contents", self._analyzer, prepared)
        found = self._scored.fromTopDocs(self._searcher.search(query, k, self._sort, True), self._searcher)
        return list(found.docids), list(found.scores)  # two array copies, not a JNI call per hit

    def search(self, questions: Sequence[str], k: int) -> Tuple[np.ndarray, List[List[str]]]:
        """Top k passages per question: (BM25 scores [n, k], passage ids [n][k]), best first; `threads` questions at
        once (the JNI calls release the GIL while Lucene searches)."""
        k = min(k, self._count)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="lucene")
        with jvm.java_errors(f"{self.paths[0]}: Lucene search", "delete the index to rebuild it"):
            prepared = [self._prepare(q) for q in questions]  # Python's share, here; the threads call Lucene
            rows = list(self._pool.map(lambda q: self._search_one(q, k), prepared))
        scores = np.zeros((len(rows), k), dtype=np.float32)  # [n, k]
        ids = []
        for r, (row_ids, row_scores) in enumerate(rows):
            scores[r, : len(row_scores)] = row_scores
            if len(row_ids) < k:
                have = set(row_ids)
                row_ids = row_ids + [p for p in self._padding(k + len(row_ids)) if p not in have][: k - len(row_ids)]
            ids.append(row_ids)
        return scores, ids


def _check_not_out_of_heap(writer, ctx_file: str) -> None:
    """A thread that ran out of heap closes Lucene's IndexWriter, and the others then see only "this IndexWriter is
    closed": name the cause (the writer's tragic exception) and the flag that fixes it."""
    tragic = writer.getTragicException()
    if tragic is not None and "OutOfMemoryError" in tragic.getClass().getName():
        raise jvm.JavaError(f"{ctx_file}: Lucene indexing ran out of Java heap (-Xmx{jvm.started_heap()}); give it "
                            "more with --bm25_heap, e.g. 2g")


def _write_index(tmp: str, ctx_file: str, analyzer: str, start: int, end: Optional[int], threads: int) -> int:
    """Stream rows [start, end) of `ctx_file` into a Lucene index in `tmp`; returns how many."""
    from tqdm import tqdm

    paths_cls, directory, config_cls, writer_cls, document, string_field, field, field_type, store, options, \
        doc_values, bytes_ref = jvm.classes(
            "java.nio.file.Paths", "org.apache.lucene.store.FSDirectory", "org.apache.lucene.index.IndexWriterConfig",
            "org.apache.lucene.index.IndexWriter", "org.apache.lucene.document.Document",
            "org.apache.lucene.document.StringField", "org.apache.lucene.document.Field",
            "org.apache.lucene.document.FieldType", "org.apache.lucene.document.Field$Store",
            "org.apache.lucene.index.IndexOptions", "org.apache.lucene.document.BinaryDocValuesField",
            "org.apache.lucene.util.BytesRef")
    prepare = _prepared(analyzer)
    with jvm.java_errors(f"{ctx_file}: Lucene indexing", "run it again"):
        config = config_cls(java_analyzer(analyzer))
        # Anserini's 256 MB buffer, or a quarter of a smaller heap: a full buffer is flushed as a segment, so
        # this bounds what indexing holds on the heap whatever the corpus's size
        config.setRAMBufferSizeMB(min(256.0, max(16.0, jvm.heap_mb(jvm.started_heap()) / 4)))
        config.setUseCompoundFile(False)
        writer = writer_cls(directory.open(paths_cls.get(tmp)), config)
        kind = field_type()
        kind.setStored(False)
        kind.setTokenized(True)
        kind.setIndexOptions(options.DOCS_AND_FREQS)  # BM25 needs frequencies, not positions
        kind.freeze()
        local = threading.local()

        def add(rows):
            if not hasattr(local, "doc"):  # one reused Document per thread: Lucene's advice for fast indexing
                local.id = string_field("id", "", store.YES)
                local.dv = doc_values("id", bytes_ref(b""))
                local.text = field("contents", "", kind, signature=_CONTENTS_SIGNATURE)
                local.doc = document()
                for f in (local.id, local.dv, local.text):
                    local.doc.add(f)
            for pid, text in rows:
                local.id.setStringValue(pid)
                local.dv.setBytesValue(bytes_ref(pid.encode("utf-8")))
                local.text.setStringValue(text)
                writer.addDocument(local.doc)

        count = 0
        with open(os.path.join(tmp, "ids.txt"), "w", encoding="utf-8") as ids_out, \
                ThreadPoolExecutor(max(1, threads)) as pool, \
                tqdm(desc="lucene index", unit="psg", dynamic_ncols=True, total=(end - start) if end else None) as bar:
            for _, passages in iter_range(ctx_file, start, end, 20_000):
                # Python's share (jieba for zh) runs here: it holds the GIL, and jieba is not thread-safe
                # (analyzers.zh_terms locks it); the threads only call Lucene, which releases the GIL
                docs = [(p.id, prepare(document_text(p.text, p.title))) for p in passages]
                step = -(-len(docs) // max(1, threads))
                try:
                    list(pool.map(add, [docs[i : i + step] for i in range(0, len(docs), step)]))
                except Exception:
                    _check_not_out_of_heap(writer, ctx_file)
                    raise
                ids_out.write("".join(pid + "\n" for pid, _ in docs))
                count += len(docs)
                bar.update(len(docs))
        writer.commit()
        writer.close()
    return count
