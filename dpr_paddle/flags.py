"""The commands' flags: one dataclass per command, turned into argparse, and the typed specs the
library takes, made from them here (`tower_spec`, `index_spec`, `search_spec`, `report_spec`,
`train_config`). No library module reads these dataclasses: the commands hand down specs.

Each field's metadata holds its help text and, where the original Chinese README spells a flag
differently from the field, the extra spellings (e.g. `--epoches` for `epochs`). Defaults that a
library module owns are imported from it.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from typing import Optional

from .common.options import number_problem, option
from .index.hnsw import DEFAULT_EF_CONSTRUCTION, DEFAULT_M
from .retrieval.analyzers import ANALYZERS
from .retrieval.evaluation import MATCHES
from .retrieval.jvm import DEFAULT_HEAP
from .retrieval.searcher import ENGINES

MATCH_HELP = ("auto (an answer with CJK characters by characters, any other as DPR) | string (DPR's token match) | "
              "regex | char (NFKC, lower case, no spaces: the answer's characters in a row, as CMRC 2018 scores)")
from .encoding.spec import BACKENDS
from .modeling.spec import ModelSpec
from .training.config import RerankConfig, TrainConfig


ModelArgs = ModelSpec  # the encoders every command starts from (modeling/spec.py)


@dataclass
class TowerArgs(ModelArgs):
    """ModelArgs of the commands that encode with an encoder (not train it): a length left out is the one the
    checkpoint was trained at; a length given is used as given."""

    max_query_length: Optional[int] = option(None, "max question length in tokens (default: the checkpoint's, from "
                                                   "its dpr_config.json, else 32)")
    max_passage_length: Optional[int] = option(None, "max passage (title + text) length in tokens (default: the "
                                                     "checkpoint's, from its dpr_config.json, else 256)")
TrainArgs = TrainConfig  # train_dense_encoder.py (training/config.py)
RerankTrainArgs = RerankConfig  # train_reranker.py (training/config.py)


def _backend_field():
    return option("auto", "onnxruntime (CPU default when installed) | onnxruntime-int8 (int8 weights; changes the "
              "vectors) | inference (Paddle Inference + oneDNN) | inference-bf16 (the same in bfloat16, on CPUs with "
              "AVX512-BF16 or AMX; changes the vectors) | dygraph (GPU default) | auto",
              choices=BACKENDS)


_RERANK_BACKENDS_HELP = ("onnxruntime | onnxruntime-int8 (int8 weights; changes the scores) | inference | "
                        "inference-bf16 (bfloat16 on AVX512-BF16/AMX CPUs; changes the scores) | dygraph")


def _rerank_backend_field(whose: str):
    return option(None, f"{whose} backend: auto | {_RERANK_BACKENDS_HELP} (default: --backend's when it is "
                        "float32, else auto)", choices=BACKENDS)


@dataclass
class BM25Args:
    """How BM25 is built and searched (every command that takes BM25)."""

    bm25_index: Optional[str] = option(None, "where the BM25 index of --ctx_file is saved and reused (default: a cache "
                                         "dir keyed by the corpus); with lucene, a glob of shard indexes searched as "
                                         "one ('bm25/shard_*', made by dpr-bm25-index --shard_id)")
    bm25_analyzer: str = option("auto", "how BM25 splits text: en (words) | cjk (CJK character bigrams, English words "
                                        "elsewhere) | cjk+uni (bigrams and characters) | zh (jieba words) | auto "
                                        "(cjk when a fifth of the corpus's letters are CJK, else en)",
                                choices=ANALYZERS)
    bm25_engine: str = option("auto", "bm25s (in memory, ~7 GB per million passages to build) | lucene (Anserini's "
                                      "on-disk index, a small Java heap; DPR's 21M passages) | auto (an existing "
                                      "index's engine, else bm25s when it fits in memory, else lucene)",
                              choices=ENGINES)
    bm25_k1: Optional[float] = option(None, "BM25 k1 (default: bm25s 1.5, lucene 0.9 as Anserini and DPR)")
    bm25_b: Optional[float] = option(None, "BM25 b (default: bm25s 0.75, lucene 0.4 as Anserini and DPR)")
    bm25_heap: str = option(DEFAULT_HEAP, "lucene: the Java heap (-Xmx), e.g. 2g, at least 256m; the index is memory-mapped, "
                                         "off the heap")
    bm25_threads: int = option(2, "lucene: threads that index and search")


def bm25_fields(args) -> dict:
    """SearchSpec's BM25 fields from BM25Args."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(BM25Args)}


@dataclass
class BM25IndexArgs(BM25Args):
    """python -m dpr_paddle.bm25_index (dpr-bm25-index)."""

    ctx_file: str = option(None, "the corpus: passages TSV, BEIR corpus.jsonl or MS MARCO collection.tsv", required=True)
    shard_id: int = option(0, "which shard of --num_shards to index (lucene)")
    num_shards: int = option(1, "how many shards the corpus is split into, as generate_dense_embedding.py splits it")


@dataclass
class EmbedArgs(TowerArgs):
    """generate_dense_embedding.py."""

    ctx_file: str = option(None, "passages TSV (id, text, title), .tsv or .tsv.gz", required=True)
    out_file: str = option(None, "output prefix; shard i is written to OUT_FILE_i", required=True)
    model_file: Optional[str] = option(None, "a training checkpoint dir (alternative to the model paths)")
    shard_id: Optional[int] = option(None, "which shard to encode (default: the rank under paddle.distributed.launch, else 0)")
    num_shards: Optional[int] = option(None, "how many shards the corpus is split into (default: world size, else 1)")
    batch_size: int = option(64, "passages per forward")
    fp16: bool = option(False, "store float16 vectors (and run the encoder in float16 on GPU)")
    overwrite: bool = option(False, "re-encode shards that are already complete")
    sort_by_length: bool = option(True, "batch passages of similar length together (output stays in corpus order)")
    read_chunk: int = option(20000, "passages read and sorted per block")
    backend: str = _backend_field()
    hnsw_per_shard: bool = option(False, "also build this shard's hnswlib graph, saved inside it, for dense_retriever.py "
                                     "--hnsw_per_shard")
    hnsw_m: int = option(DEFAULT_M, "hnswlib M of --hnsw_per_shard")
    ef_construction: int = option(DEFAULT_EF_CONSTRUCTION, "hnswlib ef_construction of --hnsw_per_shard")
    hnsw_space: str = option("auto", "hnswlib space of --hnsw_per_shard: ip | l2 | auto", choices=("auto", "ip", "l2"))


@dataclass
class SearchArgs(TowerArgs, BM25Args):
    """What a retriever is made of (dense_retriever.py, python -m dpr_paddle.search / serve)."""

    ctx_file: str = option(None, "passages TSV, for titles/texts (and BM25)", required=True)
    encoded_ctx_file: Optional[str] = option(None, "embedding shards: a glob ('emb/wiki_*') or the --out_file prefix "
                                         "('emb/wiki'); needed except with --bm25")
    model_file: Optional[str] = option(None, "a training checkpoint dir (alternative to the model paths)")
    passage_store: Optional[str] = option(None, "SQLite passage store (python -m dpr_paddle.passage_store); default: "
                                            "passages.sqlite beside the shards, used when it exists")
    bm25: bool = option(False, "BM25 alone (bm25s over --ctx_file; no model or shards needed)")
    hybrid: bool = option(False, "dense and BM25 fused (--fusion); outputs as for dense")
    fusion: str = option("weighted", "hybrid fusion: weighted (pyserini's normalised alpha * bm25 + dense) | rrf "
                                 "(reciprocal rank, k = 60)", choices=("weighted", "rrf"))
    hybrid_alpha: float = option(1.0, "weight of BM25 in --fusion weighted (best of 0.1-2 on squad1_open's dev questions)")
    hybrid_depth: int = option(1000, "passages taken from each retriever before fusing")
    index: Optional[str] = option(None, "exact | hnsw (one hnswlib graph) | hnsw_per_shard (a graph per shard, searched "
                                    "in turn) | milvus (milvus-lite file, or a server by --milvus_uri); default exact",
                              choices=("exact", "hnsw", "hnsw_per_shard", "milvus"))
    hnsw_index: bool = option(False, "search with hnswlib instead of exact inner product (= --index hnsw)")
    hnsw_per_shard: bool = option(False, "one hnswlib graph per shard, saved beside it (= --index hnsw_per_shard)")
    index_path: Optional[str] = option(None, "save/load the hnsw index here (a second run skips the build)")
    hnsw_m: int = option(DEFAULT_M, "hnswlib M (also Milvus HNSW's M)")
    hnsw_space: str = option("auto", "hnswlib space: ip (hnswlib's inner product) | l2 (DPR's inner-product-to-L2 "
                                 "transform) | auto (ip when passage norms spread <= 2x, else l2)",
                         choices=("auto", "ip", "l2"))
    ef_construction: int = option(DEFAULT_EF_CONSTRUCTION, "hnswlib ef_construction (also Milvus HNSW's efConstruction)")
    ef_search: int = option(0, "hnsw ef at query time (default: max(8 * n_docs, 256))")
    milvus_uri: Optional[str] = option(None, "a milvus-lite file (*.db; default: milvus.db beside the shards) or a Milvus "
                                         "server/cluster, http://host:19530")
    milvus_collection: Optional[str] = option(None, "collection name (default: one per set of shards, named by them)")
    milvus_index_type: str = option("HNSW", "Milvus index: HNSW | IVF_FLAT | IVF_SQ8 (8-bit, 4x smaller) | IVF_PQ "
                                        "(servers; milvus-lite 3.2 lacks it) | FLAT",
                                choices=("HNSW", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "FLAT"))
    milvus_nlist: int = option(0, "IVF cells (default: ~4 sqrt(N))")
    milvus_nprobe: int = option(32, "IVF cells searched per question")
    milvus_pq_m: int = option(0, "IVF_PQ sub-vectors (default: dim / 4)")
    force: bool = option(False, "build an index even when the memory plan says it will not fit")
    n_docs: int = option(100, "passages retrieved per question (-k / --k: the API's and the page's name for it)",
                         aliases=("--n-docs", "-k", "--k"))
    rerank_model: Optional[str] = option(None, "a reranker (cross-encoder) directory from train_reranker.py: reorders "
                                               "the first stage's (dense, --bm25 or --hybrid) top --rerank_depth")
    rerank_depth: int = option(20, "first-stage passages the reranker reads per question (<= --n_docs)")
    rerank_batch_size: int = option(32, "question-passage pairs per reranker forward")
    rerank_max_length: int = option(0, "tokens of a (question, title + passage) pair the reranker reads (0: the "
                                       "length it was trained at)")
    rerank_backend: Optional[str] = _rerank_backend_field("the reranker's")
    rerank_alpha: float = option(0.0, "0: order the reranked passages by the cross-encoder alone; > 0: by its min-max "
                                      "normalised score + RERANK_ALPHA x the first stage's (0.75 was best on "
                                      "squad1_open's dev questions)")
    batch_size: int = option(64, "questions per encoder forward")
    fp16: bool = option(False, "run the question encoder in float16 on GPU")
    backend: str = _backend_field()


@dataclass
class ReportArgs:
    """How a finished retrieval is scored and where it is written (dense_retriever.py, reduce)."""

    out_file: Optional[str] = option(None, "retrieval results JSON (DPR format)")
    metrics_file: Optional[str] = option(None, "top-k accuracy JSON (default: OUT_FILE.metrics.json)")
    trec_file: Optional[str] = option(None, "also write a TREC run file")
    qrels: Optional[str] = option(None, "relevance labels (TREC 'qid 0 pid rel', BEIR 'query-id<TAB>corpus-id<TAB>score' "
                                        "with header, or 'qid<TAB>pid'): adds MRR@10, nDCG@10, MAP, Recall@1/5/20/100 "
                                        "by pytrec_eval. DPR's qa.csv has no ids: its questions are keyed by line "
                                        "order, 1..N; BEIR/MS MARCO queries by their own ids")
    match: str = option("auto", MATCH_HELP, choices=MATCHES)
    validation_workers: int = option(1, "processes for answer matching")


@dataclass
class RetrieverArgs(SearchArgs, ReportArgs):
    """dense_retriever.py."""

    qa_file: str = option(None, "questions and answers (question<TAB>[answers]), BEIR queries.jsonl or a .tsv of "
                                "qid<TAB>query", required=True)
    validate_index: int = option(0, "report hnsw recall@k against exact search on this many questions")
    topk_out: Optional[str] = option(None, "search only the shards given (e.g. this machine's emb/wiki_3) and write their "
                                       "top n_docs here (.npz), for python -m dpr_paddle.reduce; no evaluation")


@dataclass
class AskArgs(SearchArgs):
    """python -m dpr_paddle.search: ask the retriever questions, print ranked passages."""

    questions: list = option(None, "questions (none: read them line by line from standard input)", positional=True,
                         nargs="*")
    answers: list = option(None, "answers to mark in the snippets", nargs="*")
    snippet_chars: int = option(240, "characters of passage text shown per hit")


@dataclass
class ServeArgs(SearchArgs):
    """python -m dpr_paddle.serve: the retriever over HTTP (FastAPI + uvicorn)."""

    host: str = option("127.0.0.1", "address to listen on")
    port: int = option(8080, "port to listen on")
    max_k: int = option(1000, "largest k a request may ask for")
    max_queries: int = option(256, "most queries in one request")
    max_batch: int = option(32, "concurrent requests' questions searched together, at most (1 = one request at a time)")
    max_chars: int = option(2000, "longest question, in characters")
    max_queue: int = option(256, "requests waiting per worker, at most; more are answered 503 with Retry-After")
    request_timeout: float = option(30.0, "seconds a request may wait for its answer (then 503 with Retry-After)")
    workers: int = option(1, "server processes behind the port; they share the hnsw graph, shards and BM25 "
                             "read-only, and the cores (OpenMP threads = cores / workers unless OMP_NUM_THREADS is set)")
    api_key: Optional[str] = option(None, "key every request must carry (Authorization: Bearer KEY or X-API-Key: KEY); "
                                          "needed to bind an address other than loopback. Better: the environment "
                                          "variable DPR_PADDLE_API_KEY (a flag shows in the process list)")
    cors_origins: list = option(None, "origins allowed to call the API from a browser (CORS); none by default", nargs="*")
    no_ui: bool = option(False, "serve no search page at GET /")


@dataclass
class MineArgs(TowerArgs, BM25Args):
    """mine_hard_negatives.py / python -m dpr_paddle.mine."""

    train_data_path: Optional[str] = option(None, "biencoder records whose hard negatives are mined (.json, .jsonl, "
                                                  ".gz); or give --qa_file and --qrels")
    qa_file: Optional[str] = option(None, "with --qrels instead of --train_data_path: the training queries (BEIR "
                                          "queries.jsonl, MS MARCO queries.tsv, or DPR's qa.csv keyed 1..N)")
    qrels: Optional[str] = option(None, "relevance labels of --qa_file: each query's judged passages are its positives")
    ctx_file: str = option(None, "the passages TSV the records' gold passage ids come from", required=True)
    output: str = option(None, "output biencoder file (.json: a list, .jsonl: one record a line)", required=True)
    retriever: str = option("bm25", "bm25 (bm25s over --ctx_file) | dense (a bi-encoder over --encoded_ctx_file) | "
                                    "hybrid (both fused, as dense_retriever.py --hybrid)",
                        choices=("bm25", "dense", "hybrid"))
    encoded_ctx_file: Optional[str] = option(None, "embedding shards of --ctx_file, for --retriever dense or hybrid")
    model_file: Optional[str] = option(None, "a training checkpoint dir, for --retriever dense or hybrid")
    fusion: str = option("weighted", "--retriever hybrid: weighted | rrf (as dense_retriever.py --fusion)",
                         choices=("weighted", "rrf"))
    hybrid_alpha: float = option(1.0, "--retriever hybrid: weight of BM25 in --fusion weighted")
    hybrid_depth: int = option(1000, "--retriever hybrid: passages taken from each retriever before fusing")
    rank_range: tuple = option((0, 50), "take negatives from ranks [LO, HI) of the retrieved list", nargs=2, type=int)
    num_negatives: int = option(10, "hard negatives kept per question")
    sample: str = option("top", "top: the best-ranked non-answers | random: a seeded draw from the range",
                     choices=("top", "random"))
    seed: int = option(0, "seed of --sample random (per record: seed, record index)")
    batch_size: int = option(5000, "questions retrieved per batch (a resumable unit)")
    match: str = option("auto", "answer matching that disqualifies a passage: " + MATCH_HELP, choices=MATCHES)
    denoise_model: Optional[str] = option(None, "a reranker directory (train_reranker.py): scores each record's positive "
                                                "and candidates, drops candidates scored like the positive (false "
                                                "negatives) and writes every teacher_score (for --distill_weight)")
    denoise_margin: float = option(0.0, "with --denoise_model: drop a candidate scored at or above the positive's "
                                        "score minus this margin")
    rerank_batch_size: int = option(32, "question-passage pairs per reranker forward")
    rerank_max_length: int = option(0, "tokens of a pair --denoise_model reads (0: the length it was trained at)")
    rerank_backend: Optional[str] = _rerank_backend_field("--denoise_model's")
    fp16: bool = option(False, "run the question encoder in float16 on GPU")
    backend: str = _backend_field()


@dataclass
class ScoreArgs:
    """python -m dpr_paddle.score_records."""

    train_data_path: str = option(None, "biencoder records (.json, .jsonl, .gz) whose positives and hard negatives "
                                        "are scored", required=True)
    rerank_model: str = option(None, "the teacher: a reranker directory (train_reranker.py)", required=True)
    output: str = option(None, "the scored records (.json: a list, .jsonl: one a line)", required=True)
    denoise_margin: Optional[float] = option(None, "also drop hard negatives scored at or above the positive's score "
                                                   "minus this margin (false negatives); default: keep them all")
    rerank_max_length: int = option(0, "tokens of a pair the reranker reads (0: the length it was trained at)")
    rerank_batch_size: int = option(32, "question-passage pairs per reranker forward")
    batch_size: int = option(1000, "records per resumable batch")
    backend: str = option("auto", "the reranker's backend: auto (the faster float32 CPU backend, measured) | "
                                  + _RERANK_BACKENDS_HELP, choices=BACKENDS)


@dataclass
class EnsembleArgs:
    """python -m dpr_paddle.ensemble_rerankers."""

    members: list = option(None, "reranker directories (train_reranker.py's), two or more", nargs="+", required=True)
    output_dir: str = option(None, "the ensemble directory: give it as --rerank_model or --denoise_model",
                             required=True)


@dataclass
class ReduceArgs(ReportArgs):
    """python -m dpr_paddle.reduce."""

    topk_files: list = option(None, "top-k files (.npz) of dense_retriever.py --topk_out, or globs", positional=True,
                              nargs="+")
    qa_file: str = option(None, "the questions file every part searched", required=True)
    ctx_file: str = option(None, "passages TSV, for titles/texts", required=True)
    passage_store: Optional[str] = option(None, "SQLite passage store (default: stream --ctx_file)")
    n_docs: Optional[int] = option(None, "passages kept per question (default: the parts' k)",
                                   aliases=("--n-docs", "-k", "--k"))


# --------------------------------------------------------------------------- flags -> specs

def tower_spec(args):
    """The encoding.towers.TowerSpec of a command that encodes (EmbedArgs, SearchArgs, MineArgs)."""
    from .encoding.spec import TowerSpec

    return TowerSpec(model_name_or_path=args.model_name_or_path, model_file=args.model_file,
                     que_model_path=args.que_model_path, con_model_path=args.con_model_path,
                     projection_dim=args.projection_dim, max_query_length=args.max_query_length,
                     max_passage_length=args.max_passage_length, pooling=args.pooling, similarity=args.similarity,
                     fp16=args.fp16, backend=args.backend)


def index_spec(args):
    """The index the flags of SearchArgs ask for, as an index.factory.IndexSpec."""
    from .common.errors import DprError
    from .index.factory import IndexSpec

    implied = [k for k, on in (("hnsw", args.hnsw_index), ("hnsw_per_shard", args.hnsw_per_shard)) if on]
    if args.milvus_uri or args.milvus_collection:
        implied.append("milvus")
    kinds = set(implied + ([args.index] if args.index else []))
    if len(kinds) > 1:
        raise DprError(f"the flags ask for several indexes ({', '.join(sorted(kinds))}); pick one with --index")
    return IndexSpec(kind=kinds.pop() if kinds else "exact", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction,
                     space=args.hnsw_space, index_path=args.index_path, milvus_uri=args.milvus_uri,
                     milvus_collection=args.milvus_collection, milvus_index_type=args.milvus_index_type,
                     milvus_nlist=args.milvus_nlist, milvus_nprobe=args.milvus_nprobe, milvus_pq_m=args.milvus_pq_m,
                     force=args.force, ef_search=args.ef_search)


def search_spec(args):
    """The retrieval.searcher.SearchSpec of SearchArgs (dense, --bm25 or --hybrid)."""
    from .retrieval.searcher import SearchSpec, retrieval_mode

    return SearchSpec(mode=retrieval_mode(args.bm25, args.hybrid), fusion=args.fusion, alpha=args.hybrid_alpha,
                      depth=args.hybrid_depth, **bm25_fields(args), rerank_model=args.rerank_model, rerank_depth=args.rerank_depth,
                      rerank_batch_size=args.rerank_batch_size, rerank_alpha=args.rerank_alpha,
                      rerank_backend=args.rerank_backend, rerank_max_length=args.rerank_max_length)


def report_spec(args):
    """The retrieval.run.ReportSpec of RetrieverArgs or ReduceArgs."""
    from .retrieval.run import ReportSpec

    return ReportSpec(ctx_file=args.ctx_file, passage_store=args.passage_store, match=args.match,
                      workers=args.validation_workers, out_file=args.out_file, metrics_file=args.metrics_file,
                      trec_file=args.trec_file, qrels_file=args.qrels)


def load_retriever(args, shared: Optional[dict] = None):
    """The serving.api.Retriever that SearchArgs describe (python -m dpr_paddle.search / serve);
    `shared`: parts loaded before the server's workers forked (retrieval.searcher.preload)."""
    from .serving.api import Retriever

    return Retriever.from_specs(search_spec(args), args.ctx_file, tower_spec(args), args.encoded_ctx_file,
                                index_spec(args), store=args.passage_store, batch_size=args.batch_size, shared=shared)


def build_parser(cls, description: str = "") -> argparse.ArgumentParser:
    """An ArgumentParser with one flag per dataclass field (plus its aliases)."""
    p = argparse.ArgumentParser(description=description or cls.__doc__)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        names = [f.name] if meta.pop("positional", False) else ["--" + f.name, *meta.pop("aliases", ())]
        help_ = meta.pop("help", "")
        kind = hints[f.name]
        if kind is bool or kind == Optional[bool]:
            p.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default, help=help_)
            continue
        base = meta.pop("type", None) or {Optional[str]: str, Optional[int]: int, Optional[float]: float}.get(kind, kind)
        if names == [f.name]:
            p.add_argument(f.name, type=str, help=help_, **{k: v for k, v in meta.items() if k == "nargs"})
        elif kind is list:
            p.add_argument(*names, dest=f.name, type=str, default=f.default, help=help_, nargs=meta.get("nargs", "*"))
        elif meta.get("required"):
            p.add_argument(*names, dest=f.name, type=base, help=help_, required=True)
        else:
            shown = "" if f.default is None else f" (default: {f.default})"  # None: the help says what it means
            p.add_argument(*names, dest=f.name, type=base, default=f.default, help=help_ + shown,
                           **{k: v for k, v in meta.items() if k in ("choices", "nargs")})
    return p


def parse(cls, argv=None, description: str = "", defaults: Optional[dict] = None):
    """Parse `argv` into an instance of the dataclass `cls` (`defaults` override the fields'); a number out
    of its bounds (common/options.py) is one line naming the flag, exit 2."""
    import sys

    parser = build_parser(cls, description)
    parser.set_defaults(**(defaults or {}))
    ns = parser.parse_args(argv)
    for name, value in vars(ns).items():
        for v in value if isinstance(value, (list, tuple)) else [value]:
            problem = number_problem(name, v)
            if problem:
                print(f"error: --{name} {problem}", file=sys.stderr)
                raise SystemExit(2)
    return cls(**vars(ns))
