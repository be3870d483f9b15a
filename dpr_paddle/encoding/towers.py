"""Load one tower of a bi-encoder for inference: numpy token arrays in, numpy vectors out.

Backends:
- `auto` on CPU: `onnxruntime` or `inference`, whichever encodes this model faster on this CPU
  (`measured_cpu_backend`: timed once per model, CPU and length on a 32-sequence batch, cached beside
  the export and logged in one line); on GPU `dygraph`.
- `onnxruntime`: the Paddle export below, converted once to ONNX and run by ONNX Runtime; checked
  against Paddle Inference on a probe batch when converted (same vectors within 1e-6 for MiniLM),
  and measured 1.3-1.6x faster than Paddle Inference on AMD and 1.1x on Intel (docs/benchmarks.md,
  sections 2a and 14), so the usual choice of `auto`. Its attention blocks run as ONNX Runtime's fused
  `Attention` operator (onnx_fusion.py), checked the same way when the fused graph is made.
- `onnxruntime-int8`: the same with int8 MatMul weights (onnx_backend.py); opt-in, it changes the vectors.
- `inference-bf16`: Paddle Inference with oneDNN's bfloat16 kernels, on CPUs with AVX512-BF16 or AMX; opt-in,
  it changes the vectors.
- `inference`: the tower is exported once with `paddle.jit.save` (cached
  under the model's fingerprint) and run by Paddle Inference with oneDNN and IR optimisation;
  measured here 3.6x faster than dygraph for a 16 x 128 MiniLM forward, same vectors within 2e-6.
- `dygraph`: the eager model under `paddle.no_grad()` (the default on GPU, where `--fp16` runs it
  under float16 autocast).
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import replace
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import paddle

from ..common.errors import DprError
from ..common.files import atomic_dir, cache_root
from ..common.runtime import cpu_info, cpu_key, cpu_name, cpu_threads, measured_choice, time_alternating, without_native_lines
from ..modeling import bf16_cpu
from ..modeling.builder import (build_biencoder, check_lengths, encoder_recipe, model_fingerprint,
                                resolve_encoder_paths)
from ..modeling.model import CONTEXT, QUESTION
from ..modeling.tokenization import DEFAULT_MAX_PASSAGE_LENGTH, DEFAULT_MAX_QUERY_LENGTH, Tensorizer
from . import onnx_backend, onnx_fusion
from .spec import TowerSpec

logger = logging.getLogger(__name__)

INPUTS = ("input_ids", "token_type_ids", "attention_mask")
# Part of the export cache key: bump it when BiEncoder.forward changes what is exported
# (2: PaddleNLP's key/value cache turned off; 3: pooling and normalisation in the key;
# 4: explicit position ids, which ERNIE needs under to_static).
EXPORT_VERSION = 4


def export_prefix(fingerprint: str, recipe: str) -> str:
    """Where `export_static` writes (and finds) the export of a model with this fingerprint and recipe
    ("mean-cos", "cls-dot", ... or "rerank"): a path prefix for .json/.pdiparams/.onnx."""
    return os.path.join(cache_root(), "inference", f"{fingerprint}-{recipe}-v{EXPORT_VERSION}", "tower")


def export_static(model, fingerprint: str, recipe: Optional[str] = None) -> str:
    """jit.save the question tower of a (shared) BiEncoder, or a CrossEncoder (`recipe` "rerank"), once per
    fingerprint and recipe; returns the path prefix."""
    prefix = export_prefix(fingerprint, recipe or f"{model.pooling}-{'cos' if model.normalize else 'dot'}")
    directory = os.path.dirname(prefix)
    if os.path.isfile(prefix + ".pdiparams"):
        return prefix
    from paddle.static import InputSpec

    model.eval()
    spec = [InputSpec([None, None], "int64", name) for name in INPUTS]  # `tower` keeps its default: question
    # Paddle 3.3's PIR tracing warns about a `place` query and an "input out tensor" inside its own layers;
    # neither is something a user can act on, and the exported program is checked before use (onnx_backend)
    with atomic_dir(directory) as tmp, warnings.catch_warnings(), \
            without_native_lines("not support input out tensor"):
        warnings.filterwarnings("ignore", message="Tensor do not have 'place' interface")
        static = paddle.jit.to_static(model, input_spec=spec, full_graph=True)
        paddle.jit.save(static, os.path.join(tmp, "tower"))
    logger.info("exported the encoder for Paddle Inference to %s", directory)
    return prefix


# the backends whose vectors are not float32's, and the `quantization` their shards record (another job)
QUANTIZATION = {"onnxruntime-int8": "int8-dynamic", "inference-bf16": "bf16"}


def check_bf16_cpu() -> None:
    """Refuse, in one line, bfloat16 inference on a CPU without bfloat16 instructions (oneDNN would emulate it,
    slower than float32)."""
    if not bf16_cpu.hardware():  # the same CPU features oneDNN's bfloat16 kernels need for training
        raise DprError(f"--backend inference-bf16 needs a CPU with AVX512-BF16 or AMX ({cpu_name()} has neither); "
                       "use --backend onnxruntime, or onnxruntime-int8 for a faster, lower-precision encoder")


def make_predictor(prefix: str, threads: Optional[int] = None, bf16: bool = False):
    """A Paddle Inference predictor on CPU with oneDNN and IR optimisation; `bf16` runs oneDNN's bfloat16
    kernels (AMX or AVX512-BF16: float32 in and out, bfloat16 matmuls inside)."""
    model_file = prefix + ".json" if os.path.isfile(prefix + ".json") else prefix + ".pdmodel"
    config = paddle.inference.Config(model_file, prefix + ".pdiparams")
    config.disable_gpu()
    config.enable_mkldnn()
    if bf16:
        check_bf16_cpu()
        config.enable_mkldnn_bfloat16()
    config.set_cpu_math_library_num_threads(threads or cpu_threads())
    config.switch_ir_optim(True)
    config.disable_glog_info()
    return paddle.inference.create_predictor(config)


def paddle_inference_encoder(prefix: str, bf16: bool = False) -> Callable[[Dict[str, np.ndarray]], np.ndarray]:
    """encode(arrays) -> [B, D] float32 with a Paddle Inference predictor of the export at `prefix` (`bf16`: in
    bfloat16, see make_predictor)."""
    predictor = make_predictor(prefix, bf16=bf16)
    names = predictor.get_input_names()
    output = predictor.get_output_handle(predictor.get_output_names()[0])

    def encode(arrays: Dict[str, np.ndarray]) -> np.ndarray:
        for name in names:
            predictor.get_input_handle(name).copy_from_cpu(np.ascontiguousarray(arrays[name]))
        predictor.run()
        return output.copy_to_cpu().astype(np.float32)  # [B, D]

    return encode


def onnx_encoder(prefix: str, int8: bool, vocab_size: int) -> Callable[[Dict[str, np.ndarray]], np.ndarray]:
    """encode(arrays) with ONNX Runtime; a fresh conversion is first checked against Paddle
    Inference on a probe batch, and removed (OnnxUnavailable) if it is not faithful. Float32 runs the
    variant with fused attention (onnx_fusion) when it exists and passes the same check."""
    reference: list = []  # Paddle Inference's encoder: made only when a fresh file is checked, and once

    def check(onnx_path: str) -> None:
        if not reference:
            reference.append(paddle_inference_encoder(prefix))
        onnx_backend.check_faithful(onnx_backend.session(onnx_path), reference[0],
                                    onnx_backend.probe_arrays(vocab_size), onnx_path)

    fresh = not os.path.isfile(prefix + ".onnx")
    path = onnx_backend.convert(prefix)
    if fresh:
        try:
            check(path)
        except onnx_backend.OnnxUnavailable:
            os.remove(path)
            raise
    if int8:  # quantised from the converted graph, as int8 shards have always been made
        return onnx_backend.session(onnx_backend.quantize_int8(path))
    return onnx_backend.session(_attention_fused(path, check) or path)


def onnx_or_none(backend: str, export: Callable[[], str],
                 vocab_size: int) -> Optional[Callable[[Dict[str, np.ndarray]], np.ndarray]]:
    """The ONNX Runtime encoder for `backend` (onnxruntime or onnxruntime-int8) of the export `export()` makes, or
    None when the conversion is not faithful and Paddle Inference should run instead (one warning). Refused in
    one line without paddle2onnx and onnxruntime; int8 is never replaced by float32 (the error is raised)."""
    if not onnx_backend.available():
        raise onnx_backend.OnnxUnavailable(
            f"--backend {backend} needs paddle2onnx and onnxruntime: pip install paddle2onnx onnxruntime")
    int8 = backend == "onnxruntime-int8"
    try:
        return onnx_encoder(export(), int8, vocab_size)
    except onnx_backend.OnnxUnavailable as e:
        if int8:  # no float fallback for a run that asked for int8 vectors or scores
            raise
        logger.warning("%s; using Paddle Inference instead", e)
        return None


def _attention_fused(path: str, check: Callable[[str], None]) -> Optional[str]:
    """The fused-attention variant of the conversion at `path`, `check`ed when made; None if no block matched
    or the check failed (logged; either outcome is remembered, so later loads do not try again)."""
    fresh = not os.path.isfile(onnx_fusion.fused_path(path))
    fused = onnx_fusion.fuse_attention(path)
    if fused and fresh:
        try:
            check(fused)
        except Exception as e:  # noqa: BLE001 (ONNX Runtime raises bare Exception subclasses): not used, then
            onnx_fusion.give_up(path)
            logger.info("attention left unfused: %s", e)
            return None
    return fused


def resolve_backend(backend: str, on_gpu: bool, export: Optional[Callable[[], str]] = None, vocab_size: int = 0,
                    length: int = 0) -> str:
    """`auto`: dygraph on GPU; on CPU Paddle Inference when ONNX Runtime is not installed, else the faster of
    the two for the export that `export()` makes (`measured_cpu_backend`; onnxruntime without `export`)."""
    if backend != "auto":
        return backend
    if on_gpu:
        return "dygraph"
    if not onnx_backend.available():
        return "inference"
    return measured_cpu_backend(export(), vocab_size, length) if export else "onnxruntime"


def measured_cpu_backend(prefix: str, vocab_size: int, length: int, batch: int = 32) -> str:
    """onnxruntime or inference: whichever runs the export at `prefix` faster on this CPU, on a batch of
    `batch` random sequences of `length` tokens (median of 3, alternated). Measured once per export, CPU and
    length, cached beside the export and logged in one line. A conversion that fails its check makes it
    inference, with the reason in the log."""
    model, _ = cpu_info()
    # v2: measured since ONNX Runtime runs fused attention (onnx_fusion); older choices timed the unfused graph
    path = os.path.join(os.path.dirname(prefix), f"backend-v2-{cpu_key(length, batch)}.json")

    def measure() -> dict:
        rng = np.random.default_rng(0)
        ids = rng.integers(1000, max(1001, min(vocab_size, 20000)), (batch, length))  # [batch, length]
        arrays = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": np.ones_like(ids)}
        inference = paddle_inference_encoder(prefix)
        try:
            ort = onnx_encoder(prefix, False, vocab_size)
        except onnx_backend.OnnxUnavailable as e:
            logger.warning("%s; using Paddle Inference instead", e)
            return {"backend": "inference", "reason": str(e), "cpu": model}
        ort_s, inference_s = time_alternating([lambda: ort(arrays), lambda: inference(arrays)])
        return {"backend": "onnxruntime" if ort_s <= inference_s else "inference", "cpu": model,
                "onnxruntime_ms": round(1000 * ort_s, 2), "inference_ms": round(1000 * inference_s, 2),
                "batch": batch, "length": length}

    choice, fresh = measured_choice(path, measure, lambda c: c.get("backend") in ("onnxruntime", "inference"))
    if fresh and "reason" not in choice:
        logger.info("backend auto -> %s: %.1f ms against %s's %.1f ms for %d x %d tokens on %s (measured once, "
                    "cached in %s; --backend onnxruntime or inference forces)", choice["backend"],
                    min(choice["onnxruntime_ms"], choice["inference_ms"]),
                    "inference" if choice["backend"] == "onnxruntime" else "onnxruntime",
                    max(choice["onnxruntime_ms"], choice["inference_ms"]), batch, length, model, path)
    return choice["backend"]


def _build_tower(tower: str, spec: TowerSpec):
    """(model, tokenizer, label, checkpoint config, recipe): one tower as a shared BiEncoder in eval
    mode; its projection (if any) is loaded from the tower's dir into q_proj."""
    que, con, cfg = resolve_encoder_paths(spec.model_file, spec.que_model_path, spec.con_model_path,
                                          spec.model_name_or_path)
    path = que if tower == QUESTION else con
    recipe = encoder_recipe(path, spec.pooling, spec.similarity)
    model, tokenizer = build_biencoder(path, path, shared=True,
                                       projection_dim=int(cfg.get("projection_dim", spec.projection_dim)),
                                       pooling=recipe["pooling"], normalize=recipe["similarity"] == "cosine")
    model.eval()
    return model, tokenizer, (os.path.abspath(path) if os.path.isdir(path) else path), cfg, recipe


def tower_fingerprint(tower: str, spec: Optional[TowerSpec] = None, **fields) -> Tuple[str, str]:
    """(path, fingerprint) of one tower's weights, as `load_tower` records them, without exporting it."""
    model, _, label, _, _ = _build_tower(tower, spec or TowerSpec(**fields))
    return label, model_fingerprint(model)


def paired_question_fingerprint(spec: TowerSpec, context_fingerprint: str) -> Optional[str]:
    """The fingerprint of the question encoder that belongs with the context tower of `spec` (recorded
    in every shard, so that a search with any other question encoder is refused): a checkpoint's own
    question tower; --que_model_path when given; the sibling `question_encoder/` of a checkpoint's
    `context_encoder/` given alone; the same encoder when one serves both towers. None when the pair
    cannot be known (a lone --con_model_path)."""
    if spec.model_file or spec.que_model_path:
        return tower_fingerprint(QUESTION, spec)[1]
    if spec.con_model_path:
        con = os.path.abspath(spec.con_model_path.rstrip("/"))
        sibling = os.path.join(os.path.dirname(con), "question_encoder")
        if os.path.basename(con) == "context_encoder" and os.path.isdir(sibling):
            return tower_fingerprint(QUESTION, replace(spec, que_model_path=sibling))[1]
        return None
    return context_fingerprint  # --model_name_or_path alone: one encoder for both towers, the same weights


def load_tower(tower: str, spec: Optional[TowerSpec] = None,
               **fields) -> Tuple[Callable[[Dict[str, np.ndarray]], np.ndarray], Tensorizer, dict]:
    """(encode_fn, tensorizer, info) for the `question` or `context` tower of `spec` (or of a
    TowerSpec made from `fields`, e.g. `load_tower(CONTEXT, model_name_or_path="tiny")`)."""
    spec = spec or TowerSpec(**fields)
    model, tokenizer, label, cfg, recipe = _build_tower(tower, spec)
    # a length given wins (reading past the trained length is legitimate, as --rerank_max_length does); one left
    # out is the checkpoint's, as DPR does
    max_q = spec.max_query_length or int(cfg.get("max_query_length", DEFAULT_MAX_QUERY_LENGTH))
    max_p = spec.max_passage_length or int(cfg.get("max_passage_length", DEFAULT_MAX_PASSAGE_LENGTH))
    name, used = ("max_passage_length", max_p) if tower == CONTEXT else ("max_query_length", max_q)
    if name in cfg and used != int(cfg[name]):
        logger.info("%s tower: %s %d as given; the checkpoint was trained at %d (dpr_config.json)", tower, name,
                    used, int(cfg[name]))
    check_lengths(model, max_q if tower == QUESTION else 4, max_p if tower == CONTEXT else 4)  # the length it uses
    tensorizer = Tensorizer(tokenizer, max_q, max_p)
    on_gpu = paddle.is_compiled_with_cuda() and "gpu" in paddle.device.get_device()
    use_fp16 = bool(spec.fp16) and on_gpu
    info = {"model": label,
            "model_fingerprint": model_fingerprint(model), "tower": tower,
            "max_length": max_p if tower == CONTEXT else max_q,
            "pooling": recipe["pooling"], "similarity": recipe["similarity"]}

    backend = resolve_backend(spec.backend, on_gpu, lambda: export_static(model, info["model_fingerprint"]),
                              len(tokenizer.vocab), info["max_length"])
    if backend in QUANTIZATION:  # other vectors than float32's: their shards are another job
        info["quantization"] = QUANTIZATION[backend]
    if backend.startswith("onnxruntime"):
        encode = onnx_or_none(backend, lambda: export_static(model, info["model_fingerprint"]), len(tokenizer.vocab))
        if encode is not None:
            info["backend"] = backend
            return encode, tensorizer, info
        backend = "inference"
    info["backend"] = backend
    if backend in ("inference", "inference-bf16"):
        return (paddle_inference_encoder(export_static(model, info["model_fingerprint"]), backend == "inference-bf16"),
                tensorizer, info)

    @paddle.no_grad()
    def encode(arrays: Dict[str, np.ndarray]) -> np.ndarray:
        inputs = {k: paddle.to_tensor(v) for k, v in arrays.items()}
        with paddle.amp.auto_cast(enable=use_fp16, dtype="float16"):
            reps = model(**inputs, tower=QUESTION)  # a shared build: the one tower is `question_model`
        return reps.astype("float32").numpy()  # [B, D]

    return encode, tensorizer, info
