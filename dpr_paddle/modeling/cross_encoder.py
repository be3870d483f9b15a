"""The cross-encoder (reranker): question and passage read together by one encoder, a linear head on
the first token's hidden state gives one relevance score (sentence-transformers' CrossEncoder with
one label, Tevatron's reranker, RocketQA's cross-encoder). Its listwise loss is beside it, as DPR's
NLL is beside the bi-encoder.

A reranker directory is a PaddleNLP encoder directory (weights + tokenizer) plus `rerank_head.npz`
and a `dpr_config.json` whose `kind` is `cross_encoder` and which records the max length: every
later command rebuilds the reranker from the directory alone, and `pretrained.load_encoder` refuses
it where a bi-encoder is expected (and `build_cross_encoder` refuses the reverse).

An ensemble directory (`save_ensemble`) is a reranker too: its `dpr_config.json` has the same kind and
lists its member rerankers (paths relative to it) with the fingerprint each had when the ensemble was
made. It scores a pair by the mean of its members' scores (`encoding.reranker`); it cannot be trained.
"""
from __future__ import annotations

import json
import os
from typing import List

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..common.files import reading, write_json_atomic
from .model import encoder_call, extra_inputs, speed_up_encoder
from .pretrained import CROSS_ENCODER, MODEL_CONFIG, ModelNotFoundError, load_encoder, model_kind

HEAD = "rerank_head.npz"


class CrossEncoder(nn.Layer):
    """An encoder over `[CLS] question [SEP] title [SEP] text [SEP]` and a linear head on `[CLS]`: one
    score per pair. `speed_up_training` installs the same CPU kernels as the bi-encoder's."""

    def __init__(self, backbone: nn.Layer):
        super().__init__()
        self.backbone = backbone
        self._encoder_kwargs, self._pass_position_ids, self._task_id = encoder_call(backbone)
        self.head = nn.Linear(backbone.config.hidden_size, 1)

    def speed_up_training(self, bf16: bool = False) -> "CrossEncoder":
        """fast_cpu's and fused_cpu's training kernels in the backbone (see BiEncoder.speed_up_training)."""
        speed_up_encoder(self.backbone, bf16)
        return self

    def forward(self, input_ids, token_type_ids=None, attention_mask=None):
        """Scores [B] of B (question, passage) pairs."""
        extra = extra_inputs(input_ids, self._encoder_kwargs, self._pass_position_ids, self._task_id)
        out = self.backbone(input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask,
                            return_dict=True, **extra)
        return self.head(out.last_hidden_state[:, 0]).squeeze(-1)  # [B, H] -> [B]


def reranker_config(max_length: int, backbone: str) -> dict:
    """What a reranker directory records: its kind, the max length it was trained at, where it started."""
    return {"kind": CROSS_ENCODER, "max_length": int(max_length), "backbone": backbone}


def save_cross_encoder(model: CrossEncoder, tokenizer, directory: str, cfg: dict) -> None:
    """A reranker directory: the backbone and tokenizer as PaddleNLP saves them, the head, the config."""
    os.makedirs(directory, exist_ok=True)
    model.backbone.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    np.savez(os.path.join(directory, HEAD), weight=model.head.weight.numpy(), bias=model.head.bias.numpy())
    write_json_atomic(os.path.join(directory, MODEL_CONFIG), cfg)


def reranker_problem(path: str) -> str:
    """Why `path` is not a reranker directory (one reranker, or an ensemble of them), or '' when it is one."""
    if not os.path.isdir(path):
        return "no such directory: a reranker is a directory that train_reranker.py wrote"
    if os.path.isdir(os.path.join(path, "question_encoder")):
        return "a bi-encoder checkpoint, not a reranker; train one with train_reranker.py"
    if model_kind(path) != CROSS_ENCODER:
        return "not a reranker directory (its dpr_config.json has no kind cross_encoder); train one with train_reranker.py"
    if is_ensemble(path):
        return ""  # its members are checked where they are read (ensemble_members)
    if not os.path.isfile(os.path.join(path, HEAD)):
        return f"a reranker directory without its {HEAD}; restore it from the checkpoint it came from"
    return ""


def read_reranker_config(path: str) -> dict:
    """dpr_config.json of a reranker directory (checked by `reranker_problem` first)."""
    f = os.path.join(path, MODEL_CONFIG)
    with reading(f, "reranker config", "restore it from the checkpoint it came from"), open(f, encoding="utf-8") as fh:
        cfg = json.load(fh)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("max_length"), int) or cfg["max_length"] < 4:
        raise ModelNotFoundError(f"{f}: not a reranker config (no max_length); restore it from its checkpoint")
    return cfg


def build_cross_encoder(name_or_path: str, trained: bool = True):
    """(CrossEncoder, tokenizer, config). `trained=True` (reranking, denoising, scoring) accepts only a
    reranker directory; `trained=False` (the start of training) also takes any encoder the bi-encoder
    takes, with a fresh head (seed paddle first for a reproducible one)."""
    problem = reranker_problem(name_or_path)
    if trained and problem:
        raise ModelNotFoundError(f"{name_or_path}: {problem}")
    if not problem and is_ensemble(name_or_path):
        raise ModelNotFoundError(f"{name_or_path}: an ensemble of rerankers scores pairs (--rerank_model, "
                                 "--denoise_model) but is not one model to train or resume: start from one of its members")
    backbone, tokenizer = load_encoder(name_or_path, cross_encoder_ok=True)
    model = CrossEncoder(backbone)
    cfg = {}
    if not problem:  # a reranker: its config and its trained head
        cfg = read_reranker_config(name_or_path)
        f = os.path.join(name_or_path, HEAD)
        with reading(f, "reranker head", "restore it from the checkpoint it came from"), \
                np.load(f, allow_pickle=False) as z:
            model.head.weight.set_value(z["weight"])
            model.head.bias.set_value(z["bias"])
    return model, tokenizer, cfg


def listwise_loss(scores: paddle.Tensor, num_groups: int):
    """Softmax cross-entropy over each group (the positive first): scores [G, n] -> (sum over the groups
    of -log softmax[0], divided by `num_groups`, the groups of the whole batch; the number whose
    positive scored highest). Dividing by the batch's count, not the chunk's, makes chunk losses add
    up to the batch's mean, so chunked accumulation is exact.

    The softmax runs in float64: Paddle's float32 kernels round differently for different numbers of
    rows (a chunk's and the batch's gradients differed by an ulp), while float64 results rounded back
    to the scores' float32 are the same whichever rows they were computed with."""
    scores64 = scores.astype("float64")
    log_probs = F.log_softmax(scores64, axis=1)  # [G, n]
    loss = (-log_probs[:, 0].sum() / num_groups).astype("float32")
    correct = (paddle.argmax(scores64, axis=1) == 0).astype("int64").sum()
    return loss, correct


ENSEMBLE = "ensemble"  # the key of an ensemble's dpr_config.json: {"members": [...], "fingerprints": [...]}


def is_ensemble(path: str) -> bool:
    """Whether the reranker directory `path` is an ensemble (its config lists members)."""
    try:
        with open(os.path.join(path, MODEL_CONFIG), encoding="utf-8") as fh:
            return isinstance(json.load(fh).get(ENSEMBLE), dict)
    except (OSError, ValueError, AttributeError):
        return False


def member_problem(path: str) -> str:
    """Why `path` cannot be a member of an ensemble (not one reranker), or ''."""
    return reranker_problem(path) or ("an ensemble itself; list its members instead" if is_ensemble(path) else "")


def ensemble_members(path: str) -> List[tuple]:
    """[(member directory, fingerprint when the ensemble was made)] of the ensemble directory `path`; a
    damaged config, a missing member, or a member that is itself an ensemble is refused in one line."""
    f = os.path.join(path, MODEL_CONFIG)
    with reading(f, "reranker ensemble config", "make the ensemble again"), open(f, encoding="utf-8") as fh:
        spec = json.load(fh).get(ENSEMBLE)
    members, prints = spec.get("members"), spec.get("fingerprints")
    if (not isinstance(members, list) or not isinstance(prints, list) or len(members) != len(prints) or len(members) < 2
            or not all(isinstance(m, str) and isinstance(p, str) for m, p in zip(members, prints))):
        raise ModelNotFoundError(f"{f}: not an ensemble config (members and fingerprints, two or more); make the "
                                 "ensemble again")
    out = []
    for m, fp in zip(members, prints):
        d = os.path.normpath(os.path.join(path, m))  # relative to the ensemble: the pair moves together
        problem = member_problem(d)
        if problem:
            raise ModelNotFoundError(f"{path}: its member {d}: {problem}")
        out.append((d, fp))
    return out


def save_ensemble(directory: str, members: List[str], fingerprints: List[str]) -> None:
    """An ensemble directory over the reranker directories `members` (with their model fingerprints)."""
    os.makedirs(directory, exist_ok=True)
    rel = [os.path.relpath(os.path.abspath(m), os.path.abspath(directory)) for m in members]
    write_json_atomic(os.path.join(directory, MODEL_CONFIG),
                      {"kind": CROSS_ENCODER, ENSEMBLE: {"members": rel, "fingerprints": list(fingerprints),
                                                         "combine": "mean of the members' scores"}})
