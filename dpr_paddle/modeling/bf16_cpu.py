"""bfloat16 GEMMs for training on CPUs with AMX or AVX512-BF16 (bf16_ops.cc, Paddle custom operators).

Paddle 3.3.1's CPU build has no bfloat16 `matmul` in dygraph, so `paddle.amp.auto_cast(dtype="bfloat16")`
has nothing to cast to on a CPU. Here the encoder layers' GEMMs, forward and backward, take bfloat16
inputs: the inputs are rounded to bfloat16, products are accumulated in float32 and the outputs are float32.
The weight GEMMs (q/k/v, output and feed-forward) go through oneDNN's matmul (the library inside Paddle's
wheel). On AMX oneDNN's "bf16" fpmath mode does the rounding; where oneDNN would ignore that mode
(AVX512-BF16 without AMX, e.g. AMD Zen 4, where it ran float32), the operators round the inputs themselves
and give oneDNN bfloat16 operands, so every CPU computes the same thing. Attention's per-head q·kᵀ and
probs·v are fused_cpu's `heads_matmul`, which rounds as it packs, or oneDNN's batched matmul (AMX kernels on
Intel; elsewhere after a separate rounding pass over both inputs), whichever fused_cpu.heads_gemm measured
faster on this CPU. Everything else (embeddings, softmax, LayerNorm, GELU, dropout, the loss, the
gradient cache's cached gradients, the optimiser and its master weights) stays float32. That is torch's CPU
autocast for a linear layer, less its rounding of the output.

The GEMMs run inside the fused layer (fused_cpu.py), so `--bf16` needs the fused kernels. A chunk's GEMMs
give the same bits each time they run with the same shapes and threads, so the gradient cache's dropout-on
replay stays bit for bit against `graph_reference_step` in this precision (tested); dropout off, a cached
step matches the full-batch step to bfloat16's rounding, not float32's.
"""
from __future__ import annotations

import os

import paddle
import paddle.nn as nn

from ..common.errors import DprError
from ..common.runtime import cpu_info, cpu_name
from . import fused_cpu

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bf16_ops.cc")
HARDWARE = ("amx_bf16", "avx512_bf16")  # either has oneDNN bfloat16 matmul kernels (bf16_ops.cc picks them)
_state = {"tried": False, "ops": None, "build_dir": None}


class Bf16Unavailable(DprError, RuntimeError):
    """bfloat16 training was asked for where it cannot run; the message says why."""


def hardware() -> str:
    """The CPU's bfloat16 extensions among HARDWARE, e.g. "amx_bf16 avx512_bf16", or ""."""
    flags = cpu_info()[1]
    return " ".join(f for f in HARDWARE if f in flags)


def ops():
    """The built operators (a module), or None: no compiler, no oneDNN in this Paddle, or the build failed."""
    if not _state["tried"]:
        _state["tried"] = True
        libs = os.path.join(os.path.dirname(paddle.__file__), "libs")
        if os.path.exists(os.path.join(libs, "libdnnl.so.3")) and fused_cpu.ops() is not None:
            _state["ops"] = fused_cpu.build_extension(SOURCE, "bf16", "the bfloat16 CPU GEMMs", _state,
                                                      (f"-L{libs}", "-l:libdnnl.so.3", f"-Wl,-rpath,{libs}"),
                                                      "--bf16 is refused on this machine")
    return _state["ops"]


def require() -> None:
    """Raise Bf16Unavailable, in one line, unless bfloat16 training can run on this CPU."""
    model = cpu_name()
    if not hardware():
        raise Bf16Unavailable(f"--bf16 on a CPU needs AMX or AVX512-BF16, which {model} lacks (it would run "
                              "float32 GEMMs at float32 speed); train without --bf16")
    if not fused_cpu.enabled():
        raise Bf16Unavailable("--bf16 on a CPU runs inside the fused kernels, which DPR_PADDLE_FUSED=0 turns off")
    if ops() is None:
        raise Bf16Unavailable("--bf16 on a CPU needs the fused kernels and oneDNN (paddle/libs/libdnnl.so.3) "
                              "built as custom operators, which failed on this machine (see the warning above); "
                              "train without --bf16")


def check_encoder(encoder: nn.Layer) -> None:
    """Raise Bf16Unavailable, in one line, unless every transformer layer of `encoder` runs fused: the bfloat16
    GEMMs exist only there, and a layer left on Paddle's path would train in float32 without a word."""
    layers = [layer for layer in encoder.sublayers(include_self=True) if type(layer) is nn.TransformerEncoderLayer]
    name = type(encoder).__name__
    if not layers:
        raise Bf16Unavailable(f"--bf16 on a CPU runs inside Paddle's nn.TransformerEncoderLayer, and this encoder "
                              f"({name}) has none; train without --bf16")
    problems = sorted({fused_cpu.unfusable(layer) for layer in layers} - {""})
    if problems:
        raise Bf16Unavailable(f"--bf16 on a CPU needs post-norm GELU layers, as BERT and ERNIE have; this encoder "
                              f"({name}) has {'; '.join(problems)}; train without --bf16")


def linear(x: paddle.Tensor, weight: paddle.Tensor) -> paddle.Tensor:
    """x @ weight with bfloat16 inputs and float32 accumulation: x [..., K], weight [K, N] -> [..., N]."""
    return ops().dpr_bf16_linear(x, weight)


def bmm(a: paddle.Tensor, b: paddle.Tensor, transpose_b: bool = False) -> paddle.Tensor:
    """a @ b (or a @ bᵀ) per leading index, bfloat16 inputs, float32 accumulation: a [..., M, K],
    b [..., K, N] (or [..., N, K]) -> [..., M, N]. fused_cpu's own kernel."""
    return fused_cpu.heads_matmul(a, b, transpose_b, bf16=True)


def onednn_bmm(a: paddle.Tensor, b: paddle.Tensor, transpose_b: bool = False) -> paddle.Tensor:
    """`bmm` by oneDNN's batched matmul (its AMX kernels where the CPU has them): the same shapes and values."""
    return ops().dpr_bf16_bmm(a, b, transpose_b)


GEMMS = fused_cpu.Gemms("bfloat16", linear, bmm, ("oneDNN's batched matmul", onednn_bmm))  # what --bf16 runs
