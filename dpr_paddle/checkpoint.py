"""Checkpoints that carry their config, so later scripts rebuild the model from them alone.

Layout of `SAVE_DIR/checkpoint-STEP/` (written atomically: temp dir + rename):
    question_encoder/   PaddleNLP save_pretrained dir + tokenizer (+ dpr_projection.npz, dpr_config.json)
    context_encoder/    the same for passages (a copy of the question encoder when shared)
    dpr_config.json     how the model was built and tokenized (max lengths, projection, sharing)
    optimizer.npz       AdamW accumulators keyed by structured parameter name (no pickle)
    trainer_state.json  step, epoch, position in the epoch, scheduler, best metric, run config
"""
from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
from typing import Dict, List, Optional, Tuple

import numpy as np
import paddle

from .errors import DprError
from .model import CONTEXT, QUESTION, BiEncoder
from .pooling import native_recipe, resolve_recipe
from .pretrained import load_encoder, resolve_model
from .utils import atomic_dir, write_json_atomic

logger = logging.getLogger(__name__)

DPR_CONFIG = "dpr_config.json"
PROJECTION = "dpr_projection.npz"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER = "optimizer.npz"
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
        with open(f, encoding="utf-8") as fh:
            return json.load(fh)
    return None


def _save_tower(model: BiEncoder, tower: str, tokenizer, directory: str, cfg: dict) -> None:
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


# --------------------------------------------------------------------------- optimizer state

def _param_name_map(model) -> Dict[str, str]:
    return {p.name: n for n, p in model.named_parameters()}


def optimizer_arrays(optimizer, model) -> Dict[str, np.ndarray]:
    """Optimizer accumulators as numpy arrays keyed by structured parameter name.

    Paddle keys accumulators by generated parameter names (`linear_3.w_0_moment1_0`), which
    differ between processes that build models in a different order; structured names don't.
    """
    names = _param_name_map(model)
    by_len = sorted(names, key=len, reverse=True)
    out = {}
    for key, value in optimizer.state_dict().items():
        if not isinstance(value, paddle.Tensor):
            continue
        for pname in by_len:
            if key.startswith(pname + "_"):
                out[names[pname] + "|" + key[len(pname) + 1:]] = value.numpy()
                break
        else:
            out["|" + key] = value.numpy()
    return out


def load_optimizer_arrays(optimizer, model, arrays: Dict[str, np.ndarray]) -> None:
    """Inverse of `optimizer_arrays`."""
    inv = {n: p.name for n, p in model.named_parameters()}
    state = {}
    for key, value in arrays.items():
        structured, _, suffix = key.partition("|")
        name = f"{inv[structured]}_{suffix}" if structured else suffix
        state[name] = paddle.to_tensor(value)
    optimizer.set_state_dict(state)


# --------------------------------------------------------------------------- save / load

def save_checkpoint(path: str, model: BiEncoder, tokenizer, optimizer, scheduler, trainer_state: dict,
                    cfg: dict, run_config: dict) -> str:
    """Write a complete checkpoint atomically to `path`."""
    with atomic_dir(path) as tmp:
        for tower, sub in TOWER_DIRS.items():
            _save_tower(model, tower, tokenizer, os.path.join(tmp, sub), cfg)
        write_json_atomic(os.path.join(tmp, DPR_CONFIG), cfg)
        if optimizer is not None:
            np.savez(os.path.join(tmp, OPTIMIZER), **optimizer_arrays(optimizer, model))
        state = dict(trainer_state)
        state["scheduler"] = scheduler.state_dict() if scheduler is not None else None
        state["run_config"] = run_config
        write_json_atomic(os.path.join(tmp, TRAINER_STATE), state)
    return path


def load_trainer_state(path: str) -> dict:
    """trainer_state.json of a checkpoint."""
    f = os.path.join(path, TRAINER_STATE)
    if not os.path.isfile(f):
        raise CheckpointError(f"{path}: not a complete checkpoint (no {TRAINER_STATE})")
    with open(f, encoding="utf-8") as fh:
        return json.load(fh)


def restore_optimizer(path: str, optimizer, scheduler, model) -> None:
    """Load optimizer accumulators and the LR scheduler state from a checkpoint."""
    with np.load(os.path.join(path, OPTIMIZER), allow_pickle=False) as z:
        load_optimizer_arrays(optimizer, model, {k: z[k] for k in z.files})
    sched = load_trainer_state(path).get("scheduler")
    if scheduler is not None and sched:
        scheduler.set_state_dict(sched)


def _checkpoint_dirs(save_dir: str) -> List[Tuple[int, str]]:
    """Every checkpoint-STEP entry in `save_dir` (complete or not), oldest first, as (step, path)."""
    out = []
    for p in glob.glob(os.path.join(save_dir, "checkpoint-*")):
        m = re.fullmatch(r"checkpoint-(\d+)", os.path.basename(p))
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def list_checkpoints(save_dir: str):
    """Complete step checkpoints in `save_dir`, oldest first, as (step, path)."""
    return [(step, p) for step, p in _checkpoint_dirs(save_dir) if os.path.isfile(os.path.join(p, TRAINER_STATE))]


def latest_checkpoint(save_dir: str) -> Optional[str]:
    """The newest complete checkpoint in `save_dir`, or None."""
    cps = list_checkpoints(save_dir)
    return cps[-1][1] if cps else None


def prune_checkpoints(save_dir: str, keep_last: int) -> None:
    """Delete all but the newest `keep_last` step checkpoints (`best/` is separate and kept)."""
    if keep_last <= 0:
        return
    for _, p in list_checkpoints(save_dir)[:-keep_last]:
        shutil.rmtree(p, ignore_errors=True)


def stale_temps(save_dir: str) -> List[str]:
    """Temporary folders and links a run killed mid-save left in `save_dir` (atomic_dir's
    `NAME.XXXX.tmp`, point_latest's `latest.tmp`)."""
    pats = ("checkpoint-*.*.tmp", "best.*.tmp", "latest.tmp")
    return sorted({p for pat in pats for p in glob.glob(os.path.join(save_dir, pat))})


def remove_stale_temps(save_dir: str) -> List[str]:
    """Delete `stale_temps(save_dir)`; returns what went. Only one run writes a save_dir at a time."""
    gone = stale_temps(save_dir)
    for p in gone:
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            os.remove(p)
    return gone


def remove_checkpoints(save_dir: str) -> List[str]:
    """Delete every checkpoint-* (complete or not), best/, latest, vdl/ and stale temporary folders
    in `save_dir`; returns what went."""
    gone = [p for _, p in _checkpoint_dirs(save_dir)] + stale_temps(save_dir)
    gone += [p for p in (os.path.join(save_dir, n) for n in ("best", "latest", "vdl")) if os.path.lexists(p)]
    for p in gone:
        if os.path.islink(p) or not os.path.isdir(p):
            os.remove(p)
        else:
            shutil.rmtree(p)
    return gone


def point_latest(save_dir: str, checkpoint: str) -> str:
    """Make `SAVE_DIR/latest` a symlink to `checkpoint` (replaced atomically), for scripts that follow."""
    link = os.path.join(save_dir, "latest")
    tmp = link + ".tmp"
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(os.path.basename(checkpoint.rstrip("/")), tmp)
    os.replace(tmp, link)
    return link
