"""The optimizer side of a step: AdamW with warmup/decay and clipping, mixed precision on GPU, and the
update that measures the gradient norm before stepping."""
from __future__ import annotations

import logging
import math

import paddle

from ..common.errors import DprError

logger = logging.getLogger(__name__)


def no_decay(structured_name: str) -> bool:
    """Bias and LayerNorm parameters get no weight decay (BERT/DPR convention)."""
    return structured_name.endswith("bias") or "norm" in structured_name.lower()


def build_optimizer(model, learning_rate: float, total_steps: int, warmup_steps: int = 0,
                    weight_decay: float = 0.0, adam_epsilon: float = 1e-8, max_grad_norm: float = 0.0):
    """AdamW with linear warmup then linear decay to 0 over `total_steps`, and global-norm clipping."""
    from paddlenlp.transformers import LinearDecayWithWarmup

    scheduler = LinearDecayWithWarmup(learning_rate, max(total_steps, 1), warmup_steps)
    decay = {p.name for n, p in model.named_parameters() if not no_decay(n)}
    clip = paddle.nn.ClipGradByGlobalNorm(max_grad_norm) if max_grad_norm > 0 else None
    optimizer = paddle.optimizer.AdamW(
        learning_rate=scheduler, parameters=model.parameters(), weight_decay=weight_decay,
        epsilon=adam_epsilon, apply_decay_param_fun=lambda name: name in decay, grad_clip=clip,
    )
    return optimizer, scheduler


def global_grad_norm(parameters) -> float:
    """L2 norm of all gradients together (what ClipGradByGlobalNorm compares to its limit)."""
    sq = [paddle.sum(paddle.square(p.grad.astype("float32"))) for p in parameters if p.grad is not None]
    return float(paddle.sqrt(paddle.add_n(sq))) if sq else 0.0


def on_gpu() -> bool:
    """Whether Paddle runs on a GPU here (a GPU build and a GPU device)."""
    return paddle.is_compiled_with_cuda() and "gpu" in paddle.device.get_device()


def cpu_bf16(fp16: bool, amp_dtype: str, bf16: bool) -> bool:
    """Whether the run asks for bfloat16 on a CPU (--bf16, or --fp16 --amp_dtype bfloat16): the encoders'
    GEMMs then run in bfloat16 inside the fused layers (modeling/bf16_cpu.py), not through AMP."""
    return (bf16 or (fp16 and amp_dtype == "bfloat16")) and not on_gpu()


def setup_amp(fp16: bool, amp_dtype: str, bf16: bool = False):
    """(auto_cast kwargs or None, GradScaler or None): float16/bfloat16 forward on a GPU only (bfloat16 on a
    CPU is `cpu_bf16`'s)."""
    if bf16:
        fp16, amp_dtype = True, "bfloat16"
    if fp16 and on_gpu():
        scaler = paddle.amp.GradScaler(init_loss_scaling=2.0**15) if amp_dtype == "float16" else None
        return {"enable": True, "dtype": amp_dtype, "level": "O1"}, scaler
    if fp16 and amp_dtype != "bfloat16":
        logger.warning("--fp16 ignored: float16 mixed precision needs a GPU build and device (--bf16 runs "
                       "bfloat16 GEMMs on CPUs with AMX or AVX512-BF16)")
    return None, None


class NonFiniteGradient(DprError, FloatingPointError):
    """The gradients hold NaN or inf: the run has diverged (nothing was updated)."""


def apply_update(model, optimizer, scheduler, scaler):
    """Unscale, measure, step and clear the gradients; returns (grad norm, learning rate used). A
    non-finite gradient norm raises NonFiniteGradient before anything is updated (with float16 loss
    scaling, the scaler skips such a step itself and lowers its scale, as AMP means it to)."""
    if scaler:
        scaler.unscale_(optimizer)
    grad_norm = global_grad_norm(model.parameters())
    lr = optimizer.get_lr()
    if not math.isfinite(grad_norm) and not scaler:
        optimizer.clear_grad()
        raise NonFiniteGradient(f"gradient norm {grad_norm}")
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    optimizer.clear_grad()
    return grad_norm, lr
