"""Building a bi-encoder from encoder directories, and the config a directory carries.

A checkpoint (training/checkpoint.py) and each of its tower directories hold `dpr_config.json`:
max lengths, projection, sharing and the recipe (pooling, similarity, temperature), so every
later command rebuilds the model from the directory alone. `model_fingerprint` names a model's
weights in what it produces (shards, exports).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Optional, Tuple

import numpy as np

from ..common.errors import DprError
from ..common.files import reading, write_json_atomic
from .model import CONTEXT, QUESTION, BiEncoder
from .pooling import native_recipe, resolve_recipe
from .pretrained import MODEL_CONFIG, load_encoder, resolve_model

DPR_CONFIG = MODEL_CONFIG
PROJECTION = "dpr_projection.npz"
TOWER_DIRS = {QUESTION: "question_encoder", CONTEXT: "context_encoder"}


class CheckpointError(DprError, RuntimeError):
    """A checkpoint is missing or incomplete."""


def model_config(max_query_length: int, max_passage_length: int, projection_dim: int, shared_encoder: bool,
                 recipe: dict) -> dict:
    """What rebuilds the model and its tokenization: lengths, projection, sharing, and the recipe
    (pooling, similarity, temperature; pooling.py)."""
    return {
        "max_query_length": max_query_length,
        "max_passage_length": max_passage_length,
        "projection_dim": projection_dim,
        "shared_encoder": bool(shared_encoder),
        "pooling": recipe["pooling"],
        "similarity": recipe["similarity"],
        "temperature": recipe["temperature"],
    }


def encoder_recipe(name_or_path: str, pooling: str = "auto", similarity: str = "auto",
                   temperature: float = 0.0) -> dict:
    """{pooling, similarity, temperature} for an encoder: explicit choices win, `auto` takes what
    the encoder was trained with (its dpr_config.json, its sentence-transformers modules, else DPR's)."""
    return resolve_recipe(pooling, similarity, temperature, native_recipe(resolve_model(name_or_path)))


def read_model_config(path: str) -> Optional[dict]:
    """dpr_config.json of a checkpoint or encoder dir, if there is one."""
    f = os.path.join(path, DPR_CONFIG)
    if os.path.isfile(f):
        with reading(f, "model config", "restore it from the checkpoint it came from"), open(f, encoding="utf-8") as fh:
            cfg = json.load(fh)
        if not isinstance(cfg, dict):
            raise CheckpointError(f"{f}: not a model config (a JSON object); restore it from its checkpoint")
        return cfg
    return None


def save_tower(model: BiEncoder, tower: str, tokenizer, directory: str, cfg: dict) -> None:
    """One tower as a PaddleNLP directory with its tokenizer, projection and dpr_config.json."""
    os.makedirs(directory, exist_ok=True)
    model.tower(tower).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    if model.projection_dim > 0:
        proj = model.q_proj if tower == QUESTION else model.p_proj
        np.savez(os.path.join(directory, PROJECTION), weight=proj.weight.numpy(), bias=proj.bias.numpy())
    write_json_atomic(os.path.join(directory, DPR_CONFIG), cfg)


def build_biencoder(que_path: str, con_path: str, shared: bool = False, projection_dim: int = 0,
                    pooling: str = "cls", normalize: bool = False):
    """A BiEncoder (and the question tokenizer) from two encoder names/dirs.

    Projection weights saved next to an encoder (`dpr_projection.npz`) are loaded too.
    """
    q_model, tokenizer = load_encoder(que_path)
    p_model = None if shared else load_encoder(con_path)[0]
    model = BiEncoder(q_model, p_model, projection_dim=projection_dim, pooling=pooling, normalize=normalize)
    if projection_dim > 0:
        for tower, path, layer in ((QUESTION, que_path, model.q_proj), (CONTEXT, con_path, model.p_proj)):
            f = os.path.join(path, PROJECTION) if os.path.isdir(path) else ""
            if os.path.isfile(f):
                with np.load(f, allow_pickle=False) as z:
                    layer.weight.set_value(z["weight"])
                    layer.bias.set_value(z["bias"])
    return model, tokenizer


def check_lengths(model: BiEncoder, max_query_length: int, max_passage_length: int) -> None:
    """Refuse max lengths the encoders cannot take (more tokens than their position embeddings), in one
    line, before a batch reaches the model: every command that tokenizes for a model asks here
    (training, encoding, searching, serving, mining), instead of each ending in a Paddle or ONNX
    traceback from an index out of range."""
    towers = [model.question_model] + ([] if model.shared else [model.ctx_model])
    for flag, value in (("--max_query_length", max_query_length), ("--max_passage_length", max_passage_length)):
        check_length(flag, value, towers)


def check_length(flag: str, value: int, encoders, what: str = "the encoder", error=DprError) -> None:
    """Refuse, in one line (`error`), a `flag` of `value` tokens that is more than the fewest position
    embeddings of `encoders` (PaddleNLP models; those without a known limit are skipped)."""
    limits = [getattr(getattr(e, "config", None), "max_position_embeddings", None) for e in encoders]
    limit = min((int(x) for x in limits if isinstance(x, int) and x > 0), default=None)
    if limit is not None and value > limit:
        raise error(f"{flag} {value} is longer than {what} can read: its position embeddings stop at {limit} "
                    f"tokens; use {flag} <= {limit}")


def resolve_encoder_paths(model_file: Optional[str], que_path: Optional[str], con_path: Optional[str],
                          default: str) -> Tuple[str, str, dict]:
    """(question path, context path, model config) from `--model_file` or the two path flags."""
    if model_file:
        if not os.path.isdir(model_file):
            raise CheckpointError(f"{model_file}: --model_file must be a checkpoint directory")
        q = os.path.join(model_file, TOWER_DIRS[QUESTION])
        c = os.path.join(model_file, TOWER_DIRS[CONTEXT])
        for d in (q, c):
            if not os.path.isdir(d):
                raise CheckpointError(f"{model_file}: not a dpr_paddle checkpoint (no {os.path.basename(d)}/)")
        return q, c, read_model_config(model_file) or {}
    q = que_path or default
    c = con_path or default
    cfg = {}
    for path in (q, c):
        if os.path.isdir(path):
            cfg = read_model_config(path) or cfg
    return q, c, cfg


def model_fingerprint(model) -> str:
    """A short hash of the encoder's parameters, so shards made by different models are caught."""
    h = hashlib.sha1()
    for name, p in model.named_parameters():
        v = p.numpy().ravel()
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(np.ascontiguousarray(v[:64]).tobytes())
        h.update(np.float64(v.astype(np.float64).sum()).tobytes())
    return h.hexdigest()[:16]
