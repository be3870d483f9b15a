"""Training checkpoints: the model with its config (modeling/builder.py), the optimizer and the trainer
state, written whole; and the run directory's checkpoint-N / best / latest bookkeeping.

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

from ..common.files import atomic_dir, cache_root, claim, reading, write_json_atomic
from ..modeling.builder import DPR_CONFIG, TOWER_DIRS, CheckpointError, save_tower
from ..modeling.cross_encoder import CrossEncoder, save_cross_encoder

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
OPTIMIZER = "optimizer.npz"


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

def save_checkpoint(path: str, model, tokenizer, optimizer, scheduler, trainer_state: dict,
                    cfg: dict, run_config: dict) -> str:
    """Write a complete checkpoint atomically to `path`: a BiEncoder's two towers, or a CrossEncoder as a reranker directory."""
    with atomic_dir(path) as tmp:
        if isinstance(model, CrossEncoder):  # the checkpoint is itself a reranker directory
            save_cross_encoder(model, tokenizer, tmp, cfg)
        else:
            for tower, sub in TOWER_DIRS.items():
                save_tower(model, tower, tokenizer, os.path.join(tmp, sub), cfg)
            write_json_atomic(os.path.join(tmp, DPR_CONFIG), cfg)
        if optimizer is not None:
            np.savez(os.path.join(tmp, OPTIMIZER), **optimizer_arrays(optimizer, model))
        state = dict(trainer_state)
        state["scheduler"] = scheduler.state_dict() if scheduler is not None else None
        state["run_config"] = run_config
        write_json_atomic(os.path.join(tmp, TRAINER_STATE), state)
    return path


def load_trainer_state(path: str) -> dict:
    """trainer_state.json of a checkpoint, trusted only whole (`state_problem`): a resume from a part
    of it would skip the recipe check or restart the learning-rate schedule without a word."""
    f = os.path.join(path, TRAINER_STATE)
    if not os.path.isfile(f):
        raise CheckpointError(f"{path}: not a complete checkpoint (no {TRAINER_STATE})")
    with reading(f, "trainer state", "resume from another checkpoint"), open(f, encoding="utf-8") as fh:
        state = json.load(fh)
    problem = state_problem(state)
    if problem:
        raise CheckpointError(f"{f}: {problem}: the trainer state is damaged or was edited; resume from another "
                              "checkpoint, or start afresh (--overwrite_save_dir)")
    return state


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def state_problem(state) -> Optional[str]:
    """What makes a trainer state unusable for a resume, or None: the position (whole numbers >= 0), the
    run's recipe (`run_config`, what the resume is checked against), the scheduler's state (or null
    for a run without one) and the best result must all be there and of their kind."""
    if not isinstance(state, dict):
        return "not a JSON object"
    for key in ("global_step", "epoch", "batch_in_epoch"):
        if not _count(state.get(key)):
            return f"'{key}' is {state.get(key)!r}, not a whole number >= 0"
    if not isinstance(state.get("run_config"), dict):
        return "'run_config' (the recipe a resumed run is checked against) is missing"
    if "scheduler" not in state:
        return "'scheduler' (where the learning-rate schedule stands) is missing"
    sched = state["scheduler"]
    if sched is not None and not (isinstance(sched, dict) and _count(sched.get("last_epoch"))):
        return f"'scheduler' is {sched!r}, not a learning-rate scheduler's state"
    best = state.get("best")
    if best is not None and not (isinstance(best, list) and all(isinstance(x, (int, float)) for x in best)):
        return f"'best' is {best!r}, not a list of numbers"
    return None


# what a resumed run must share with the run it resumes, or it would silently train another model: refused
RESUME_RECIPE = ("model_name_or_path", "que_model_path", "con_model_path", "shared_encoder", "projection_dim",
                 "pooling", "similarity", "temperature", "dropout", "max_query_length", "max_passage_length",
                 "group_size", "max_length")
# what may change on purpose (another learning rate for the rest of a run), at the price of exactness: logged
RESUME_SETTINGS = ("hard_negatives", "batch_size", "seed", "shuffle_positives", "learning_rate", "weight_decay",
                   "adam_epsilon", "warmup_steps", "max_grad_norm", "train_data_path", "distill_weight",
                   "distill_temperature", "bf16", "mask_duplicates")


def check_resume(run_config: dict, resume_from: str) -> None:
    """Refuse a resume whose recipe differs from the checkpoint's run, naming the first field that does;
    say so when a training setting differs (the run goes on, no longer as an uninterrupted one would)."""
    saved = load_trainer_state(resume_from)["run_config"]
    for key in RESUME_RECIPE + RESUME_SETTINGS:
        have, want = saved.get(key), run_config.get(key)
        if key not in saved or have == want:
            continue
        if key in RESUME_RECIPE:
            raise CheckpointError(f"--resume {resume_from}: that run trained with --{key} {have!r}, this one asks for "
                                f"{want!r}; resume with the same --{key}, or start afresh (--overwrite_save_dir)")
        logger.warning("--resume %s: that run trained with --%s %r, this one goes on with %r; the result will differ "
                       "from an uninterrupted run", resume_from, key, have, want)


def restore_optimizer(path: str, optimizer, scheduler, model) -> None:
    """Load optimizer accumulators and the LR scheduler state from a checkpoint."""
    f = os.path.join(path, OPTIMIZER)
    with reading(f, "optimizer state", "resume from another checkpoint"), np.load(f, allow_pickle=False) as z:
        load_optimizer_arrays(optimizer, model, {k: z[k] for k in z.files})
    sched = load_trainer_state(path)["scheduler"]
    if scheduler is not None:
        if not sched:  # the schedule would start again from its warmup
            raise CheckpointError(f"{os.path.join(path, TRAINER_STATE)}: holds no learning-rate scheduler state; "
                                  "resume from another checkpoint, or start afresh (--overwrite_save_dir)")
        scheduler.set_state_dict(sched)


_CLAIMS = {}  # save_dir -> the open lock file: held until this process ends


def claim_save_dir(save_dir: str) -> None:
    """Make this process the only run writing `save_dir` (a lock held until the process ends, under the
    cache root so the run directory holds only checkpoints): a second training started on it is refused
    in one line instead of writing over the first's checkpoints while both report success."""
    key = os.path.realpath(save_dir)
    if key in _CLAIMS:
        return
    try:
        _CLAIMS[key] = claim(save_dir_lock(save_dir), f"--save_dir {save_dir}")
    except OSError as e:  # a read-only cache root must not stop a training; it only loses this guard
        logger.warning("cannot take the lock %s (%s): a second training on %s would not be refused",
                       save_dir_lock(save_dir), e.strerror or e, save_dir)


def save_dir_lock(save_dir: str) -> str:
    """The lock file that `claim_save_dir` holds for `save_dir`."""
    import hashlib

    name = hashlib.sha1(os.path.realpath(save_dir).encode()).hexdigest()[:16]
    return os.path.join(cache_root(), "locks", f"train_{name}.lock")


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
