"""`ModelSpec`: which encoders a run starts from and how it tokenizes for them. Light on purpose (no
paddle import), so the commands can parse their flags before paddle loads."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..common.options import option
from .tokenization import DEFAULT_MAX_PASSAGE_LENGTH, DEFAULT_MAX_QUERY_LENGTH


@dataclass
class ModelSpec:
    """Which encoders to start from and how to tokenize for them (the fields every command that builds
    a model shares; each field's metadata is its flag's help)."""

    model_name_or_path: str = option("minilm", "encoder for both towers: minilm | tiny | a model dir | a PaddleNLP name")
    que_model_path: Optional[str] = option(None, "question encoder (overrides --model_name_or_path for questions)")
    con_model_path: Optional[str] = option(None, "context encoder (overrides --model_name_or_path for passages)")
    shared_encoder: bool = option(False, "one encoder for questions and passages (DPR: separate)")
    projection_dim: int = option(0, "linear projection on top of the pooled vector (0 = none, DPR's default)")
    pooling: str = option("auto", "cls | mean | pooler | auto (what the encoder was trained with: a checkpoint's "
                              "dpr_config.json, a sentence-transformers model's pooling, else cls as DPR)",
                      choices=("auto", "cls", "mean", "pooler"))
    similarity: str = option("auto", "dot | cosine (unit-length vectors) | auto (a checkpoint's, a sentence-transformers "
                                 "model's Normalize = cosine, else dot as DPR)", choices=("auto", "dot", "cosine"))
    max_query_length: int = option(DEFAULT_MAX_QUERY_LENGTH, "max question length in tokens")
    max_passage_length: int = option(DEFAULT_MAX_PASSAGE_LENGTH, "max passage (title + text) length in tokens")
