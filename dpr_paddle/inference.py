"""Load one tower of a bi-encoder for inference: numpy token arrays in, numpy vectors out."""
from __future__ import annotations

import logging
import os
from typing import Callable, Dict, Tuple

import numpy as np
import paddle

from . import checkpoint as ckpt
from .model import CONTEXT, QUESTION
from .tokenization import Tensorizer

logger = logging.getLogger(__name__)


def load_tower(args, tower: str) -> Tuple[Callable[[Dict[str, np.ndarray]], np.ndarray], Tensorizer, dict]:
    """(encode_fn, tensorizer, info) for the `question` or `context` tower named by `args`.

    `args` has model_file / que_model_path / con_model_path / model_name_or_path, the max
    lengths and projection settings (a checkpoint's dpr_config.json overrides the defaults),
    and fp16 (float16 autocast on GPU only).
    """
    que, con, cfg = ckpt.resolve_encoder_paths(args.model_file, args.que_model_path, args.con_model_path,
                                               args.model_name_or_path)
    projection_dim = int(cfg.get("projection_dim", args.projection_dim))
    path = que if tower == QUESTION else con
    model, tokenizer = ckpt.build_biencoder(path, path, shared=True, projection_dim=projection_dim)
    if projection_dim > 0 and tower == CONTEXT:
        model.q_proj = model.p_proj  # a shared build loads the file next to `path` into q_proj
    model.eval()
    max_q = int(cfg.get("max_query_length", args.max_query_length))
    max_p = int(cfg.get("max_passage_length", args.max_passage_length))
    tensorizer = Tensorizer(tokenizer, max_q, max_p)
    on_gpu = paddle.is_compiled_with_cuda() and "gpu" in paddle.device.get_device()
    use_fp16 = bool(getattr(args, "fp16", False)) and on_gpu

    from .embeddings import model_fingerprint

    info = {"model": os.path.abspath(path) if os.path.isdir(path) else path,
            "model_fingerprint": model_fingerprint(model), "tower": tower,
            "max_length": max_p if tower == CONTEXT else max_q}

    @paddle.no_grad()
    def encode(arrays: Dict[str, np.ndarray]) -> np.ndarray:
        inputs = {k: paddle.to_tensor(v) for k, v in arrays.items()}
        with paddle.amp.auto_cast(enable=use_fp16, dtype="float16"):
            reps = model(**inputs, tower=QUESTION)  # a shared build: the one tower is `question_model`
        return reps.astype("float32").numpy()  # [B, D]

    return encode, tensorizer, info
