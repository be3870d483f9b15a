"""One training step and the dev evaluation.

One step: the rank's slice of a global batch is tokenized; with chunks smaller than the batch, the
gradient cache (grad_cache.py) encodes it chunk by chunk; the loss is DPR's NLL over every question
against every passage of the global batch (cross-rank negatives via all_gather). Dropout is seeded
per step from (seed, step, rank), so a resumed run repeats exactly what an uninterrupted run would.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import paddle

from ..data import BiEncoderCollator, BiEncoderDataset
from ..modeling.model import (CONTEXT, QUESTION, average_rank, distill_loss, nll_loss, positive_copies,
                              positive_indices)
from .distributed import World
from .grad_cache import cached_step, graph_reference_step


def length_order(arrays: Dict[str, np.ndarray], chunk_size: int) -> Optional[np.ndarray]:
    """The row order that puts rows of similar token length in one chunk (longest first, stable),
    or None when there is a single chunk. The gradient cache is exact for any partition of the
    batch, so this only changes how much padding each chunk computes."""
    n = arrays["attention_mask"].shape[0]
    if chunk_size <= 0 or chunk_size >= n:
        return None
    return np.argsort(-arrays["attention_mask"].sum(axis=1), kind="stable")  # [B]


def in_batch_order(reps: paddle.Tensor, order: Optional[np.ndarray]) -> paddle.Tensor:
    """Representations encoded in `order` ([B, D], row i is batch row order[i]) back in batch order."""
    if order is None:
        return reps
    return paddle.gather(reps, paddle.to_tensor(np.argsort(order)), axis=0)  # differentiable: grads follow


def numpy_chunks(arrays: Dict[str, np.ndarray], chunk_size: int,
                 order: Optional[np.ndarray] = None) -> List[Dict[str, paddle.Tensor]]:
    """Split padded [B, L] arrays (their rows taken in `order`, default as they are) into chunks,
    each trimmed to its own longest sequence, as tensors."""
    if order is not None:
        arrays = {k: v[order] for k, v in arrays.items()}
    n = arrays["input_ids"].shape[0]
    size = n if chunk_size <= 0 else chunk_size
    out = []
    for i in range(0, n, size):
        mask = arrays["attention_mask"][i : i + size]
        length = int(mask.sum(axis=1).max())  # padding only to this chunk's longest: less work
        out.append({k: paddle.to_tensor(v[i : i + size, :length]) for k, v in arrays.items()})
    return out


def copies_to_exclude(keys: np.ndarray, pos: paddle.Tensor) -> Optional[paddle.Tensor]:
    """`positive_copies` of passage `keys` [P] for positives `pos` [Q], as the [Q, P] mask `nll_loss` takes, or
    None when the batch holds no copy (the loss then has nothing to leave out)."""
    copies = positive_copies(keys, pos.numpy())
    return paddle.to_tensor(copies) if copies.any() else None


def step_seed(seed: int, step: int, rank: int) -> int:
    """The dropout seed of one step on one rank (different ranks draw different masks)."""
    return int(np.random.default_rng([seed, step, rank]).integers(1, 2**31 - 1))


def train_step(model, batch, q_chunk: int, p_chunk: int, world: World, amp: Optional[dict] = None,
               scale_loss=None, temperature: float = 1.0, sort_chunks: bool = True,
               distill: Optional[Tuple[float, float]] = None, reference: bool = False, mask_copies: bool = True):
    """Forward and backward of one batch; gradients are left in the parameters. With `sort_chunks`
    the chunks hold rows of similar length (`length_order`) and the loss sees them in batch order.
    `distill` = (weight, teacher temperature) adds weight * `distill_loss` against the batch's
    `teacher` scores [Q, n] to DPR's loss: still a loss of the representations, so the gradient cache
    stays exact. `mask_copies` leaves the batch's other copies of a question's positive out of its softmax
    (`positive_copies`: a constant of the batch, so exact either way). `reference=True` runs the graph
    reference on the same chunks (the tests' spec).

    Returns (loss, number of questions whose positive scored highest) over the global batch.
    """
    n_per_q = batch["passages_per_question"]
    local_q = batch["question"]["input_ids"].shape[0]
    q_order = length_order(batch["question"], q_chunk) if sort_chunks else None
    p_order = length_order(batch["context"], p_chunk) if sort_chunks else None
    q_chunks = numpy_chunks(batch["question"], q_chunk, q_order)
    p_chunks = numpy_chunks(batch["context"], p_chunk, p_order)
    pos = positive_indices(local_q * world.size, n_per_q)  # positives' indices in the global batch
    teacher = paddle.to_tensor(batch["teacher"]) if distill else None  # [Q_local, n]
    # every rank scores the global batch, so it needs every rank's passage keys
    exclude = copies_to_exclude(world.gather(batch["passage_keys"]), pos) if mask_copies else None  # [Q_g, P_g]

    def loss_fn(q_reps, p_reps):
        # Every rank scores all questions of the global batch against all its passages; the
        # gradient reaches only this rank's slice (the others arrive as constants).
        q_reps, p_reps = in_batch_order(q_reps, q_order), in_batch_order(p_reps, p_order)
        loss, correct = nll_loss(world.gather_with_grad(q_reps), world.gather_with_grad(p_reps), pos, temperature,
                                 exclude)
        if distill:
            # each rank's own questions against their own passages; / world.size: the gradients are summed
            kl = distill_loss(q_reps, p_reps, teacher, temperature, distill[1])
            loss = loss + distill[0] * kl / world.size
        return loss, correct

    def encoder(tower):
        def encode(chunk):
            if amp:
                with paddle.amp.auto_cast(**amp):
                    return model(**chunk, tower=tower)
            return model(**chunk, tower=tower)
        return encode

    encoders = [encoder(QUESTION), encoder(CONTEXT)]
    use_cache = (len(q_chunks) > 1 or len(p_chunks) > 1) and not reference
    if use_cache:
        loss, correct = cached_step(encoders, [q_chunks, p_chunks], loss_fn, scale_loss=scale_loss)
    else:
        loss, correct = graph_reference_step(encoders, [q_chunks, p_chunks], loss_fn, scale_loss=scale_loss)
    world.all_reduce_gradients(model)
    return float(loss), int(correct)


@paddle.no_grad()
def evaluate(model, dataset: BiEncoderDataset, collator: BiEncoderCollator, batch_size: int,
             temperature: float = 1.0) -> Dict[str, float]:
    """Dev metrics: DPR's in-batch NLL (batches of `batch_size`), accuracy, and average rank of
    each positive among all dev passages (DPR's `validate_average_rank`)."""
    was_training = model.training
    model.eval()
    q_all, p_all, losses, correct = [], [], [], 0
    n_per_q = 1
    for start in range(0, len(dataset), batch_size):
        examples = [dataset.example(i, epoch=0) for i in range(start, min(start + batch_size, len(dataset)))]
        batch = collator(examples)
        n_per_q = batch["passages_per_question"]
        q = paddle.concat([model(**c, tower=QUESTION) for c in numpy_chunks(batch["question"], 0)])
        p = paddle.concat([model(**c, tower=CONTEXT) for c in numpy_chunks(batch["context"], 0)])
        pos = positive_indices(q.shape[0], n_per_q)
        exclude = copies_to_exclude(batch["passage_keys"], pos)  # a copy of the positive is a tie, not an error
        loss, right = nll_loss(q, p, pos, temperature, exclude)
        losses.append(float(loss) * q.shape[0])
        correct += int(right)
        q_all.append(q)
        p_all.append(p)
    q_all, p_all = paddle.concat(q_all), paddle.concat(p_all)
    ranks = average_rank(q_all, p_all, positive_indices(q_all.shape[0], n_per_q))
    if was_training:
        model.train()
    n = q_all.shape[0]
    return {"nll": sum(losses) / n, "accuracy": correct / n, "avg_rank": float(ranks.astype("float32").mean())}
