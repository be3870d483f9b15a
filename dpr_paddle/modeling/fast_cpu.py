"""Faster CPU training for Paddle transformer encoders, without changing what is computed.

Profiling a MiniLM forward + backward (16 x 128 tokens, dropout 0.1) on the CPU wheel showed
two kernels far slower than the arithmetic they do (`bench/train_step.py --profile`):

* dropout: Paddle draws one `std::mt19937_64` number per element (~13 ns/element; 42 ms for one
  [16, 12, 128, 128] attention-probability tensor). Here the keep-mask comes from numpy's PCG64
  (~3 ns/element) seeded by one draw from Paddle's CPU generator, so the masks still follow
  `paddle.seed` and the gradient cache's RNG replay (`grad_cache.RandContext`) reproduces them.
* the attention-mask add: a [B, 1, 1, L] mask broadcast over [B, heads, L, L] scores takes
  ~20-30 ms per layer; the mask is expanded once per forward and added with equal shapes.

`speed_up(encoder)` swaps these in for training on CPU only: in eval mode and on accelerators
every patched layer runs Paddle's own code, so exported inference models are unchanged.
`DPR_PADDLE_FAST_CPU=0` turns it off (for before/after measurements, or to get Paddle's own
dropout masks).
"""
from __future__ import annotations

import os
import types

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

_SEED_HIGH = 2**31 - 1  # paddle.randint takes int32 bounds


def dropout(x: paddle.Tensor, p: float, training: bool = True) -> paddle.Tensor:
    """`F.dropout(x, p, mode="upscale_in_train")`, with the CPU mask drawn by numpy.

    One int is drawn from Paddle's generator per call, so the masks are a function of the
    Paddle random state, as with Paddle's kernel (but not the same masks).
    """
    if not training or p == 0.0:
        return x
    if not x.place.is_cpu_place() or p >= 1.0:
        return F.dropout(x, p, training=True, mode="upscale_in_train")
    seed = int(paddle.randint(0, _SEED_HIGH, [1]).item())
    keep = np.random.Generator(np.random.PCG64(seed)).random(x.shape, dtype=np.float32) >= p
    scale = keep.astype(np.float32)
    scale *= 1.0 / (1.0 - p)  # upscale_in_train: kept values / (1 - p)
    return x * paddle.to_tensor(scale, dtype=x.dtype)


class Dropout(nn.Dropout):
    """`nn.Dropout` (upscale_in_train) with the fast CPU mask; still an `nn.Dropout`, so
    `model.set_dropout` finds it."""

    def forward(self, x):
        if self.mode != "upscale_in_train" or self.axis is not None:
            return super().forward(x)
        return dropout(x, self.p, self.training)


def _attention_forward(self, query, key=None, value=None, attn_mask=None, cache=None):
    """`nn.MultiHeadAttention.forward` for self-attention training on CPU (see module doc)."""
    if (not self.training or cache is not None or self.need_weights or not query.place.is_cpu_place()
            or (key is not None and key is not query) or (value is not None and value is not query)):
        return type(self).forward(self, query, key, value, attn_mask, cache)
    q, k, v = self._prepare_qkv(query, query, query, None)  # [B, heads, L, head_dim] each
    scores = paddle.matmul(q * (self.head_dim**-0.5), k, transpose_y=True)  # [B, heads, L, L]
    if attn_mask is not None:
        scores = scores + self._expanded_mask(attn_mask, scores)
    weights = dropout(F.softmax(scores), self.dropout, True)
    out = paddle.matmul(weights, v).transpose([0, 2, 1, 3])  # [B, L, heads, head_dim]
    return self.out_proj(out.reshape([0, 0, self.embed_dim]))


class _MaskCache:
    """The last additive mask expanded to the scores' shape, shared by an encoder's layers:
    the same [B, 1, 1, L] tensor arrives at every layer of one forward."""

    def __init__(self):
        self.source, self.expanded = None, None

    def __call__(self, attn_mask, scores):
        if attn_mask.shape == scores.shape:
            return attn_mask
        if self.source is not attn_mask or self.expanded.shape != scores.shape:
            # bool/int masks are converted as nn.MultiHeadAttention converts them
            additive = nn.layer.transformer._convert_attention_mask(attn_mask, scores.dtype)
            self.source, self.expanded = attn_mask, additive.expand(scores.shape)
        return self.expanded


def speed_up(encoder: nn.Layer) -> nn.Layer:
    """Swap in the fast CPU dropout and self-attention mask handling inside `encoder`, in
    place; returns it. Safe to call twice; a no-op when DPR_PADDLE_FAST_CPU=0."""
    if os.environ.get("DPR_PADDLE_FAST_CPU") == "0":
        return encoder
    masks = _MaskCache()
    for parent in encoder.sublayers(include_self=True):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                fast = Dropout(child.p, axis=child.axis, mode=child.mode)
                fast.training = child.training
                setattr(parent, name, fast)
        if isinstance(parent, nn.MultiHeadAttention) and "forward" not in vars(parent):
            parent.forward = types.MethodType(_attention_forward, parent)
            parent._expanded_mask = masks
    return encoder
