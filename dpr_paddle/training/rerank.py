"""One reranker (cross-encoder) training step and its dev evaluation, as step.py is the bi-encoder's.

A step: each question of the rank's slice brings a group (its positive, then `group_size - 1` hard
negatives); every pair is scored by the cross-encoder, and the loss is the listwise softmax
cross-entropy of each group, averaged over the global batch. A group's loss reads only its own
scores, so chunks of whole groups accumulate gradients exactly (`grad_cache.accumulated_step`), with
the same spec as the gradient cache: `graph_reference_step` over the same chunks.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import paddle

from ..modeling.cross_encoder import listwise_loss
from .distributed import World
from .grad_cache import accumulated_step, graph_reference_step
from .step import numpy_chunks


def group_order(pairs: Dict[str, np.ndarray], group_size: int) -> np.ndarray:
    """The row order that keeps each group whole and puts groups of similar token length together
    (longest group first, stable): chunks then pad little. [B*n]"""
    lengths = pairs["attention_mask"].sum(axis=1).reshape(-1, group_size).max(axis=1)  # [B]
    groups = np.argsort(-lengths, kind="stable")
    return (groups[:, None] * group_size + np.arange(group_size)[None, :]).reshape(-1)


def rerank_chunks(batch, chunk_groups: int, sort_chunks: bool = True) -> List[Dict[str, paddle.Tensor]]:
    """A batch's pairs as chunks of `chunk_groups` whole groups (0 = one chunk), each trimmed to its longest."""
    pairs, n = batch["pairs"], batch["group_size"]
    order = group_order(pairs, n) if sort_chunks and chunk_groups else None
    return numpy_chunks(pairs, chunk_groups * n if chunk_groups else 0, order)


def rerank_step(model, batch, chunk_groups: int, world: World, amp: Optional[dict] = None, scale_loss=None,
                sort_chunks: bool = True, reference: bool = False):
    """Forward and backward of one batch of groups; gradients are left in the parameters.
    `reference=True` runs the graph reference on the same chunks (the tests' spec).

    Returns (loss, number of groups whose positive scored highest) over the global batch: every rank
    divides by the global number of groups, and the gradients are summed over ranks.
    """
    n = batch["group_size"]
    num_groups = batch["pairs"]["input_ids"].shape[0] // n * world.size
    chunks = rerank_chunks(batch, chunk_groups, sort_chunks)

    def encode(chunk):
        if amp:
            with paddle.amp.auto_cast(**amp):
                return model(**chunk)
        return model(**chunk)

    def loss_fn(scores):  # [g*n] -> the groups' share of the batch loss
        return listwise_loss(scores.reshape([-1, n]), num_groups)

    if reference:
        loss, correct = graph_reference_step([encode], [chunks], loss_fn, scale_loss=scale_loss)
        loss, correct = float(loss), int(correct)
    else:
        loss, correct = accumulated_step(encode, chunks, loss_fn, scale_loss=scale_loss)
    world.all_reduce_gradients(model)
    return world.sum_scalar(loss), int(world.sum_scalar(correct))


@paddle.no_grad()
def evaluate_reranker(model, dataset, collator, batch_size: int) -> Dict[str, float]:
    """Dev metrics over each dev question's group: the listwise NLL, the share whose positive scored
    highest, and the positive's average rank in its group (0 = first)."""
    was_training = model.training
    model.eval()
    nll, correct, ranks, total = 0.0, 0, [], 0
    for start in range(0, len(dataset), batch_size):
        batch = collator([dataset.example(i, epoch=0) for i in range(start, min(start + batch_size, len(dataset)))])
        n = batch["group_size"]
        scores = paddle.concat([model(**c) for c in numpy_chunks(batch["pairs"], 0)]).reshape([-1, n])  # [G, n]
        loss, right = listwise_loss(scores, 1)
        nll += float(loss)
        correct += int(right)
        s = scores.numpy()
        ranks.append((s[:, 1:] > s[:, :1]).sum(axis=1))
        total += s.shape[0]
    if was_training:
        model.train()
    return {"nll": nll / total, "accuracy": correct / total, "avg_rank": float(np.concatenate(ranks).mean())}
