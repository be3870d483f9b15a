"""Ask a trained retriever questions from Python: load once, search many times.

    from dpr_paddle import Retriever
    r = Retriever.load("save_biencoder/latest", index="runs/emb", passages="psgs.tsv")
    hits = r.search(["who wrote hamlet"], k=10)  # [[{"id", "title", "text", "score"}, ...]]

`mode="bm25"` needs only `passages`; `mode="hybrid"` fuses both (as dense_retriever.py --hybrid).
With `rerank_model` (a train_reranker.py directory), `search(..., mode="rerank")` reorders the loaded
mode's top `rerank_depth` with the cross-encoder; each hit then also holds its `first_stage_score`.
The results equal dense_retriever.py's for the same settings: both search through one
`retrieval.searcher.Searcher`. Passage texts come from the SQLite passage store (built beside the
shards on first load when missing), never from streaming the TSV.
"""
from __future__ import annotations

import logging
import numbers
import os
from typing import Dict, Iterable, List, Optional, Sequence

from ..common.options import InvalidValue, number_problem
from ..index.factory import IndexSpec
from ..index.hnsw import DEFAULT_EF_CONSTRUCTION, DEFAULT_M
from ..retrieval.jvm import DEFAULT_HEAP
from ..retrieval.searcher import Searcher, SearchSpec

logger = logging.getLogger(__name__)


def check_same_corpus(shards, store, passages: str, samples: int = 8) -> None:
    """The shards must have been encoded from `passages`: a few ids of each (first, last, between) must be
    in its passage store, or every search would fail later on missing texts."""
    import numpy as np

    wanted = [s.ids[int(i)] for s in shards for i in np.linspace(0, len(s.ids) - 1, num=min(samples, len(s.ids)))]
    missing = sorted(set(wanted) - store.get(wanted).keys())
    if missing:
        raise InvalidValue(f"{shards[0].path}: passage ids such as {missing[:3]} are not in {passages}: the shards "
                           "were encoded from another corpus; pass the passages file they were made from")


def check_questions(questions, max_chars: Optional[int] = None) -> List[str]:
    """`questions` as a list of strings, each valid Unicode text (no lone surrogates) with something to
    search (common.text.searchable) and at most `max_chars` characters, or InvalidValue. The HTTP
    server and the commands ask the same."""
    from ..common.text import NOTHING_TO_SEARCH, searchable

    if isinstance(questions, (str, bytes)) or not isinstance(questions, Iterable):
        raise InvalidValue("questions must be a list of strings, not one string (it would be searched character "
                           "by character): pass [question]")
    questions = list(questions)
    for i, q in enumerate(questions):
        if not isinstance(q, str):
            raise InvalidValue(f"question {i} is a {type(q).__name__}, not a string")
        try:
            q.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidValue(f"question {i} is not valid Unicode text (a lone surrogate)") from None
        if not searchable(q):
            raise InvalidValue(f"question {i} {NOTHING_TO_SEARCH}")
        if max_chars is not None and len(q) > max_chars:
            raise InvalidValue(f"question {i} has {len(q)} characters; at most {max_chars} are allowed")
    return questions


# The commands' flags for what Retriever.load calls otherwise (DPR's names: --model_file, --encoded_ctx_file, ...)
COMMAND_NAMES = {"model_file": "model", "model_name_or_path": "model", "encoded_ctx_file": "index",
                 "ctx_file": "passages", "que_model_path": "question_encoder", "con_model_path": "context_encoder"}


class Retriever:
    """A loaded retriever: a Searcher (question encoder + dense index and/or BM25) and the passage store."""

    def __init__(self, searcher: Searcher, store, info: Optional[dict] = None):
        self.searcher, self.store, self.info = searcher, store, info or {}

    @property
    def mode(self) -> str:
        """dense | bm25 | hybrid."""
        return self.searcher.spec.mode

    @property
    def batch_size(self) -> int:
        """Questions per encoder forward."""
        return self.searcher.dense.batch_size if self.searcher.dense else 0

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        if self.searcher.dense:
            self.searcher.dense.batch_size = value

    @classmethod
    def load(cls, model: Optional[str] = None, index: Optional[str] = None, passages: Optional[str] = None,
             question_encoder: Optional[str] = None, context_encoder: Optional[str] = None, mode: str = "dense",
             hnsw: bool = False, index_path: Optional[str] = None, hnsw_m: int = DEFAULT_M,
             ef_construction: int = DEFAULT_EF_CONSTRUCTION, hnsw_space: str = "auto", ef_search: int = 0,
             bm25_index: Optional[str] = None, bm25_analyzer: str = "auto", fusion: str = "weighted",
             alpha: float = 1.0, depth: int = 1000, store: Optional[str] = None,
             index_spec: Optional[IndexSpec] = None, batch_size: int = 64, rerank_model: Optional[str] = None,
             rerank_depth: int = 20, rerank_batch_size: int = 32, rerank_alpha: float = 0.0,
             bm25_engine: str = "auto", bm25_k1: Optional[float] = None, bm25_b: Optional[float] = None,
             bm25_heap: str = DEFAULT_HEAP, bm25_threads: int = 2, rerank_backend: Optional[str] = None,
             rerank_max_length: int = 0, **tower_fields) -> "Retriever":
        """Load the model, index and passage store once. `model` is a checkpoint directory or an encoder
        name/dir (or give `question_encoder`/`context_encoder`); `index` the embedding shards; `passages`
        the TSV; `rerank_model` a reranker directory reading the top `rerank_depth` (on `rerank_backend`, default
        the towers' float32 backend; pairs up to `rerank_max_length` tokens, default its own); `bm25_engine` bm25s | lucene |
        auto (and its k1, b, Java heap and threads). `index_spec` picks any backend; without it `hnsw` and its
        settings pick between exact search and one hnsw graph. Other keywords are encoding.towers.TowerSpec fields (pooling,
        backend, max lengths...), or the commands' names for the first five (`model_file` or `model_name_or_path`,
        `encoded_ctx_file`, `ctx_file`, `que_model_path`, `con_model_path`); anything else is refused in one line."""
        import dataclasses

        from ..encoding.spec import TowerSpec

        given = {"model": model, "index": index, "passages": passages, "question_encoder": question_encoder,
                 "context_encoder": context_encoder}
        for flag, name in COMMAND_NAMES.items():  # the commands' flag names, as a DPR user types them
            if flag in tower_fields:
                if given[name] is not None:
                    raise InvalidValue(f"{flag} is the command's name for {name}: give one of them, not both")
                given[name] = tower_fields.pop(flag)
        model, index, passages = given["model"], given["index"], given["passages"]
        unknown = sorted(set(tower_fields) - ({f.name for f in dataclasses.fields(TowerSpec)} - set(COMMAND_NAMES)))
        if unknown:
            raise InvalidValue(f"Retriever.load got unknown keyword(s) {', '.join(unknown)}; it takes model, index, "
                               "passages, the search settings in its signature and TowerSpec's fields")
        is_checkpoint = bool(model) and os.path.isdir(os.path.join(model, "question_encoder"))
        tower = TowerSpec(model_name_or_path=model or "minilm", model_file=model if is_checkpoint else None,
                          que_model_path=given["question_encoder"], con_model_path=given["context_encoder"],
                          **tower_fields)
        spec = index_spec or IndexSpec("hnsw" if hnsw else "exact", hnsw_m, ef_construction, hnsw_space, index_path,
                                       ef_search=ef_search)
        return cls.from_specs(SearchSpec(mode, fusion, alpha, depth, bm25_index, bm25_analyzer, rerank_model,
                                         rerank_depth, rerank_batch_size, rerank_alpha, bm25_engine, bm25_k1, bm25_b,
                                         bm25_heap, bm25_threads, rerank_backend, rerank_max_length), passages, tower,
                              index, spec, store=store, batch_size=batch_size)

    @classmethod
    def from_specs(cls, search: SearchSpec, passages: Optional[str], tower=None, shards: Optional[str] = None,
                   index_spec: Optional[IndexSpec] = None, store: Optional[str] = None,
                   batch_size: int = 64, shared: Optional[dict] = None) -> "Retriever":
        """A Retriever from the specs the commands build from their flags (see `load`); `shared` holds
        parts loaded before the server's workers forked (retrieval.searcher.preload)."""
        from ..common.runtime import prepare_process, quiet_paddlenlp, quiet_warnings
        from ..retrieval.passage_store import PassageStore, default_store_path

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidValue(f"batch_size must be an integer >= 1, got {batch_size!r}")

        if not passages:
            raise ValueError("passages (the TSV) is needed: it is what hits are read from")
        if search.mode != "bm25" and not shards:
            raise ValueError("index (the embedding shards) is needed for dense and hybrid retrieval")
        quiet_warnings()  # as quiet as the commands: no warning a user cannot act on
        needs_paddle = search.mode != "bm25" or bool(search.rerank_model)
        prepare_process(needs_paddle=needs_paddle)  # CPU defaults where unset, before paddle loads
        if needs_paddle:
            quiet_paddlenlp()
        searcher = Searcher.load(search, passages, tower, shards, index_spec, batch_size, **(shared or {}))
        info = {"mode": search.mode, "modes": searcher.modes}
        if searcher.dense is not None:
            from ..index.shards import meta_digest

            info.update(searcher.dense.index.describe())
            info["shards_digest"] = meta_digest({"shards": [s.meta for s in searcher.dense.index.shards]})
            info["question_model_fingerprint"] = searcher.dense.info["model_fingerprint"]
        if searcher.bm25 is not None:
            info["bm25_passages"] = len(searcher.bm25)
            info["bm25"] = searcher.bm25.meta["params"]
        if store is None:
            from ..common.files import cache_root, file_fingerprint

            store = (default_store_path(searcher.dense.index.shards[0].path) if searcher.dense else
                     os.path.join(cache_root(), "passages", file_fingerprint(passages)["sha1_ends"][:16] + ".sqlite"))
            os.makedirs(os.path.dirname(store), exist_ok=True)
        passage_store = PassageStore.open_or_build(passages, store)
        if searcher.dense is not None:
            check_same_corpus(searcher.dense.index.shards, passage_store, passages)
        if searcher.reranker is not None:  # it reads the store, as the hits do
            searcher.with_reranker(searcher.reranker, passage_store.get)
            info["rerank"] = {**searcher.reranker.info, "depth": search.rerank_depth, "alpha": search.rerank_alpha}
        info["passages"] = len(passage_store)
        return cls(searcher, passage_store, info)

    def encode_questions(self, questions: Sequence[str]):
        """[n, D] float32 question vectors, in batches of `batch_size`, as dense_retriever.py encodes them."""
        return self.searcher.dense.encode(questions)

    @property
    def modes(self) -> List[str]:
        """The modes `search` can answer in (dense, bm25, and hybrid when both are loaded)."""
        return self.searcher.modes

    def search(self, questions: Sequence[str], k: int = 10, mode: Optional[str] = None) -> List[List[Dict]]:
        """The top k passages for each question: [[{"id", "title", "text", "score"}, ...], ...], best first.
        `questions` is a list of strings (one string is refused: it would be searched character by
        character); `k` an integer >= 1 (more than the corpus holds gives the whole corpus); `mode`
        one of `modes` (default: the one loaded)."""
        questions = check_questions(questions)
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or number_problem("k", int(k)):
            raise InvalidValue(f"k must be an integer >= 1, got {k!r}")  # a numpy integer is one; True is not
        k = int(k)
        if mode is not None and not isinstance(mode, str):
            raise InvalidValue(f"mode must be a string, one of {self.modes}; got {mode!r}")
        if not questions:
            return []
        trace = {}
        scores, ids = self.searcher.search(questions, k, mode=mode, trace=trace)
        texts = self.store.get(pid for row in ids for pid in row[:k])
        hits = [[{"id": pid, "title": texts[pid][1], "text": texts[pid][0], "score": float(s)}
                 for pid, s in zip(row_ids[:k], row_scores[:k])] for row_ids, row_scores in zip(ids, scores)]
        if "first_stage_scores" in trace:  # reranked: the first stage's score beside the cross-encoder's
            for row, first in zip(hits, trace["first_stage_scores"]):
                for hit, f in zip(row, first):
                    hit["first_stage_score"] = float(f)
        return hits
