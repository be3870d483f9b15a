"""Fused CPU kernels for training transformer encoders (fused_ops.cc, Paddle custom operators).

A BERT/ERNIE layer (`nn.TransformerEncoderLayer`, post-norm) trained on CPU runs, per layer:
- attention: q, k and v from one GEMM, split into heads with their biases (`dpr_split_qkv`),
  dropout(softmax(q k^T * scale + mask)) as one operator (`dpr_softmax_dropout`), and the heads
  merged back in one parallel copy (`dpr_merge_heads`);
- LayerNorm(residual + dropout(x W + b)) after the attention's output projection and after the
  feed-forward's second linear, with the bias folded in (`dpr_bias_dropout_residual_ln`);
- GELU(x W1 + b1) with the bias folded in (`dpr_bias_gelu`).
The GEMMs stay Paddle's (MKL). Each operator has its backward and spreads rows over OpenMP threads.

Dropout masks come from one seed per call drawn from Paddle's CPU generator, so `paddle.seed` and
the gradient cache's RNG replay decide them: the dropout-on bit-for-bit tests hold with these
kernels on. They are not Paddle's (or fast_cpu's) masks.

Built once with `paddle.utils.cpp_extension` (g++, -O3 -mavx2 -mfma -fopenmp) into
DPR_PADDLE_HOME/ops/fused-<hash of the source, Paddle's version and the flags>, on first use; a machine
without a compiler (or a failed build) runs the eager path, saying so in one log line.
`DPR_PADDLE_FUSED=0` turns them off. Only training on CPU in float32 uses them: evaluation,
export and accelerators run Paddle's own layers (on a GPU, Paddle's fused kernels are the right ones).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import shutil
import types
import warnings

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

logger = logging.getLogger(__name__)

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fused_ops.cc")
CFLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp"]
_SEED_HIGH = 2**31 - 1
_state = {"tried": False, "ops": None}
counts = {"fused_layers": 0}  # layer forwards that ran fused (tests check the kernels really ran)


def enabled() -> bool:
    """Whether the fused kernels may be used (DPR_PADDLE_FUSED is not 0)."""
    return os.environ.get("DPR_PADDLE_FUSED") != "0"


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
    from ..common.files import cache_root, process_lock

    flags = " ".join(CFLAGS + openmp_ldflags()).encode()
    with open(SOURCE, "rb") as f:
        digest = hashlib.sha1(f.read() + paddle.__version__.encode() + flags).hexdigest()[:12]
    build_dir = os.path.join(cache_root(), "ops", f"fused-{digest}")
    os.makedirs(build_dir, exist_ok=True)
    ext_logger = logging.getLogger("paddle.utils.cpp_extension.extension_utils")
    try:
        from paddle.utils.cpp_extension import extension_utils, load

        quiet = [ext_logger, getattr(extension_utils, "logger", ext_logger)]
        levels = [lg.level for lg in quiet]
        for lg in quiet:
            lg.setLevel(logging.WARNING)  # "using custom operator only" on every load
        with process_lock(build_dir + ".lock"):  # processes starting at once build once
            if not os.path.exists(os.path.join(build_dir, "built")):
                logger.info("building the fused CPU training kernels (once; cached in %s)", build_dir)
            # Paddle prints "Compiling user custom op ..." and warns about ccache: neither is for the user
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = load(name=f"dpr_fused_{digest}", sources=[SOURCE], extra_cxx_cflags=CFLAGS,
                              extra_ldflags=openmp_ldflags(), build_directory=build_dir, verbose=False)
            open(os.path.join(build_dir, "built"), "w").close()
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
        return module
    except Exception as e:  # noqa: BLE001 - any build failure means: run the eager kernels
        logger.warning("the fused CPU training kernels could not be built (%s); Paddle's eager kernels run",
                       str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__)
        return None


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


def _eligible(layer, src, src_mask, cache) -> bool:
    attn = layer.self_attn
    return (layer.training and cache is None and not layer.normalize_before and src.place.is_cpu_place()
            and src.dtype == paddle.float32 and layer.activation is F.gelu and layer.dropout.p == 0
            and all(getattr(d, "mode", "upscale_in_train") == "upscale_in_train" for d in (layer.dropout1, layer.dropout2))
            and not attn.need_weights and attn.kdim == attn.vdim == attn.embed_dim
            and (src_mask is None or (src_mask.dtype == paddle.float32 and src_mask.shape[1] == 1
                                      and src_mask.shape[2] == 1 and src_mask.shape[0] == src.shape[0]))
            and ops() is not None)


def _layer_forward(self, src, src_mask=None, cache=None):
    """`nn.TransformerEncoderLayer.forward` (post-norm, GELU) with the fused kernels; Paddle's own
    forward wherever they do not apply."""
    src_mask = nn.layer.transformer._convert_attention_mask(src_mask, src.dtype)
    if not _eligible(self, src, src_mask, cache):
        return type(self).forward(self, src, src_mask, cache)
    counts["fused_layers"] += 1
    attn = self.self_attn
    # one GEMM for q, k and v ([H, 3H] weights); the split adds their biases: [B, heads, L, head_dim] each
    qkv_weight = paddle.concat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight], axis=1)
    qkv_bias = paddle.concat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
    q, k, v = ops().dpr_split_qkv(paddle.matmul(src, qkv_weight), qkv_bias, attn.num_heads)
    scores = paddle.matmul(q, k, transpose_y=True)  # [B, heads, L, L]
    mask = src_mask if src_mask is not None else paddle.zeros([src.shape[0], 1, 1, src.shape[1]], src.dtype)
    probs = softmax_dropout(scores, mask, attn.head_dim**-0.5, attn.dropout)
    context = ops().dpr_merge_heads(paddle.matmul(probs, v))  # [B, L, H]
    src = bias_dropout_residual_ln(paddle.matmul(context, attn.out_proj.weight), attn.out_proj.bias, src,
                                   self.norm1, self.dropout1.p)
    inner = bias_gelu(paddle.matmul(src, self.linear1.weight), self.linear1.bias)  # [B, L, 4H]
    return bias_dropout_residual_ln(paddle.matmul(inner, self.linear2.weight), self.linear2.bias, src,
                                    self.norm2, self.dropout2.p)


def speed_up(encoder: nn.Layer) -> nn.Layer:
    """Route the training forward of each `nn.TransformerEncoderLayer` in `encoder` through the fused
    kernels (in place; returns it). A no-op when they are off or cannot be built."""
    if not enabled() or ops() is None:
        return encoder
    for layer in encoder.sublayers(include_self=True):
        if type(layer) is nn.TransformerEncoderLayer and "forward" not in vars(layer):
            layer.forward = types.MethodType(_layer_forward, layer)
    return encoder
