"""What a training run trains: the bi-encoder (DPR) or the cross-encoder (reranker). Each `Task` gives
the loop (loop.py) its model and tokenizer, the collator that makes its batches, its step, its dev
metrics and the config its checkpoints carry; the loop itself (data order, optimiser, schedule,
checkpoints, resume, logs) is one for both.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

import paddle

from ..common.errors import DprError
from ..data import BiEncoderCollator, RerankCollator
from ..modeling.builder import TOWER_DIRS, build_biencoder, check_length, check_lengths, encoder_recipe, model_config
from ..modeling.cross_encoder import build_cross_encoder, reranker_config
from ..modeling.model import CONTEXT, QUESTION, set_dropout
from ..modeling.tokenization import Tensorizer
from .config import RerankConfig, TrainConfig
from .distributed import World
from .optim import cpu_bf16
from .rerank import evaluate_reranker, rerank_step
from .step import evaluate, train_step


class TrainingError(DprError, RuntimeError):
    """Training cannot go on (bad settings, NaN loss); the message says what to do."""


@dataclass
class Task:
    """One kind of model the loop trains."""

    name: str
    model: object
    tokenizer: object
    collator: Callable  # [TrainExample] -> batch
    step: Callable  # (batch, amp, scale_loss) -> (loss, number right); gradients left in the parameters
    evaluate: Callable  # (dev dataset, batch size) -> {"nll", "accuracy", "avg_rank"}
    model_cfg: dict  # written as each checkpoint's dpr_config.json
    describe: str  # the settings, for the run's first log line


def resolve_chunks(local_batch: int, hard_negatives: int, chunk_size: int, q_chunk_size: int,
                   p_chunk_size: int):
    """(question chunk, passage chunk); 0 = no chunking, also when a chunk would hold the whole slice."""
    q_chunk = q_chunk_size or chunk_size
    p_chunk = p_chunk_size or chunk_size
    if q_chunk and q_chunk >= local_batch:
        q_chunk = 0
    if p_chunk and p_chunk >= local_batch * (1 + hard_negatives):
        p_chunk = 0
    return q_chunk, p_chunk


def bi_encoder_task(cfg: TrainConfig, resume_from: Optional[str], world: World) -> Task:
    """The bi-encoder from the checkpoint resumed or the encoders named; pooling, similarity and
    temperature are the flags', else what the starting encoder was trained with."""
    if resume_from:
        que, con = (os.path.join(resume_from, TOWER_DIRS[t]) for t in (QUESTION, CONTEXT))
    else:
        que, con = cfg.que_model_path or cfg.model_name_or_path, cfg.con_model_path or cfg.model_name_or_path
    recipe = encoder_recipe(que, cfg.pooling, cfg.similarity, cfg.temperature)
    paddle.seed(cfg.seed)  # a projection layer is initialised identically on every rank and run
    model, tokenizer = build_biencoder(que, con, cfg.shared_encoder, cfg.projection_dim, recipe["pooling"],
                                       normalize=recipe["similarity"] == "cosine")
    if cfg.dropout is not None:
        set_dropout(model, cfg.dropout)
    model.speed_up_training(bf16=cpu_bf16(cfg.fp16, cfg.amp_dtype, cfg.bf16))
    check_lengths(model, cfg.max_query_length, cfg.max_passage_length)
    collator = BiEncoderCollator(Tensorizer(tokenizer, cfg.max_query_length, cfg.max_passage_length))
    q_chunk, p_chunk = resolve_chunks(cfg.batch_size // world.size, cfg.hard_negatives, cfg.chunk_size,
                                      cfg.q_chunk_size, cfg.p_chunk_size)
    tau = recipe["temperature"]
    distill = (cfg.distill_weight, cfg.distill_temperature) if cfg.distill_weight > 0 else None

    def step(batch, amp, scale_loss):
        return train_step(model, batch, q_chunk, p_chunk, world, amp, scale_loss=scale_loss, temperature=tau,
                          sort_chunks=cfg.sort_chunks, distill=distill, mask_copies=cfg.mask_duplicates)

    describe = (f"chunks q={q_chunk or 'none'} p={p_chunk or 'none'}; pooling {recipe['pooling']}, similarity "
                f"{recipe['similarity']}, temperature {tau:g}"
                + (f"; distillation weight {cfg.distill_weight:g}, teacher temperature {cfg.distill_temperature:g}"
                   if distill else ""))
    return Task("a bi-encoder", model, tokenizer, collator, step,
                lambda dev, bs: evaluate(model, dev, collator, bs, tau),
                model_config(cfg.max_query_length, cfg.max_passage_length, cfg.projection_dim, cfg.shared_encoder,
                             recipe), describe)


def reranker_task(cfg: RerankConfig, resume_from: Optional[str], world: World) -> Task:
    """The cross-encoder from the checkpoint resumed, a reranker, or a backbone with a fresh head."""
    paddle.seed(cfg.seed)  # the fresh head is initialised identically on every rank and run
    model, tokenizer, _ = build_cross_encoder(resume_from or cfg.model_name_or_path, trained=bool(resume_from))
    if cfg.dropout is not None:
        set_dropout(model, cfg.dropout)
    model.speed_up_training(bf16=cpu_bf16(cfg.fp16, cfg.amp_dtype, cfg.bf16))
    check_length("--max_length", cfg.max_length, [model.backbone], "the backbone", TrainingError)
    collator = RerankCollator(Tensorizer(tokenizer), cfg.max_length)
    local = cfg.batch_size // world.size
    chunk = cfg.chunk_size if 0 < cfg.chunk_size < local else 0

    def step(batch, amp, scale_loss):
        return rerank_step(model, batch, chunk, world, amp, scale_loss=scale_loss, sort_chunks=cfg.sort_chunks)

    describe = f"group size {cfg.group_size}, chunks of {chunk or local} questions, max length {cfg.max_length}"
    return Task("a reranker (cross-encoder)", model, tokenizer, collator, step,
                lambda dev, bs: evaluate_reranker(model, dev, collator, bs),
                reranker_config(cfg.max_length, cfg.model_name_or_path), describe)
