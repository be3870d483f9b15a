"""Bi-encoder training: optimizer, schedule, the loop, checkpoints. Read `train()` top to bottom.

One step: the rank's slice of a global batch is tokenized; with `--chunk_size` smaller than the
batch, the gradient cache (grad_cache.py) encodes it chunk by chunk; the loss is DPR's NLL over
every question against every passage of the global batch (cross-rank negatives via all_gather);
gradients are clipped by global norm and AdamW steps under a linear warmup/decay schedule.

Dropout is seeded per step from (seed, step, rank), and data choices are functions of
(seed, epoch, index), so a resumed run repeats exactly what an uninterrupted run would do.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Dict, List, Optional

import numpy as np
import paddle
from tqdm import tqdm

from . import checkpoint as ckpt
from .data import BiEncoderCollator, BiEncoderDataset, epoch_batches, rank_slice, read_biencoder_records
from .distributed import World
from .errors import DprError
from .grad_cache import cached_step, graph_reference_step
from .model import CONTEXT, QUESTION, average_rank, nll_loss, positive_indices, set_dropout
from .tokenization import Tensorizer
from .utils import check_output_path

logger = logging.getLogger(__name__)


class TrainingError(DprError, RuntimeError):
    """Training cannot go on (bad settings, NaN loss); the message says what to do."""


# --------------------------------------------------------------------------- building blocks

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


def numpy_chunks(arrays: Dict[str, np.ndarray], chunk_size: int) -> List[Dict[str, paddle.Tensor]]:
    """Split padded [B, L] arrays into chunks, each trimmed to its own longest sequence, as tensors."""
    n = arrays["input_ids"].shape[0]
    size = n if chunk_size <= 0 else chunk_size
    out = []
    for i in range(0, n, size):
        mask = arrays["attention_mask"][i : i + size]
        length = int(mask.sum(axis=1).max())  # padding only to this chunk's longest: less work
        out.append({k: paddle.to_tensor(v[i : i + size, :length]) for k, v in arrays.items()})
    return out


def step_seed(seed: int, step: int, rank: int) -> int:
    """The dropout seed of one step on one rank (different ranks draw different masks)."""
    return int(np.random.default_rng([seed, step, rank]).integers(1, 2**31 - 1))


# --------------------------------------------------------------------------- one step

def train_step(model, batch, q_chunk: int, p_chunk: int, world: World, amp: Optional[dict] = None,
               scale_loss=None, temperature: float = 1.0):
    """Forward and backward of one batch; gradients are left in the parameters.

    Returns (loss, number of questions whose positive scored highest) over the global batch.
    """
    n_per_q = batch["passages_per_question"]
    local_q = batch["question"]["input_ids"].shape[0]
    q_chunks = numpy_chunks(batch["question"], q_chunk)
    p_chunks = numpy_chunks(batch["context"], p_chunk)
    pos = positive_indices(local_q * world.size, n_per_q)  # positives' indices in the global batch

    def loss_fn(q_reps, p_reps):
        # Every rank scores all questions of the global batch against all its passages; the
        # gradient reaches only this rank's slice (the others arrive as constants).
        return nll_loss(world.gather_with_grad(q_reps), world.gather_with_grad(p_reps), pos, temperature)

    def encoder(tower):
        def encode(chunk):
            if amp:
                with paddle.amp.auto_cast(**amp):
                    return model(**chunk, tower=tower)
            return model(**chunk, tower=tower)
        return encode

    encoders = [encoder(QUESTION), encoder(CONTEXT)]
    use_cache = len(q_chunks) > 1 or len(p_chunks) > 1
    if use_cache:
        loss, correct = cached_step(encoders, [q_chunks, p_chunks], loss_fn, scale_loss=scale_loss)
    else:
        loss, correct = graph_reference_step(encoders, [q_chunks, p_chunks], loss_fn, scale_loss=scale_loss)
    world.all_reduce_gradients(model)
    return float(loss), int(correct)


# --------------------------------------------------------------------------- evaluation

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
        loss, right = nll_loss(q, p, positive_indices(q.shape[0], n_per_q), temperature)
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


# --------------------------------------------------------------------------- the loop

def check_args(args) -> None:
    """Reject settings that cannot work, with a sentence that says which and why."""
    if args.batch_size < 1:
        raise TrainingError(f"--batch_size must be >= 1, got {args.batch_size}")
    for name in ("chunk_size", "q_chunk_size", "p_chunk_size"):
        if getattr(args, name) < 0:
            raise TrainingError(f"--{name} must be >= 1 (or 0 for no chunking), got {getattr(args, name)}")
    if args.epochs < 1 and args.max_steps < 1:
        raise TrainingError("--epochs (or --max_steps) must be >= 1")
    if args.hard_negatives < 0:
        raise TrainingError("--hard_negatives must be >= 0")
    if not os.path.isfile(args.train_data_path):
        raise TrainingError(f"{args.train_data_path}: training data not found")
    if args.dev_data_path and not os.path.isfile(args.dev_data_path):
        raise TrainingError(f"{args.dev_data_path}: dev data not found")
    check_output_path(os.path.join(args.save_dir, "checkpoint"), "checkpoint")


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


def prepare_save_dir(save_dir: str, resume: Optional[str], overwrite: bool, world: World) -> Optional[str]:
    """The checkpoint to resume from (or None), after refusing or clearing another run's checkpoints
    and removing the unfinished saves of a killed run."""
    resume_from = None
    if resume and resume != "none":
        resume_from = ckpt.latest_checkpoint(save_dir) if resume == "auto" else resume
        if resume != "auto" and not os.path.isdir(resume):
            raise TrainingError(f"--resume {resume}: no such checkpoint directory")
    world.barrier()  # every rank looks before rank 0 may delete
    stale = not resume_from and ckpt.list_checkpoints(save_dir)
    world.barrier()
    if stale:
        # A fresh run must not mix its checkpoints with another run's (a stale checkpoint-N could
        # be taken for this run's, or be resumed later by --resume auto).
        if not overwrite:
            raise TrainingError(f"{save_dir} already holds checkpoints of another run "
                                f"({os.path.basename(stale[-1][1])}); pass --resume auto "
                                "to continue it, or --overwrite_save_dir to delete them and start afresh")
        if world.is_main:
            logger.info("--overwrite_save_dir: removed %s", ", ".join(ckpt.remove_checkpoints(save_dir)))
    if world.is_main:
        gone = ckpt.remove_stale_temps(save_dir)  # left by a run killed mid-save
        if gone:
            logger.info("removed unfinished saves of an interrupted run: %s", ", ".join(gone))
    world.barrier()
    return resume_from


def setup_amp(fp16: bool, amp_dtype: str):
    """(auto_cast kwargs or None, GradScaler or None): float16/bfloat16 forward on a GPU only."""
    if fp16 and paddle.is_compiled_with_cuda() and "gpu" in paddle.device.get_device():
        scaler = paddle.amp.GradScaler(init_loss_scaling=2.0**15) if amp_dtype == "float16" else None
        return {"enable": True, "dtype": amp_dtype, "level": "O1"}, scaler
    if fp16:
        logger.warning("--fp16 ignored: mixed precision needs a GPU build and device")
    return None, None


def apply_update(model, optimizer, scheduler, scaler):
    """Unscale, measure, step and clear the gradients; returns (grad norm, learning rate used)."""
    if scaler:
        scaler.unscale_(optimizer)
    grad_norm = global_grad_norm(model.parameters())
    lr = optimizer.get_lr()
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    optimizer.clear_grad()
    return grad_norm, lr


class Saver:
    """Writes this run's checkpoints (all ranks call; rank 0 writes) and remembers which it wrote."""

    def __init__(self, save_dir, keep_last, world, model, tokenizer, optimizer, scheduler, state, cfg, run_config):
        self.save_dir, self.keep_last, self.world, self.state = save_dir, keep_last, world, state
        self.parts = (model, tokenizer, optimizer, scheduler)
        self.cfg, self.run_config = cfg, run_config
        self.written = {}  # global step -> checkpoint written by this run

    def write(self, name: str) -> str:
        """Save as SAVE_DIR/name (rank 0 writes, the others wait)."""
        path = os.path.join(self.save_dir, name)
        if self.world.is_main:
            ckpt.save_checkpoint(path, *self.parts, self.state, self.cfg, self.run_config)
        return path

    def save_and_prune(self) -> str:
        """checkpoint-STEP, then drop all but the newest --keep_last."""
        self.world.barrier()
        path = self.write(f"checkpoint-{self.state['global_step']}")
        if self.world.is_main:
            ckpt.prune_checkpoints(self.save_dir, self.keep_last)
        self.world.barrier()
        self.written[self.state["global_step"]] = path
        return path


def run_dev(model, dev, collator, batch_size, temperature, writer, step, state, saver) -> Optional[dict]:
    """Rank 0 evaluates and keeps the best checkpoint; the other ranks go on to the next step,
    whose all_gather waits for rank 0."""
    if dev is None or not saver.world.is_main:
        return None
    metrics = evaluate(model, dev, collator, batch_size, temperature)
    for k, v in metrics.items():
        writer.add_scalar(f"dev/{k}", v, step)
    logger.info("dev at step %d: nll %.4f, accuracy %.3f, average rank %.2f", step, metrics["nll"],
                metrics["accuracy"], metrics["avg_rank"])
    key = [metrics["avg_rank"], metrics["nll"]]
    if state["best"] is None or key < state["best"]:
        state["best"] = key
        logger.info("new best (average rank %.2f) saved to %s", metrics["avg_rank"], saver.write("best"))
    return metrics


def lost_peer(e: RuntimeError, rank: int, step: int, save_dir: str) -> TrainingError:
    """gloo/NCCL report a dead peer as a RuntimeError deep inside a collective: say what to do."""
    good = ckpt.latest_checkpoint(save_dir)
    return TrainingError(f"rank {rank} lost the other ranks at step {step} "
                         f"({str(e).strip().splitlines()[-1][:200]}); did another rank fail? "
                         f"Checkpoints are only written whole; resume with --resume auto from "
                         f"{good or 'the start'}.")


def train(args) -> Dict[str, float]:
    """Train a bi-encoder as `args` (a config.TrainArgs) says; returns the last metrics."""
    check_args(args)
    world = World.init()
    if args.batch_size % world.size:
        raise TrainingError(f"--batch_size {args.batch_size} is the global batch and must be divisible by the "
                            f"number of processes ({world.size})")
    q_chunk, p_chunk = resolve_chunks(args.batch_size // world.size, args.hard_negatives, args.chunk_size,
                                      args.q_chunk_size, args.p_chunk_size)

    # ---- data
    records = read_biencoder_records(args.train_data_path)
    dataset = BiEncoderDataset(records, args.hard_negatives, seed=args.seed, shuffle_positives=args.shuffle_positives)
    batches_per_epoch = len(epoch_batches(len(dataset), args.batch_size, 0, args.seed, world_size=world.size))
    if batches_per_epoch == 0:
        raise TrainingError(f"{args.train_data_path}: {len(dataset)} records make no batch of {args.batch_size}")
    total_steps = batches_per_epoch * args.epochs
    if args.max_steps > 0:
        total_steps = min(total_steps, args.max_steps) if args.epochs > 0 else args.max_steps
    n_epochs = math.ceil(total_steps / batches_per_epoch)  # --epochs 0 --max_steps N: as many epochs as N needs
    dev = None
    if args.dev_data_path:
        dev = BiEncoderDataset(read_biencoder_records(args.dev_data_path), args.hard_negatives, seed=args.seed,
                               shuffle_negatives=False)

    # ---- model, from the checkpoint when resuming
    resume_from = prepare_save_dir(args.save_dir, args.resume, args.overwrite_save_dir, world)
    if resume_from:
        que, con = (os.path.join(resume_from, ckpt.TOWER_DIRS[t]) for t in (QUESTION, CONTEXT))
    else:
        que = args.que_model_path or args.model_name_or_path
        con = args.con_model_path or args.model_name_or_path
    # pooling/similarity/temperature: explicit flags, else what the starting encoder was trained with
    recipe = ckpt.encoder_recipe(que, args.pooling, args.similarity, args.temperature)
    paddle.seed(args.seed)  # a projection layer is initialised identically on every rank and run
    model, tokenizer = ckpt.build_biencoder(que, con, args.shared_encoder, args.projection_dim, recipe["pooling"],
                                            normalize=recipe["similarity"] == "cosine")
    if args.dropout is not None:
        set_dropout(model, args.dropout)
    model.speed_up_training()
    collator = BiEncoderCollator(Tensorizer(tokenizer, args.max_query_length, args.max_passage_length))
    optimizer, scheduler = build_optimizer(model, args.learning_rate, total_steps, args.warmup_steps,
                                           args.weight_decay, args.adam_epsilon, args.max_grad_norm)
    model = world.wrap(model)
    cfg = ckpt.model_config(args.max_query_length, args.max_passage_length, args.projection_dim,
                            args.shared_encoder, recipe)

    state = {"global_step": 0, "epoch": 0, "batch_in_epoch": 0, "best": None, "total_steps": total_steps}
    if resume_from:
        ckpt.restore_optimizer(resume_from, optimizer, scheduler, model)
        saved = ckpt.load_trainer_state(resume_from)
        state.update({k: saved[k] for k in ("global_step", "epoch", "batch_in_epoch", "best")})
        logger.info("resuming from %s at step %d (epoch %d, batch %d)", resume_from, state["global_step"],
                    state["epoch"], state["batch_in_epoch"])
    resumed_step = state["global_step"] if resume_from else None
    amp, scaler = setup_amp(args.fp16, args.amp_dtype)
    saver = Saver(args.save_dir, args.keep_last, world, model, tokenizer, optimizer, scheduler, state, cfg,
                  dataclasses.asdict(args))

    writer = None
    if world.is_main:
        from visualdl import LogWriter

        writer = LogWriter(logdir=args.log_dir or os.path.join(args.save_dir, "vdl"))
        os.makedirs(args.save_dir, exist_ok=True)
    logger.info("training: %d records, global batch %d (%d ranks), chunks q=%s p=%s, %d steps; pooling %s, "
                "similarity %s, temperature %g", len(dataset), args.batch_size, world.size, q_chunk or "none",
                p_chunk or "none", total_steps, recipe["pooling"], recipe["similarity"], recipe["temperature"])
    dev_args = (model, dev, collator, args.dev_batch_size, recipe["temperature"], writer)

    model.train()
    last = {}
    start_epoch = state["epoch"]
    for epoch in range(start_epoch, n_epochs):
        if state["global_step"] >= total_steps:
            break
        batches = epoch_batches(len(dataset), args.batch_size, epoch, args.seed, world_size=world.size)
        first = state["batch_in_epoch"] if epoch == start_epoch else 0
        # with --max_steps the run may end inside this epoch: the bar counts what will really run
        last_batch = min(len(batches), first + total_steps - state["global_step"])
        bar = tqdm(total=last_batch, initial=first, desc=f"epoch {epoch}", disable=not world.is_main,
                   dynamic_ncols=True, unit="step")
        for b in range(first, last_batch):
            t0 = time.perf_counter()
            paddle.seed(step_seed(args.seed, state["global_step"], world.rank))
            batch = collator([dataset.example(i, epoch) for i in rank_slice(batches[b], world.rank, world.size)])
            try:
                loss, correct = train_step(model, batch, q_chunk, p_chunk, world, amp,
                                           scale_loss=scaler.scale if scaler else None,
                                           temperature=recipe["temperature"])
            except RuntimeError as e:
                if world.size == 1:
                    raise
                raise lost_peer(e, world.rank, state["global_step"], args.save_dir) from None
            if not math.isfinite(loss):
                good = ckpt.latest_checkpoint(args.save_dir)
                raise TrainingError(f"loss is {loss} at step {state['global_step']} (epoch {epoch}); stopped without "
                                    f"updating. Last good checkpoint: {good or 'none'}. Lower --learning_rate or check the data.")
            grad_norm, lr = apply_update(model, optimizer, scheduler, scaler)

            state["global_step"] += 1
            state["epoch"], state["batch_in_epoch"] = epoch, b + 1
            step = state["global_step"]
            n_global = len(batches[b])
            last = {"loss": loss, "accuracy": correct / n_global, "grad_norm": grad_norm, "lr": lr,
                    "examples_per_sec": n_global / (time.perf_counter() - t0)}
            if writer:
                for k, v in last.items():
                    writer.add_scalar(f"train/{k}", v, step)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", acc=f"{last['accuracy']:.2f}")
            if args.log_steps and step % args.log_steps == 0 and world.is_main:
                logger.info("step %d/%d epoch %d: loss %.4f, accuracy %.3f, grad norm %.3f, lr %.3g, %.2f examples/s",
                            step, total_steps, epoch, loss, last["accuracy"], grad_norm, lr, last["examples_per_sec"])
            if args.eval_steps and step % args.eval_steps == 0:
                run_dev(*dev_args, step, state, saver)
            if args.save_steps and step % args.save_steps == 0:
                saver.save_and_prune()
        bar.close()
        if state["batch_in_epoch"] >= len(batches):  # the epoch is complete
            state["epoch"], state["batch_in_epoch"] = epoch + 1, 0
            run_dev(*dev_args, state["global_step"], state, saver)
            saver.save_and_prune()

    final = saver.written.get(state["global_step"])
    if final is None and resumed_step == state["global_step"]:
        final = resume_from  # resumed at the end: nothing left to train
    if final is None:
        final = saver.save_and_prune()
    if world.is_main:
        ckpt.point_latest(args.save_dir, final)
    if writer:
        writer.close()
    logger.info("done: %d steps; last checkpoint %s", state["global_step"], final)
    world.shutdown()
    return {**last, "global_step": state["global_step"], "checkpoint": final}
