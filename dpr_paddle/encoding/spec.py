"""`TowerSpec`: which encoder a tower loads and how it runs. Light on purpose (no paddle import), so a
BM25-only command or `Retriever.load(mode="bm25")` builds its specs without loading Paddle."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..common.options import InvalidValue, check_numbers


BACKENDS = ("auto", "onnxruntime", "onnxruntime-int8", "inference", "inference-bf16", "dygraph")


def check_backend(value: Optional[str], allowed=BACKENDS, name: str = "backend") -> None:
    """Refuse, in one line, a backend name that is not one of `allowed` (None: the default)."""
    if value is not None and value not in allowed:
        raise InvalidValue(f"{name} {value!r}: one of {', '.join(allowed)}")


@dataclass(frozen=True)
class TowerSpec:
    """Which encoder a tower loads and how it runs (the commands build it from their flags).

    The encoders come from `model_file` (a checkpoint) or the path fields. A length left None is the
    one the checkpoint was trained at (its dpr_config.json), else the default; a length given is used,
    as sentence-transformers' max_seq_length is. A checkpoint's projection overrides the one given here,
    and `auto` pooling and similarity take the encoder's own. `fp16` runs float16 autocast on GPU only; `backend` is
    one of BACKENDS (auto: `towers.resolve_backend`).
    """

    model_name_or_path: str = "minilm"
    model_file: Optional[str] = None
    que_model_path: Optional[str] = None
    con_model_path: Optional[str] = None
    projection_dim: int = 0
    max_query_length: Optional[int] = None  # None: the checkpoint's, else DEFAULT_MAX_QUERY_LENGTH
    max_passage_length: Optional[int] = None  # None: the checkpoint's, else DEFAULT_MAX_PASSAGE_LENGTH
    pooling: str = "auto"
    similarity: str = "auto"
    fp16: bool = False
    backend: str = "auto"

    def __post_init__(self):
        check_numbers(self, ("projection_dim", "max_query_length", "max_passage_length"))
        check_backend(self.backend)


def names_context(spec: TowerSpec) -> bool:
    """Whether `spec` names the context encoder itself (a checkpoint, or --con_model_path), so that it can be
    checked against the shards it is said to have made."""
    return bool(spec.model_file or spec.con_model_path)
