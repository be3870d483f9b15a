"""The bi-encoder and DPR's in-batch negative log-likelihood loss (no data imports)."""
from __future__ import annotations

import inspect
from typing import Optional

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .pooling import POOLINGS, RecipeError, pool

QUESTION, CONTEXT = "question", "context"


class BiEncoder(nn.Layer):
    """A question encoder and a context encoder; a representation is the pooled vector.

    `pooling` is cls | mean | pooler (pooling.py); `normalize=True` L2-normalises every
    representation (cosine similarity), after the projection if there is one. `shared=True`
    uses one encoder for both towers. `projection_dim > 0` adds a linear layer per tower on top
    of the pooled vector (DPR's `projection_dim`). The model is plain Paddle; training installs
    `fast_cpu` in it (`speed_up_training`).
    """

    def __init__(self, question_model: nn.Layer, ctx_model: Optional[nn.Layer] = None, projection_dim: int = 0,
                 pooling: str = "cls", normalize: bool = False):
        super().__init__()
        if pooling not in POOLINGS:
            raise RecipeError(f"unknown pooling {pooling!r}: choose one of {', '.join(POOLINGS)}")
        self.pooling = pooling
        self.normalize = normalize
        self.question_model = question_model
        self.shared = ctx_model is None or ctx_model is question_model
        if not self.shared:
            self.ctx_model = ctx_model
        self._encoder_kwargs, self._pass_position_ids, self._task_id = encoder_call(question_model)
        self.projection_dim = projection_dim
        if projection_dim > 0:
            hidden = question_model.config.hidden_size
            self.q_proj = nn.Linear(hidden, projection_dim)
            self.p_proj = self.q_proj if self.shared else nn.Linear(hidden, projection_dim)

    def speed_up_training(self, bf16: bool = False) -> "BiEncoder":
        """Swap fast_cpu's CPU training kernels and fused_cpu's fused layers into both encoders (same
        computation, other dropout masks; see fast_cpu.py and fused_cpu.py); with `bf16`, their GEMMs in
        bfloat16 (bf16_cpu.py; raises Bf16Unavailable, in one line, where that cannot run).
        Only training calls this, so a model built for inference or export stays plain Paddle."""
        for encoder in [self.question_model] + ([] if self.shared else [self.ctx_model]):
            speed_up_encoder(encoder, bf16)
        return self

    def tower(self, which: str) -> nn.Layer:
        """The encoder for `question` or `context`."""
        if which == QUESTION or self.shared:
            return self.question_model
        return self.ctx_model

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, tower: str = "question"):
        """Encode one batch with one tower: returns [B, D] representations.

        The default is the literal value of QUESTION: paddle.jit.to_static cannot resolve a
        module-level name in a default argument, and inference.export_static converts this method.
        """
        extra = extra_inputs(input_ids, self._encoder_kwargs, self._pass_position_ids, self._task_id)
        out = self.tower(tower)(input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask,
                                return_dict=True, **extra)
        reps = pool(out.last_hidden_state, attention_mask, out.pooler_output, self.pooling)  # [B, H]
        if self.projection_dim > 0:
            reps = (self.q_proj if tower == QUESTION else self.p_proj)(reps)  # [B, D]
        if self.normalize:
            reps = F.normalize(reps, p=2, axis=-1)  # [B, D], unit length: dot = cosine
        return reps


def _accepts(layer: nn.Layer, name: str) -> bool:
    return name in inspect.signature(layer.forward).parameters


def speed_up_encoder(encoder: nn.Layer, bf16: bool = False) -> nn.Layer:
    """fast_cpu's and fused_cpu's CPU training kernels in `encoder` (in place); with `bf16`, its layers'
    GEMMs in bfloat16 (bf16_cpu.py), after checking, in one line, that this CPU and build can run them. The
    process's malloc keeps freed blocks for reuse (runtime.keep_freed_memory): a step's large tensors were
    otherwise mapped afresh, page fault by page fault, every step."""
    from ..common.runtime import keep_freed_memory
    from . import bf16_cpu, fast_cpu, fused_cpu

    if bf16:
        bf16_cpu.require()
        bf16_cpu.check_encoder(encoder)
    keep_freed_memory()
    fast_cpu.speed_up(encoder)
    return fused_cpu.speed_up(encoder, bf16_cpu.GEMMS if bf16 else None)


def encoder_call(encoder: nn.Layer):
    """(fixed keyword arguments, pass position ids?, task id or None): how every model here calls a
    PaddleNLP encoder (the bi-encoder's towers, the cross-encoder's backbone)."""
    # PaddleNLP encoders build a key/value cache when config.use_cache is set (HF configs such
    # as MiniLM's set it): 12 useless concats per forward for an encoder; turn it off.
    kwargs = {"use_cache": False} if _accepts(encoder, "use_cache") else {}
    # ERNIE builds default position (and task-type) ids with paddle.ones(shape), which fails
    # under paddle.jit.to_static with dynamic shapes; passing them explicitly works for every
    # encoder and gives the same ids (0..L-1; task_id everywhere).
    config = getattr(encoder, "config", None)
    task_id = (int(getattr(config, "task_id", 0)) if getattr(config, "use_task_id", False)
               and _accepts(encoder, "task_type_ids") else None)
    return kwargs, _accepts(encoder, "position_ids"), task_id


def extra_inputs(input_ids, kwargs: dict, pass_position_ids: bool, task_id):
    """The keyword arguments of one encoder call (`encoder_call`'s plan) for `input_ids` [B, L]."""
    extra = dict(kwargs)
    if pass_position_ids:
        ones = paddle.ones_like(input_ids)  # [B, L]
        extra["position_ids"] = paddle.cumsum(ones, axis=1) - ones  # [B, L]: 0..L-1
        if task_id is not None:
            extra["task_type_ids"] = ones * task_id
    return extra


def set_dropout(layer: nn.Layer, p: float) -> None:
    """Set every dropout probability inside `layer` (hidden, attention, activation) to `p`."""
    for sub in layer.sublayers(include_self=True):
        if isinstance(sub, nn.Dropout):
            sub.p = p
        if isinstance(sub, nn.MultiHeadAttention):
            sub.dropout = p  # attention-probability dropout is a float attribute, not a layer


def dot_scores(q_reps: paddle.Tensor, p_reps: paddle.Tensor) -> paddle.Tensor:
    """Question-passage dot products: [Q, D] x [P, D] -> [Q, P]."""
    return paddle.matmul(q_reps, p_reps, transpose_y=True)


def positive_indices(num_questions: int, passages_per_question: int, offset: int = 0) -> paddle.Tensor:
    """Index of each question's positive in the flattened passage list: question i owns
    passages [i*n, (i+1)*n) and the first of them is the positive."""
    return paddle.arange(offset, offset + num_questions, dtype="int64") * passages_per_question


def positive_copies(keys: np.ndarray, positive_idx: np.ndarray) -> np.ndarray:
    """[Q, P] True where passage j is the same passage as question i's positive (equal `keys` [P]) but
    not the positive itself: another question's positive or negative that is this one's answer."""
    pos = np.asarray(positive_idx)
    same = keys[pos][:, None] == keys[None, :]  # [Q, P]
    same[np.arange(len(pos)), pos] = False
    return same


def nll_loss(q_reps: paddle.Tensor, p_reps: paddle.Tensor, positive_idx: paddle.Tensor, temperature: float = 1.0,
             exclude: Optional[paddle.Tensor] = None):
    """DPR's loss: mean over questions of -log softmax(q . p / temperature)[positive]; also the number right.
    `exclude` [Q, P] (bool) leaves passages out of a question's softmax: copies of its positive elsewhere
    in the batch (`positive_copies`), which would otherwise be taught as its negatives.

    Scores and loss are computed in float32 whatever the representations' dtype (AMP).
    """
    scores = dot_scores(q_reps.astype("float32"), p_reps.astype("float32"))  # [Q, P]
    if temperature != 1.0:
        scores = scores / temperature  # cosine in [-1, 1] needs sharpening: MNRL's scale 20 = 1 / 0.05
    if exclude is not None:
        scores = paddle.where(exclude, paddle.full_like(scores, float("-inf")), scores)  # a constant: exact either way
    log_probs = F.log_softmax(scores, axis=1)
    loss = F.nll_loss(log_probs, positive_idx, reduction="mean")
    correct = (paddle.argmax(scores, axis=1) == positive_idx).astype("int64").sum()
    return loss, correct


def distill_loss(q_reps: paddle.Tensor, p_reps: paddle.Tensor, teacher: paddle.Tensor, temperature: float = 1.0,
                 teacher_temperature: float = 1.0) -> paddle.Tensor:
    """KL(teacher || student) over each question's own passages, mean over questions (RocketQAv2's
    listwise distillation): q_reps [Q, D], p_reps [Q*n, D] (question i owns rows i*n..i*n+n-1, as
    in `positive_indices`), teacher [Q, n] a cross-encoder's scores. The student's distribution is
    softmax(q . p / temperature) over those n passages; the teacher's softmax(teacher / teacher_temperature)."""
    q = q_reps.astype("float32")
    n = teacher.shape[1]
    own = p_reps.astype("float32").reshape([q.shape[0], n, -1])  # [Q, n, D]
    student = paddle.einsum("qd,qnd->qn", q, own) / temperature  # [Q, n]
    log_target = F.log_softmax(teacher.astype("float32") / teacher_temperature, axis=1)  # [Q, n]
    return (log_target.exp() * (log_target - F.log_softmax(student, axis=1))).sum(axis=1).mean()


def average_rank(q_reps: paddle.Tensor, p_reps: paddle.Tensor, positive_idx: paddle.Tensor) -> paddle.Tensor:
    """Rank (0 = best) of each question's positive among all passages: DPR's dev `avg_rank`."""
    scores = dot_scores(q_reps.astype("float32"), p_reps.astype("float32"))  # [Q, P]
    pos = paddle.take_along_axis(scores, positive_idx.unsqueeze(1), axis=1)  # [Q, 1]
    return (scores > pos).astype("int64").sum(axis=1)  # [Q]
