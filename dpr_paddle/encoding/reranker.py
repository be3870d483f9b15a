"""Loading a reranker (cross-encoder) for inference, on the backends the towers use: on CPU by default
the faster of ONNX Runtime (converted once and checked against Paddle Inference on a probe batch, as the
towers are) and Paddle Inference for this model and CPU (towers.measured_cpu_backend), or dygraph (the
GPU default). Opt-in, with scores other than float32's (recorded as `quantization`, so a teacher scored so is
another teacher): `inference-bf16` and `onnxruntime-int8` (docs/benchmarks.md section 12 measures both).
An ensemble directory loads as its members (`load_rerankers`), each on the same backend."""
from __future__ import annotations

import hashlib
import os
from typing import Callable, Dict, List, Tuple

import numpy as np
import paddle

from ..modeling.builder import check_length, model_fingerprint
from ..modeling.cross_encoder import build_cross_encoder, ensemble_members, is_ensemble, member_problem, save_ensemble
from ..modeling.pretrained import ModelNotFoundError
from ..modeling.tokenization import Tensorizer
from .spec import check_backend
from .towers import QUANTIZATION, export_static, onnx_or_none, paddle_inference_encoder, resolve_backend

EXPORT_RECIPE = "rerank"  # the export cache key's recipe part: a cross-encoder's program is not a tower's


def load_reranker(path: str, backend: str = "auto", max_length: int = 0) -> Tuple[
        Callable[[Dict[str, np.ndarray]], np.ndarray], Tensorizer, dict]:
    """(score_fn(arrays) -> [B] float32, tensorizer, info) for the reranker directory `path`; info holds
    its max length (its own, or `max_length` when > 0, as CrossEncoder(max_length=) overrides it),
    fingerprint and backend. A directory that is not a reranker, or a length past its position embeddings,
    is refused in one line."""
    model, tokenizer, cfg = build_cross_encoder(path, trained=True)
    model.eval()
    check_length("--rerank_max_length", max_length, [model.backbone], f"the reranker {path}")
    info = {"model": os.path.abspath(path), "max_length": int(max_length or cfg["max_length"]),
            "model_fingerprint": model_fingerprint(model)}
    if max_length and max_length != cfg["max_length"]:
        info["trained_max_length"] = int(cfg["max_length"])
    check_backend(backend)  # every way in (Searcher, score_records, mining, the API) comes through here
    on_gpu = paddle.is_compiled_with_cuda() and "gpu" in paddle.device.get_device()
    backend = resolve_backend(backend, on_gpu, lambda: export_static(model, info["model_fingerprint"], EXPORT_RECIPE),
                              len(tokenizer.vocab), info["max_length"])
    if backend in QUANTIZATION:  # scores other than float32's: another teacher (retrieval/teacher.py)
        info["quantization"] = QUANTIZATION[backend]
    if backend.startswith("onnxruntime"):
        score = onnx_or_none(backend, lambda: export_static(model, info["model_fingerprint"], EXPORT_RECIPE),
                             len(tokenizer.vocab))
        if score is not None:
            info["backend"] = backend
            return score, Tensorizer(tokenizer), info
        backend = "inference"
    info["backend"] = backend
    if backend in ("inference", "inference-bf16"):
        prefix = export_static(model, info["model_fingerprint"], EXPORT_RECIPE)
        return paddle_inference_encoder(prefix, backend == "inference-bf16"), Tensorizer(tokenizer), info

    @paddle.no_grad()
    def score(arrays: Dict[str, np.ndarray]) -> np.ndarray:
        return model(**{k: paddle.to_tensor(v) for k, v in arrays.items()}).astype("float32").numpy()  # [B]

    return score, Tensorizer(tokenizer), info


Scorer = Tuple[Callable[[Dict[str, np.ndarray]], np.ndarray], Tensorizer, dict]


def load_rerankers(path: str, backend: str = "auto", max_length: int = 0) -> Tuple[List[Scorer], dict]:
    """([(score_fn, tensorizer, info)] of each model, info of the whole) for the reranker directory `path`:
    one model, or an ensemble's members, each on `backend` and read at `max_length` (when > 0). An
    ensemble's info names it, its members and a fingerprint of the members' fingerprints and lengths (a
    teacher of its own); a member retrained since the ensemble was made is refused in one line."""
    if not is_ensemble(path):
        scorer = load_reranker(path, backend, max_length)
        return [scorer], scorer[2]
    scorers = []
    for member, recorded in ensemble_members(path):
        scorer = load_reranker(member, backend, max_length)
        if scorer[2]["model_fingerprint"] != recorded:
            raise ModelNotFoundError(f"{path}: its member {member} is not the model the ensemble was made of (fingerprint "
                                     f"{scorer[2]['model_fingerprint'][:12]}, recorded {recorded[:12]}); make the "
                                     "ensemble again")
        scorers.append(scorer)
    infos = [i for _, _, i in scorers]
    key = "|".join(f"{i['model_fingerprint']}@{i['max_length']}" for i in infos)
    info = {"model": os.path.abspath(path), "members": [i["model"] for i in infos],
            "backend": ",".join(sorted({i["backend"] for i in infos})), "max_length": max(i["max_length"] for i in infos),
            "model_fingerprint": "ensemble-" + hashlib.sha256(key.encode()).hexdigest()[:24]}
    if "quantization" in infos[0]:  # one backend for all: all quantised alike
        info["quantization"] = infos[0]["quantization"]
    return scorers, info


def make_ensemble(members: List[str], directory: str) -> List[str]:
    """Write the ensemble directory `directory` over the reranker directories `members` (two or more, each one
    reranker, none twice), recording each one's fingerprint as `load_reranker` takes it; returns them."""
    if len(members) < 2 or len({os.path.realpath(m) for m in members}) != len(members):
        raise ModelNotFoundError(f"an ensemble needs two or more different rerankers, got {members}")
    if os.path.isdir(directory) and os.listdir(directory) and not is_ensemble(directory):
        raise ModelNotFoundError(f"{directory}: exists and is not an ensemble; give a new --output_dir")
    prints = []
    for m in members:
        problem = member_problem(m)
        if problem:
            raise ModelNotFoundError(f"{m}: {problem}")
        model, _, _ = build_cross_encoder(m, trained=True)
        prints.append(model_fingerprint(model))
    save_ensemble(directory, members, prints)
    return prints
