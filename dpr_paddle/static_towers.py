"""Each tower's training forward as one static program (`paddle.jit.to_static`), for the CPU.

Profiling the training step showed half of a chunk's time outside the matmuls, in Paddle's eager
dispatch of ~400 small operators and their backward nodes. Run as one PIR program (the same
operators, dispatched by the static executor) a MiniLM chunk of 16 x 128 in train mode takes 1.97 s
instead of 2.88 s with fast_cpu's eager kernels (bench/train_step.py, docs/benchmarks.md section 2).

Exactness is kept: dropout inside the program draws from Paddle's generator when it runs, so the
gradient cache's RNG replay (grad_cache.RandContext) reproduces every mask, and gradients flow into
the model's own parameters (tests/test_grad_cache.py runs every exactness test on these towers too).
The program is plain PaddleNLP (fast_cpu's numpy dropout cannot run inside a graph), so masks differ
from the eager fast_cpu path's: same distribution, other draws.
"""
from __future__ import annotations

import warnings
from typing import Callable, Dict

import paddle
import paddle.nn as nn

INPUTS = ("input_ids", "token_type_ids", "attention_mask")


class _Tower(nn.Layer):
    """One tower of a BiEncoder as a layer of its own: to_static converts this forward and leaves
    the BiEncoder's eager (evaluation, export)."""

    def __init__(self, model: nn.Layer, tower: str):
        super().__init__()
        self.model = model
        self.tower = tower

    def forward(self, input_ids, token_type_ids, attention_mask):
        return self.model(input_ids, token_type_ids, attention_mask, tower=self.tower)  # [B, D]


def static_towers(model: nn.Layer, towers=("question", "context")) -> Dict[str, Callable[..., paddle.Tensor]]:
    """{tower: encode(input_ids=, token_type_ids=, attention_mask=) -> [B, D]} as static programs.

    Shapes are dynamic ([None, None] int64 inputs), so every chunk length reuses one program. In
    eval mode the model's eager forward runs instead: Paddle builds eval programs without a backward.
    """
    from paddle.static import InputSpec

    # tracing asks PaddleNLP's layers for tensors' `place`, which graph values lack; Paddle warns
    # once per call site and carries on (None), which those layers handle
    warnings.filterwarnings("ignore", message="Tensor do not have 'place' interface")
    spec = [InputSpec([None, None], "int64", name) for name in INPUTS]
    out = {}
    for tower in towers:
        # two programs per tower: Paddle keeps the first program traced for a layer, and one traced
        # under no_grad (the cache's first step) has no backward, so the step with a graph needs its own
        with_grad = paddle.jit.to_static(_Tower(model, tower), input_spec=spec, full_graph=True)
        no_grad = paddle.jit.to_static(_Tower(model, tower), input_spec=spec, full_graph=True)

        def encode(input_ids, token_type_ids, attention_mask, _tower=tower, _grad=with_grad, _no_grad=no_grad):
            if not model.training:
                return model(input_ids, token_type_ids, attention_mask, tower=_tower)
            program = _grad if paddle.is_grad_enabled() else _no_grad
            return program(input_ids, token_type_ids, attention_mask)

        out[tower] = encode
    return out
