"""Command-line configuration shared by the three CLIs: dataclasses turned into argparse.

Each field's metadata holds its help text and, where the original Chinese README spells a flag
differently from the field, the extra spellings (e.g. `--epoches` for `epochs`).
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Optional, Sequence

from .hnsw_index import DEFAULT_EF_CONSTRUCTION, DEFAULT_M
from .tokenization import DEFAULT_MAX_PASSAGE_LENGTH, DEFAULT_MAX_QUERY_LENGTH


def _f(default, help: str, aliases: Sequence[str] = (), **kw):
    return field(default=default, metadata={"help": help, "aliases": tuple(aliases), **kw})


def _backend_field():
    return _f("auto", "onnxruntime (CPU default when installed) | onnxruntime-int8 (int8 weights; changes the "
              "vectors) | inference (Paddle Inference + oneDNN) | dygraph (GPU default) | auto",
              choices=("auto", "onnxruntime", "onnxruntime-int8", "inference", "dygraph"))


@dataclass
class ModelArgs:
    """Which encoders to start from and how to tokenize for them."""

    model_name_or_path: str = _f("minilm", "encoder for both towers: minilm | tiny | a model dir | a PaddleNLP name")
    que_model_path: Optional[str] = _f(None, "question encoder (overrides --model_name_or_path for questions)")
    con_model_path: Optional[str] = _f(None, "context encoder (overrides --model_name_or_path for passages)")
    shared_encoder: bool = _f(False, "one encoder for questions and passages (DPR: separate)")
    projection_dim: int = _f(0, "linear projection on top of the pooled vector (0 = none, DPR's default)")
    pooling: str = _f("auto", "cls | mean | pooler | auto (what the encoder was trained with: a checkpoint's "
                              "dpr_config.json, a sentence-transformers model's pooling, else cls as DPR)",
                      choices=("auto", "cls", "mean", "pooler"))
    similarity: str = _f("auto", "dot | cosine (unit-length vectors) | auto (a checkpoint's, a sentence-transformers "
                                 "model's Normalize = cosine, else dot as DPR)", choices=("auto", "dot", "cosine"))
    max_query_length: int = _f(DEFAULT_MAX_QUERY_LENGTH, "max question length in tokens")
    max_passage_length: int = _f(DEFAULT_MAX_PASSAGE_LENGTH, "max passage (title + text) length in tokens")


@dataclass
class TrainArgs(ModelArgs):
    """train_dense_encoder.py."""

    train_data_path: str = _f(None, "biencoder training data (.json, .json.gz, .jsonl)", required=True)
    dev_data_path: Optional[str] = _f(None, "biencoder dev data: logs dev NLL and average rank")
    save_dir: str = _f("save_biencoder", "where checkpoints go")
    log_dir: Optional[str] = _f(None, "VisualDL log dir (default: SAVE_DIR/vdl)")
    batch_size: int = _f(128, "questions per step (global: summed over all ranks)")
    chunk_size: int = _f(0, "gradient-cache chunk size; 0 or >= batch = plain step")
    q_chunk_size: int = _f(0, "chunk size for questions (default: --chunk_size)")
    p_chunk_size: int = _f(0, "chunk size for passages (default: --chunk_size)")
    hard_negatives: int = _f(1, "hard negatives per question (plus all in-batch negatives)")
    temperature: float = _f(0.0, "softmax temperature: scores / T (0 = auto: 0.05 for cosine, as sentence-transformers' "
                                 "scale 20; 1 for dot, as DPR)")
    dropout: Optional[float] = _f(None, "override the encoders' dropout probabilities (default: the model's config)")
    learning_rate: float = _f(2e-5, "peak learning rate")
    weight_decay: float = _f(0.0, "AdamW weight decay (never on bias/LayerNorm)")
    adam_epsilon: float = _f(1e-8, "AdamW epsilon")
    warmup_steps: int = _f(0, "linear warmup steps, then linear decay to 0")
    epochs: int = _f(40, "training epochs", aliases=("--epoches",))
    max_steps: int = _f(0, "stop after this many steps (0 = epochs decide)")
    max_grad_norm: float = _f(2.0, "clip gradients to this global norm (0 = no clipping)")
    seed: int = _f(12345, "seed for data order, negatives and dropout")
    shuffle_positives: bool = _f(False, "pick a random positive instead of the first")
    log_steps: int = _f(10, "log a line every N steps")
    eval_steps: int = _f(0, "evaluate on the dev set every N steps (0 = per epoch only)")
    save_steps: int = _f(0, "save a checkpoint every N steps (0 = per epoch only)")
    keep_last: int = _f(3, "keep the last N step checkpoints (the best is kept apart)")
    resume: Optional[str] = _f(None, "resume from a checkpoint dir, or 'auto' for the latest in SAVE_DIR")
    overwrite_save_dir: bool = _f(False, "start afresh in a SAVE_DIR that holds another run's checkpoints "
                                         "(deletes its checkpoint-*, best and latest)")
    fp16: bool = _f(False, "mixed precision on GPU (float16 with loss scaling)")
    amp_dtype: str = _f("float16", "AMP dtype on GPU: float16 | bfloat16")
    dev_batch_size: int = _f(64, "questions per dev batch")


@dataclass
class EmbedArgs(ModelArgs):
    """generate_dense_embedding.py."""

    ctx_file: str = _f(None, "passages TSV (id, text, title), .tsv or .tsv.gz", required=True)
    out_file: str = _f(None, "output prefix; shard i is written to OUT_FILE_i", required=True)
    model_file: Optional[str] = _f(None, "a training checkpoint dir (alternative to the model paths)")
    shard_id: Optional[int] = _f(None, "which shard to encode (default: the rank under paddle.distributed.launch, else 0)")
    num_shards: Optional[int] = _f(None, "how many shards the corpus is split into (default: world size, else 1)")
    batch_size: int = _f(64, "passages per forward")
    fp16: bool = _f(False, "store float16 vectors (and run the encoder in float16 on GPU)")
    overwrite: bool = _f(False, "re-encode shards that are already complete")
    sort_by_length: bool = _f(True, "batch passages of similar length together (output stays in corpus order)")
    read_chunk: int = _f(20000, "passages read and sorted per block")
    backend: str = _backend_field()
    hnsw_per_shard: bool = _f(False, "also build this shard's hnswlib graph, saved inside it, for dense_retriever.py "
                                     "--hnsw_per_shard")
    hnsw_m: int = _f(DEFAULT_M, "hnswlib M of --hnsw_per_shard")
    ef_construction: int = _f(DEFAULT_EF_CONSTRUCTION, "hnswlib ef_construction of --hnsw_per_shard")
    hnsw_space: str = _f("auto", "hnswlib space of --hnsw_per_shard: ip | l2 | auto", choices=("auto", "ip", "l2"))


@dataclass
class SearchArgs(ModelArgs):
    """What a retriever is made of (dense_retriever.py, python -m dpr_paddle.search / serve)."""

    ctx_file: str = _f(None, "passages TSV, for titles/texts (and BM25)", required=True)
    encoded_ctx_file: Optional[str] = _f(None, "embedding shards: a glob ('emb/wiki_*') or the --out_file prefix "
                                         "('emb/wiki'); needed except with --bm25")
    model_file: Optional[str] = _f(None, "a training checkpoint dir (alternative to the model paths)")
    passage_store: Optional[str] = _f(None, "SQLite passage store (python -m dpr_paddle.passage_store); default: "
                                            "passages.sqlite beside the shards, used when it exists")
    bm25: bool = _f(False, "BM25 alone (bm25s over --ctx_file; no model or shards needed)")
    hybrid: bool = _f(False, "dense and BM25 fused (--fusion); outputs as for dense")
    bm25_index: Optional[str] = _f(None, "where the BM25 index of --ctx_file is saved and reused "
                                         "(default: a cache dir keyed by the corpus)")
    fusion: str = _f("weighted", "hybrid fusion: weighted (pyserini's normalised alpha * bm25 + dense) | rrf "
                                 "(reciprocal rank, k = 60)", choices=("weighted", "rrf"))
    hybrid_alpha: float = _f(1.0, "weight of BM25 in --fusion weighted (best of 0.1-2 on squad1_open's dev questions)")
    hybrid_depth: int = _f(1000, "passages taken from each retriever before fusing")
    index: Optional[str] = _f(None, "exact | hnsw (one hnswlib graph) | hnsw_per_shard (a graph per shard, searched "
                                    "in turn) | milvus (milvus-lite file, or a server by --milvus_uri); default exact",
                              choices=("exact", "hnsw", "hnsw_per_shard", "milvus"))
    hnsw_index: bool = _f(False, "search with hnswlib instead of exact inner product (= --index hnsw)")
    hnsw_per_shard: bool = _f(False, "one hnswlib graph per shard, saved beside it (= --index hnsw_per_shard)")
    index_path: Optional[str] = _f(None, "save/load the hnsw index here (a second run skips the build)")
    hnsw_m: int = _f(DEFAULT_M, "hnswlib M (also Milvus HNSW's M)")
    hnsw_space: str = _f("auto", "hnswlib space: ip (hnswlib's inner product) | l2 (DPR's inner-product-to-L2 "
                                 "transform) | auto (ip when passage norms spread <= 2x, else l2)",
                         choices=("auto", "ip", "l2"))
    ef_construction: int = _f(DEFAULT_EF_CONSTRUCTION, "hnswlib ef_construction (also Milvus HNSW's efConstruction)")
    ef_search: int = _f(0, "hnsw ef at query time (default: max(8 * n_docs, 256))")
    milvus_uri: Optional[str] = _f(None, "a milvus-lite file (*.db; default: milvus.db beside the shards) or a Milvus "
                                         "server/cluster, http://host:19530")
    milvus_collection: Optional[str] = _f(None, "collection name (default: one per set of shards, named by them)")
    milvus_index_type: str = _f("HNSW", "Milvus index: HNSW | IVF_FLAT | IVF_SQ8 (8-bit, 4x smaller) | IVF_PQ "
                                        "(servers; milvus-lite 3.2 lacks it) | FLAT",
                                choices=("HNSW", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "FLAT"))
    milvus_nlist: int = _f(0, "IVF cells (default: ~4 sqrt(N))")
    milvus_nprobe: int = _f(32, "IVF cells searched per question")
    milvus_pq_m: int = _f(0, "IVF_PQ sub-vectors (default: dim / 4)")
    force: bool = _f(False, "build an index even when the memory plan says it will not fit")
    n_docs: int = _f(100, "passages retrieved per question", aliases=("--n-docs",))
    batch_size: int = _f(64, "questions per encoder forward")
    fp16: bool = _f(False, "run the question encoder in float16 on GPU")
    backend: str = _backend_field()


@dataclass
class RetrieverArgs(SearchArgs):
    """dense_retriever.py."""

    qa_file: str = _f(None, "questions and answers (question<TAB>[answers])", required=True)
    out_file: Optional[str] = _f(None, "retrieval results JSON (DPR format)")
    validation_workers: int = _f(1, "processes for answer matching")
    match: str = _f("string", "answer matching: string | regex", choices=("string", "regex"))
    validate_index: int = _f(0, "report hnsw recall@k against exact search on this many questions")
    metrics_file: Optional[str] = _f(None, "top-k accuracy JSON (default: OUT_FILE.metrics.json)")
    trec_file: Optional[str] = _f(None, "also write a TREC run file")
    topk_out: Optional[str] = _f(None, "search only the shards given (e.g. this machine's emb/wiki_3) and write their "
                                       "top n_docs here (.npz), for python -m dpr_paddle.reduce; no evaluation")


@dataclass
class AskArgs(SearchArgs):
    """python -m dpr_paddle.search: ask the retriever questions, print ranked passages."""

    questions: list = _f(None, "questions (none: read them line by line from standard input)", positional=True,
                         nargs="*")
    answers: list = _f(None, "answers to mark in the snippets", nargs="*")
    snippet_chars: int = _f(240, "characters of passage text shown per hit")


@dataclass
class ServeArgs(SearchArgs):
    """python -m dpr_paddle.serve: the retriever over HTTP (FastAPI + uvicorn)."""

    host: str = _f("127.0.0.1", "address to listen on")
    port: int = _f(8080, "port to listen on")
    max_k: int = _f(1000, "largest k a request may ask for")
    max_queries: int = _f(256, "most queries in one request")
    max_batch: int = _f(32, "concurrent requests' questions searched together, at most (1 = one request at a time)")


@dataclass
class MineArgs(ModelArgs):
    """mine_hard_negatives.py / python -m dpr_paddle.mine."""

    train_data_path: str = _f(None, "biencoder records whose hard negatives are mined (.json, .jsonl, .gz)", required=True)
    ctx_file: str = _f(None, "the passages TSV the records' gold passage ids come from", required=True)
    output: str = _f(None, "output biencoder file (.json: a list, .jsonl: one record a line)", required=True)
    retriever: str = _f("bm25", "bm25 (bm25s over --ctx_file) | dense (a bi-encoder over --encoded_ctx_file)",
                        choices=("bm25", "dense"))
    bm25_index: Optional[str] = _f(None, "where the BM25 index of --ctx_file is kept (default: a cache dir)")
    encoded_ctx_file: Optional[str] = _f(None, "embedding shards of --ctx_file, for --retriever dense")
    model_file: Optional[str] = _f(None, "a training checkpoint dir, for --retriever dense")
    rank_range: tuple = _f((0, 50), "take negatives from ranks [LO, HI) of the retrieved list", nargs=2, type=int)
    num_negatives: int = _f(10, "hard negatives kept per question")
    sample: str = _f("top", "top: the best-ranked non-answers | random: a seeded draw from the range",
                     choices=("top", "random"))
    seed: int = _f(0, "seed of --sample random (per record: seed, record index)")
    batch_size: int = _f(5000, "questions retrieved per batch (a resumable unit)")
    match: str = _f("string", "answer matching that disqualifies a passage: string | regex", choices=("string", "regex"))
    fp16: bool = _f(False, "run the question encoder in float16 on GPU")
    backend: str = _backend_field()


def index_spec(args):
    """The index the flags of SearchArgs ask for, as an index_factory.IndexSpec."""
    from .errors import DprError
    from .index_factory import IndexSpec

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
                     force=args.force)


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
            p.add_argument(*names, dest=f.name, type=base, default=f.default, help=f"{help_} (default: {f.default})",
                           **{k: v for k, v in meta.items() if k in ("choices", "nargs")})
    return p


def parse(cls, argv=None, description: str = ""):
    """Parse `argv` into an instance of the dataclass `cls`."""
    ns = build_parser(cls, description).parse_args(argv)
    return cls(**vars(ns))
