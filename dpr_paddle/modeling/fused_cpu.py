"""Fused CPU kernels for training transformer encoders (fused_ops.cc, Paddle custom operators).

A BERT/ERNIE layer (`nn.TransformerEncoderLayer`, post-norm) trained on CPU runs, per layer:
- attention: q, k and v from one GEMM, split into heads with their biases (`dpr_split_qkv`),
  dropout(softmax(q k^T * scale + mask)) as one operator (`dpr_softmax_dropout`), and the heads
  merged back in one parallel copy (`dpr_merge_heads`);
- LayerNorm(residual + dropout(x W + b)) after the attention's output projection and after the
  feed-forward's second linear, with the bias folded in (`dpr_bias_dropout_residual_ln`);
- GELU(x W1 + b1) with the bias folded in (`dpr_bias_gelu`).
The weight GEMMs stay Paddle's (MKL), or with --bf16 bf16_cpu's (oneDNN, bfloat16 inputs). Attention's per-head
GEMMs are this file's `heads_matmul` or the library's batched matmul (Paddle's MKL in float32, oneDNN's with
--bf16), whichever `heads_gemm` measured faster on this CPU: ours won on AMD Zen 4, oneDNN's AMX kernels on an
Intel Xeon (docs/benchmarks.md section 14). Each operator has its
backward and spreads rows over OpenMP threads. Layers the kernels do not cover (`unfusable`: pre-norm, another
activation) run Paddle's forward; `--bf16` refuses an encoder with such layers (bf16_cpu.check_encoder).

Dropout masks come from one seed per call drawn from Paddle's CPU generator, so `paddle.seed` and
the gradient cache's RNG replay decide them: the dropout-on bit-for-bit tests hold with these
kernels on. They are not Paddle's (or fast_cpu's) masks.

Built once with `paddle.utils.cpp_extension` (g++ -O3 -fopenmp -fno-trapping-math, for the vector width of
the CPU that runs them: AVX-512 where the CPU has it, else AVX2 + FMA) into DPR_PADDLE_HOME/ops/fused-<hash of
the source and its headers, Paddle's version and the flags>, on first use; the instruction set is in the hash, so a
build is never loaded on a CPU that lacks its instructions (DPR_PADDLE_MAX_ISA builds for an older host's set). A
machine without a compiler (or a failed build) runs the eager path, saying so in one log line.

Whether they run is measured, once per CPU model and layer shape (`use_fused`): one training layer step
(forward + backward, dropout on, a quarter of the tokens padding) is timed fused and eager, and the faster
runs, so the project is never slower than its own eager path on any CPU. The choice is cached beside the
build and logged in one line. `DPR_PADDLE_FUSED=1` or `=0` forces either; `--bf16` always runs them. The per-head
GEMM is chosen the same way (`DPR_PADDLE_HEADS_GEMM=ours|library` forces it). Only
training on CPU uses them: evaluation, export and accelerators run Paddle's own layers (on a GPU, Paddle's fused
kernels are the right ones). An eval-mode forward with the bfloat16 GEMMs was measured for encoding and lost to
Paddle Inference's bfloat16 (docs/benchmarks.md section 14), so encoding keeps its backends.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import shutil
import subprocess
import sys
import types
import warnings
from typing import Callable, NamedTuple, Tuple

import numpy as np

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..common.errors import DprError
from ..common.runtime import cpu_info, cpu_key, measured_choice, time_alternating

logger = logging.getLogger(__name__)

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fused_ops.cc")
_SEED_HIGH = 2**31 - 1
_state = {"tried": False, "ops": None, "build_dir": None, "choices": {}}
counts = {"fused_layers": 0}  # layer forwards that ran fused (tests check the kernels really ran)


def enabled() -> bool:
    """Whether the fused kernels may be used (DPR_PADDLE_FUSED is not 0)."""
    return os.environ.get("DPR_PADDLE_FUSED") != "0"


AVX512 = ("avx512f", "avx512bw", "avx512vl", "avx512dq")


def cflags() -> list:
    """The compiler flags for this CPU: its widest vector extension that the kernels use (AVX-512, else
    AVX2 + FMA, else the compiler's baseline)."""
    flags = cpu_info()[1]
    if all(f in flags for f in AVX512):
        # g++ prefers 256-bit vectors on AVX-512 cores unless told otherwise
        vector = ["-mavx2", "-mfma"] + [f"-m{f}" for f in AVX512] + ["-mprefer-vector-width=512"]
    elif "avx2" in flags and "fma" in flags:
        vector = ["-mavx2", "-mfma"]
    else:
        vector = []
    # -fno-trapping-math: without it g++ keeps every loop that calls fast_exp / fast_erf scalar (their clamps and
    # selects could raise a floating-point exception that the vector code would raise elsewhere), and GELU and
    # softmax ran at 0.6 G elements/s instead of 5. Nothing here reads the exception flags; the values are the
    # same operations in the same order (docs/benchmarks.md section 14)
    return ["-O3", "-fopenmp", "-fno-trapping-math"] + vector


def vector_width() -> str:
    """The instruction set the kernels are built for on this CPU, for log lines and benchmarks."""
    flags = cflags()
    return "AVX-512" if "-mavx512f" in flags else "AVX2" if "-mavx2" in flags else "baseline"


def ops():
    """The built operators (a module), or None: switched off, no compiler, or the build failed."""
    if _state["tried"]:
        return _state["ops"]
    _state["tried"] = True
    if not enabled():
        return None
    if not (shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")):
        logger.info("no C++ compiler: fused CPU training kernels are off; Paddle's eager kernels run")
        return None
    _state["ops"] = _build()
    return _state["ops"]


def _build():
    return build_extension(SOURCE, "fused", "the fused CPU training kernels", _state)


def build_extension(source: str, kind: str, what: str, state: dict, ldflags: tuple = (),
                    without: str = "Paddle's own kernels run"):
    """The custom operators of `source` built for this CPU (cflags) and imported as a module, or None (with
    one warning that ends with `without`, what happens instead) when the build fails. Built once into
    DPR_PADDLE_HOME/ops/<kind>-<hash of the source and its headers, Paddle's version and the flags>;
    `state["build_dir"]` is set to that directory."""
    from ..common.files import cache_root, process_lock

    ldflags = list(ldflags) + openmp_ldflags()
    flags = cflags() + ldflags
    key = _source_bytes(source) + paddle.__version__.encode() + " ".join(flags).encode()
    digest = hashlib.sha1(key).hexdigest()[:12]
    name = f"dpr_{kind}_{digest}"
    build_dir = os.path.join(cache_root(), "ops", f"{kind}-{digest}")
    os.makedirs(build_dir, exist_ok=True)
    state["build_dir"] = build_dir
    try:
        with process_lock(build_dir + ".lock"):  # processes starting at once build once
            if not os.path.exists(os.path.join(build_dir, name, name + ".so")):
                _compile(name, source, build_dir, what, ldflags)
        return _import(name, os.path.join(build_dir, name))
    except Exception as e:  # noqa: BLE001 - any build failure means: run without them
        lines = str(e).strip().splitlines()
        logger.warning("%s could not be built (%s); %s", what, lines[-1][:300] if lines else type(e).__name__,
                       without)
        return None


def _source_bytes(source: str) -> bytes:
    """`source` and every header beside it (the kernels include bf16_round.h), so that editing a header
    builds anew instead of loading a stale build."""
    folder = os.path.dirname(source)
    paths = [source] + sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".h"))
    data = b""
    for path in paths:
        with open(path, "rb") as f:
            data += os.path.basename(path).encode() + b"\0" + f.read()
    return data


def _compile(name: str, source: str, build_dir: str, what: str, ldflags: list) -> None:
    """paddle.utils.cpp_extension.load in a child process whose output is kept: its compiler runs in a
    further process that imports Paddle, whose warnings would otherwise reach the user's console."""
    logger.info("building %s for %s (once; cached in %s)", what, vector_width(), build_dir)
    code = ("from paddle.utils.cpp_extension import load\n"
            f"load(name={name!r}, sources=[{source!r}], extra_cxx_cflags={cflags()!r}, "
            f"extra_ldflags={ldflags!r}, build_directory={build_dir!r}, verbose=False)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "error" in line.lower()]
        raise RuntimeError((errors or (proc.stdout + proc.stderr).splitlines() or ["unknown error"])[-1])


def _import(name: str, so_dir: str):
    """The built operators as a module (no compiler run)."""
    quiet = logging.getLogger("paddle.utils.cpp_extension.extension_utils")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # "No ccache found" when the module is first imported
        from paddle.utils.cpp_extension import extension_utils

        loggers = {quiet, getattr(extension_utils, "logger", quiet)}
        levels = [(lg, lg.level) for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.WARNING)  # "using custom operator only"
        try:
            return extension_utils._import_module_from_library(name, so_dir, False)
        finally:
            for lg, level in levels:
                lg.setLevel(level)


def openmp_ldflags() -> list:
    """Link the kernels' OpenMP calls to the Intel OpenMP runtime Paddle ships (libiomp5 also serves the
    GOMP_* entry points g++ emits): one thread pool with MKL's. With GNU libgomp beside it, each pool's
    threads spin after their parallel regions and steal the 2 cores from the other (measured: a cached
    chunk 14 % slower than without fusion, and 6 % faster with GOMP_SPINCOUNT=0)."""
    libs = os.path.join(os.path.dirname(paddle.__file__), "libs")
    if os.path.exists(os.path.join(libs, "libiomp5.so")):
        return [f"-L{libs}", "-liomp5", f"-Wl,-rpath,{libs}"]
    return ["-fopenmp"]


def _seed(p: float) -> int:
    """One draw from Paddle's generator per dropout call (none when nothing is dropped)."""
    return int(paddle.randint(0, _SEED_HIGH, [1]).item()) if p > 0 else 0


def bias_gelu(x: paddle.Tensor, bias: paddle.Tensor) -> paddle.Tensor:
    """GELU(x + bias) (exact, erf), x [..., H], bias [H]."""
    return ops().dpr_bias_gelu(x, bias)


def bias_dropout_residual_ln(x, bias, residual, norm: nn.LayerNorm, p: float) -> paddle.Tensor:
    """norm(residual + dropout(x + bias, p)) for x, residual [..., H] (upscale_in_train dropout)."""
    out = ops().dpr_bias_dropout_residual_ln(x, bias, residual, norm.weight, norm.bias, _seed(p), float(p),
                                             float(norm._epsilon))
    return out[0]


def softmax_dropout(scores, mask, scale: float, p: float) -> paddle.Tensor:
    """dropout(softmax(scores * scale + mask), p) for scores [B, heads, Lq, Lk] and an additive mask of
    B x Lk values ([B, 1, 1, Lk])."""
    return ops().dpr_softmax_dropout(scores, mask, float(scale), _seed(p), float(p))[0]


def unfusable(layer: nn.TransformerEncoderLayer) -> str:
    """Why the fused forward cannot run layers built like `layer` (e.g. "pre-norm"), or "" when it can."""
    attn = layer.self_attn
    if layer.normalize_before:
        return "pre-norm (normalize_before)"
    if layer.activation is not F.gelu:
        return f"activation {getattr(layer.activation, '__name__', layer.activation)}, not GELU"
    if any(getattr(d, "mode", "upscale_in_train") != "upscale_in_train"
           for d in (layer.dropout, layer.dropout1, layer.dropout2)):
        return "dropout mode downscale_in_infer"
    if attn.need_weights:
        return "attention weights returned"
    if not attn.kdim == attn.vdim == attn.embed_dim:
        return "key/value widths other than the hidden size"
    return ""


def _eligible(layer, src, src_mask, cache) -> bool:
    """Whether this call can run fused: a training forward on CPU in float32 with BERT's [B, 1, 1, L] mask."""
    return (layer.training and cache is None and src.place.is_cpu_place() and src.dtype == paddle.float32
            and not unfusable(layer)
            and (src_mask is None or (src_mask.dtype == paddle.float32 and src_mask.shape[1] == 1
                                      and src_mask.shape[2] == 1 and src_mask.shape[0] == src.shape[0]))
            and ops() is not None)


def heads_matmul(a: paddle.Tensor, b: paddle.Tensor, transpose_b: bool = False, bf16: bool = False) -> paddle.Tensor:
    """Attention's per-head a @ b (or a @ bᵀ), float32 accumulation, with bfloat16-rounded inputs if `bf16`:
    a [..., M, K], b [..., K, N] (or [..., N, K]) -> [..., M, N]. fused_ops.cc's own kernel, which rounds while
    it packs, where a library GEMM needed a separate rounding pass; the same kernel in both precisions."""
    return ops().dpr_heads_matmul(a, b, transpose_b, bf16)


def _paddle_heads(a: paddle.Tensor, b: paddle.Tensor, transpose_b: bool = False) -> paddle.Tensor:
    """Attention's per-head a @ b (or a @ bᵀ) by Paddle's batched matmul (MKL): the library's float32 candidate."""
    return paddle.matmul(a, b, transpose_y=transpose_b)


class Gemms(NamedTuple):
    """One precision's GEMMs for the fused layers: the weight GEMM x [.., K] @ w [K, N], and two candidates for
    attention's per-head a @ b (or a @ bᵀ), ours and a library's, of which `heads_gemm` runs the faster."""
    precision: str  # in log lines and the measured choice's key
    linear: Callable
    ours: Callable
    library: Tuple[str, Callable]  # (its name, the function)


F32 = Gemms("float32", paddle.matmul, heads_matmul, ("Paddle's batched matmul (MKL)", _paddle_heads))


def heads_gemm(layer: nn.TransformerEncoderLayer, gemms: Gemms) -> Callable:
    """The per-head GEMM that layers shaped like `layer` run in `gemms`' precision: `gemms.ours` or
    `gemms.library`, whichever a chunk's attention GEMMs (forward and backward) ran faster on this CPU, measured
    once per CPU model, instruction set, precision and head shape, cached beside the build and logged in one line.
    `DPR_PADDLE_HEADS_GEMM=ours|library` forces either. Both are exact for the gradient cache: each gives the same
    bits whenever it runs the same shapes on the same threads."""
    forced = os.environ.get("DPR_PADDLE_HEADS_GEMM", "")
    if forced:
        if forced not in ("ours", "library"):  # a mistyped force would otherwise measure without a word
            raise DprError(f"DPR_PADDLE_HEADS_GEMM={forced!r} is not ours or library; unset it to measure")
        return gemms.ours if forced == "ours" else gemms.library[1]
    shape = (gemms.precision, layer.self_attn.num_heads, layer.self_attn.head_dim)
    if shape not in _state["choices"]:
        _state["choices"][shape] = _measured_heads_choice(gemms, shape)
    return gemms.ours if _state["choices"][shape] else gemms.library[1]


def _measured_heads_choice(gemms: Gemms, shape) -> bool:
    model, _ = cpu_info()
    path = os.path.join(_state["build_dir"], f"heads-{cpu_key(' '.join(cflags()), *shape)}.json")

    def measure() -> dict:
        ours_ms, library_ms = (1000 * t for t in _time_heads([gemms.ours, gemms.library[1]], *shape[1:]))
        return {"ours": ours_ms <= library_ms, "ours_ms": round(ours_ms, 2), "library_ms": round(library_ms, 2),
                "library": gemms.library[0], "cpu": model, "shape": list(shape)}

    choice, fresh = measured_choice(path, measure, lambda c: all(k in c for k in ("ours", "ours_ms", "library_ms")))
    if fresh:
        logger.info("attention's per-head GEMMs in %s: ours %.1f ms against %.1f ms for %s per chunk on %s; %s run "
                    "(measured once, cached in %s; DPR_PADDLE_HEADS_GEMM=ours or library forces)", shape[0],
                    choice["ours_ms"], choice["library_ms"], gemms.library[0], model,
                    "ours" if choice["ours"] else "the library's", path)
    return bool(choice["ours"])


def _time_heads(candidates, heads: int, head_dim: int, batch: int = 16, length: int = 128, repeats: int = 5):
    """Seconds (median of `repeats`, alternated) of each candidate per-head GEMM over a chunk's attention:
    q·kᵀ and probs·v, forward and both input gradients, for `batch` sequences of `length` tokens. The inputs
    come from numpy, so Paddle's random state is not touched."""
    rng = np.random.default_rng(0)

    def tensor(*dims):
        t = paddle.to_tensor(rng.standard_normal([batch, heads, *dims]).astype("float32"))
        t.stop_gradient = False
        return t

    q, k, v, probs = tensor(length, head_dim), tensor(length, head_dim), tensor(length, head_dim), tensor(length, length)
    up_scores, up_context = tensor(length, length), tensor(length, head_dim)

    def chunk(gemm):
        def call():
            paddle.grad([gemm(q, k, True)], [q, k], [up_scores])  # scores [B, heads, L, L]
            paddle.grad([gemm(probs, v, False)], [probs, v], [up_context])  # context [B, heads, L, head_dim]
        return call

    return time_alternating([chunk(g) for g in candidates], repeats)


def _layer_forward(self, src, src_mask=None, cache=None, output_attentions=False):
    """`nn.TransformerEncoderLayer.forward` (post-norm, GELU) with the fused kernels; Paddle's own
    forward wherever they do not apply. `output_attentions` is the argument PaddleNLP adds to the class's
    forward (a patch without it draws PaddleNLP's warning); asking for attentions takes Paddle's path.
    The GEMMs are the layer's `_dpr_gemms` (set by `speed_up`: float32 by default, bf16_cpu's with --bf16)."""
    src_mask = nn.layer.transformer._convert_attention_mask(src_mask, src.dtype)
    if output_attentions or not _eligible(self, src, src_mask, cache):
        extra = {"output_attentions": True} if output_attentions else {}
        return type(self).forward(self, src, src_mask, cache, **extra)
    counts["fused_layers"] += 1
    linear, bmm = self._dpr_gemms  # set wherever this forward is installed, with the measured per-head GEMM
    attn = self.self_attn
    # one GEMM for q, k and v ([H, 3H] weights); the split adds their biases: [B, heads, L, head_dim] each
    qkv_weight = paddle.concat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight], axis=1)
    qkv_bias = paddle.concat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
    q, k, v = ops().dpr_split_qkv(linear(src, qkv_weight), qkv_bias, attn.num_heads)
    scores = bmm(q, k, True)  # [B, heads, L, L]
    mask = src_mask if src_mask is not None else paddle.zeros([src.shape[0], 1, 1, src.shape[1]], src.dtype)
    probs = softmax_dropout(scores, mask, attn.head_dim**-0.5, attn.dropout)
    context = ops().dpr_merge_heads(bmm(probs, v))  # [B, L, H]
    src = bias_dropout_residual_ln(linear(context, attn.out_proj.weight), attn.out_proj.bias, src,
                                   self.norm1, self.dropout1.p)
    inner = bias_gelu(linear(src, self.linear1.weight), self.linear1.bias)  # [B, L, 4H]
    if self.dropout.p > 0:  # activation dropout: BERT has none, `--dropout` sets one (model.set_dropout)
        inner = self.dropout(inner)
    return bias_dropout_residual_ln(linear(inner, self.linear2.weight), self.linear2.bias, src,
                                    self.norm2, self.dropout2.p)


def use_fused(layer: nn.TransformerEncoderLayer) -> bool:
    """Whether layers shaped like `layer` train faster fused than eager on this CPU: DPR_PADDLE_FUSED=1|0
    forces the answer; otherwise it is measured once per CPU model, instruction set and layer shape, cached
    beside the build and logged in one line."""
    if not enabled() or ops() is None:
        return False
    if os.environ.get("DPR_PADDLE_FUSED") == "1":
        return True
    shape = (layer.self_attn.embed_dim, layer.self_attn.num_heads, layer.linear1.weight.shape[1])
    if shape not in _state["choices"]:
        _state["choices"][shape] = _measured_choice(shape)
    return _state["choices"][shape]


def _measured_choice(shape: Tuple[int, int, int]) -> bool:
    model, _ = cpu_info()
    path = os.path.join(_state["build_dir"], f"choice-{cpu_key(' '.join(cflags()), shape)}.json")

    def measure() -> dict:
        fused_ms, eager_ms = (1000 * t for t in _time_layer_step(*shape))
        return {"fused": fused_ms < eager_ms, "fused_ms": round(fused_ms, 2), "eager_ms": round(eager_ms, 2),
                "cpu": model, "vector": vector_width(), "shape": list(shape)}

    choice, fresh = measured_choice(path, measure, lambda c: all(k in c for k in ("fused", "fused_ms", "eager_ms")))
    if fresh:
        logger.info("fused CPU training kernels (%s): %.1f ms against %.1f ms eager per layer step on %s; %s run "
                    "(measured once, cached in %s; DPR_PADDLE_FUSED=1 or 0 forces)", vector_width(),
                    choice["fused_ms"], choice["eager_ms"], model, "they" if choice["fused"] else
                    "Paddle's eager kernels", path)
    return bool(choice["fused"])


def _time_layer_step(hidden: int, heads: int, ffn: int, batch: int = 8, length: int = 128, repeats: int = 5):
    """(fused, eager) seconds of one training step of a fresh layer of this shape: forward + backward, dropout
    0.1, a quarter of each sequence padding (median of `repeats`, alternated). Paddle's random state is put
    back afterwards, so measuring changes no training run's masks or weights."""
    from . import fast_cpu

    rng_state = paddle.get_rng_state()
    try:
        layer = fast_cpu.speed_up(nn.TransformerEncoderLayer(hidden, heads, ffn, dropout=0.1, activation="gelu",
                                                             attn_dropout=0.1, act_dropout=0.0))
        layer._dpr_gemms = (F32.linear, heads_gemm(layer, F32))  # fused as it would run: with the chosen heads GEMM
        layer.train()
        x = paddle.randn([batch, length, hidden])
        x.stop_gradient = False
        mask = paddle.zeros([batch, 1, 1, length])
        mask[:, :, :, length - length // 4:] = -1e4  # padding, as BERT's additive attention mask has it

        def step(forward):
            def call():
                forward(layer, x, mask).sum().backward()
                x.clear_gradient()
                layer.clear_gradients()
            return call

        return tuple(time_alternating([step(_layer_forward), step(nn.TransformerEncoderLayer.forward)], repeats))
    finally:
        paddle.set_rng_state(rng_state)


def speed_up(encoder: nn.Layer, gemms: Gemms = None) -> nn.Layer:
    """Route the training forward of each `nn.TransformerEncoderLayer` in `encoder` through the fused
    kernels (in place; returns it) where `use_fused` says they are faster here, with float32 GEMMs. A no-op when
    they are off or cannot be built. `gemms` (bf16_cpu.GEMMS) replaces the float32 GEMMs and puts every layer
    on the fused path, whatever the measured choice: those GEMMs exist only there. Either way each layer's
    per-head GEMM is `heads_gemm`'s choice."""
    if not enabled() or ops() is None:
        return encoder
    for layer in encoder.sublayers(include_self=True):
        if type(layer) is not nn.TransformerEncoderLayer:
            continue
        if "forward" not in vars(layer) and (gemms is not None or use_fused(layer)):
            layer.forward = types.MethodType(_layer_forward, layer)
        elif gemms is None:
            continue  # eager here; or already fused, and a second speed_up without new GEMMs keeps its own
        chosen = gemms or F32
        layer._dpr_gemms = (chosen.linear, heads_gemm(layer, chosen))
    return encoder
