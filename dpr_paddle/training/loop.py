"""Training, the bi-encoder's and the reranker's: read `train()` top to bottom.

A run: the records become a dataset whose every random choice is a function of (seed, epoch,
index); the model starts from the encoders named (or the checkpoint resumed); each step
(step.py) encodes the rank's slice of the global batch, with the gradient cache when chunks are
smaller than the batch, and AdamW steps under a linear warmup/decay schedule (optim.py);
checkpoints (checkpoint.py) are written whole, every --save_steps and at each epoch's end, and
carry the model's config, the optimizer and a TrainState, so a resumed run repeats exactly what an
uninterrupted run would have done. What differs between a bi-encoder and a cross-encoder (reranker)
run is a `Task` (tasks.py): the model, its collator, its step and its dev metrics.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple, Union

import paddle
from tqdm import tqdm

from ..common.files import check_output_path
from ..data import BiEncoderDataset, epoch_batches, rank_slice, read_biencoder_records
from ..modeling import bf16_cpu
from . import checkpoint as ckpt
from .config import LoopConfig, RerankConfig, TrainConfig
from .distributed import World
from .optim import NonFiniteGradient, apply_update, build_optimizer, cpu_bf16, setup_amp
from .step import step_seed
from .tasks import Task, TrainingError, bi_encoder_task, reranker_task

logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Where a run is; saved in each checkpoint's trainer_state.json (with the scheduler and run config)."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best: Optional[list] = None  # [average rank, nll] of the best dev evaluation
    total_steps: int = 0
    last: Optional[dict] = None  # the last step's loss, gradient norm and learning rate: what a run did


def check_config(cfg: LoopConfig) -> None:
    """Reject settings that cannot work, with a sentence that says which and why."""
    if cfg.batch_size < 1:
        raise TrainingError(f"--batch_size must be >= 1, got {cfg.batch_size}")
    for name in ("chunk_size", "q_chunk_size", "p_chunk_size"):
        if getattr(cfg, name, 0) < 0:
            raise TrainingError(f"--{name} must be >= 1 (or 0 for no chunking), got {getattr(cfg, name)}")
    if cfg.epochs < 1 and cfg.max_steps < 1:
        raise TrainingError("--epochs (or --max_steps) must be >= 1")
    if getattr(cfg, "hard_negatives", 0) < 0:
        raise TrainingError("--hard_negatives must be >= 0")
    if isinstance(cfg, RerankConfig) and cfg.group_size < 2:
        raise TrainingError(f"--group_size must be >= 2 (1 positive and at least 1 negative), got {cfg.group_size}")
    if not os.path.isfile(cfg.train_data_path):
        raise TrainingError(f"{cfg.train_data_path}: training data not found")
    if cfg.dev_data_path and not os.path.isfile(cfg.dev_data_path):
        raise TrainingError(f"{cfg.dev_data_path}: dev data not found")
    check_output_path(os.path.join(cfg.save_dir, "checkpoint"), "checkpoint")
    if cpu_bf16(cfg.fp16, cfg.amp_dtype, cfg.bf16):
        bf16_cpu.require()  # before anything is loaded


def prepare_save_dir(save_dir: str, resume: Optional[str], overwrite: bool,
                     world: World) -> Tuple[Optional[str], bool]:
    """(the checkpoint to resume from or None, whether another run's checkpoints are there to clear), after
    refusing them without --overwrite_save_dir. Nothing is deleted here: `clear_save_dir` does that once every
    setting and the model have been checked, so that a refused run leaves the old checkpoints in place."""
    if world.is_main:
        ckpt.claim_save_dir(save_dir)  # one run writes a save_dir at a time
    resume_from = None
    if resume and resume != "none":
        resume_from = ckpt.latest_checkpoint(save_dir) if resume == "auto" else resume
        if resume != "auto" and not os.path.isdir(resume):
            raise TrainingError(f"--resume {resume}: no such checkpoint directory")
    stale = not resume_from and ckpt.list_checkpoints(save_dir)
    # A fresh run must not mix its checkpoints with another run's (a stale checkpoint-N could be taken for this
    # run's, or be resumed later by --resume auto).
    if stale and not overwrite:
        raise TrainingError(f"{save_dir} already holds checkpoints of another run "
                            f"({os.path.basename(stale[-1][1])}); pass --resume auto "
                            "to continue it, or --overwrite_save_dir to delete them and start afresh")
    return resume_from, bool(stale)


def clear_save_dir(save_dir: str, stale: bool, world: World) -> None:
    """Delete another run's checkpoints (--overwrite_save_dir, `stale`) and the unfinished saves of a killed
    run. Called after the model is built, so every refusal comes before anything is deleted."""
    world.barrier()  # every rank has looked before rank 0 deletes
    if world.is_main:
        if stale:
            logger.info("--overwrite_save_dir: removed %s", ", ".join(ckpt.remove_checkpoints(save_dir)))
        gone = ckpt.remove_stale_temps(save_dir)  # left by a run killed mid-save
        if gone:
            logger.info("removed unfinished saves of an interrupted run: %s", ", ".join(gone))
    world.barrier()


class Saver:
    """Writes this run's checkpoints (all ranks call; rank 0 writes) and remembers which it wrote."""

    def __init__(self, save_dir, keep_last, world, model, tokenizer, optimizer, scheduler, state: "TrainState", cfg,
                 run_config):
        self.save_dir, self.keep_last, self.world, self.state = save_dir, keep_last, world, state
        self.parts = (model, tokenizer, optimizer, scheduler)
        self.cfg, self.run_config = cfg, run_config
        self.written = {}  # global step -> checkpoint written by this run

    def write(self, name: str) -> str:
        """Save as SAVE_DIR/name (rank 0 writes, the others wait)."""
        path = os.path.join(self.save_dir, name)
        if self.world.is_main:
            ckpt.save_checkpoint(path, *self.parts, dataclasses.asdict(self.state), self.cfg, self.run_config)
        return path

    def save_and_prune(self) -> str:
        """checkpoint-STEP, then drop all but the newest --keep_last."""
        self.world.barrier()
        path = self.write(f"checkpoint-{self.state.global_step}")
        if self.world.is_main:
            ckpt.prune_checkpoints(self.save_dir, self.keep_last)
        self.world.barrier()
        self.written[self.state.global_step] = path
        return path


def run_dev(task: Task, dev, batch_size, writer, step, state, saver) -> Optional[dict]:
    """Rank 0 evaluates and keeps the best checkpoint; the other ranks go on to the next step,
    whose all_gather waits for rank 0."""
    if dev is None or not saver.world.is_main:
        return None
    metrics = task.evaluate(dev, batch_size)
    for k, v in metrics.items():
        writer.add_scalar(f"dev/{k}", v, step)
    logger.info("dev at step %d: nll %.4f, accuracy %.3f, average rank %.2f", step, metrics["nll"],
                metrics["accuracy"], metrics["avg_rank"])
    key = [metrics["avg_rank"], metrics["nll"]]
    if state.best is None or key < state.best:
        state.best = key
        logger.info("new best (average rank %.2f) saved to %s", metrics["avg_rank"], saver.write("best"))
    return metrics


def resume_advice(save_dir: str) -> str:
    """What a rank that lost the others tells the user: where a resumed run starts."""
    good = ckpt.latest_checkpoint(save_dir)
    return (f"did another rank fail? Checkpoints are only written whole; resume with --resume auto from "
            f"{good or 'the start'}.")


def lost_peer(e: RuntimeError, rank: int, step: int, save_dir: str) -> TrainingError:
    """gloo/NCCL report a dead peer as a RuntimeError deep inside a collective: say what to do."""
    return TrainingError(f"rank {rank} lost the other ranks at step {step} "
                         f"({str(e).strip().splitlines()[-1][:200]}); {resume_advice(save_dir)}")


def say_why_when_stopped(world: World, state: "TrainState", save_dir: str) -> None:
    """A launcher stops every rank with SIGTERM once one fails, at times before this rank's next
    collective has noticed: log what happened and how to resume, then stop as SIGTERM would."""
    if world.size < 2:
        return

    def stopped(signum, frame):
        logger.error("rank %d was stopped (SIGTERM) at step %d: the launcher stops every rank once one fails; %s",
                     world.rank, state.global_step, resume_advice(save_dir))
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, stopped)


def plan_steps(n_examples: int, cfg: TrainConfig, world: World):
    """(total steps, epochs to run): --epochs of full batches, cut by --max_steps (with --epochs 0, as
    many epochs as --max_steps needs)."""
    per_epoch = len(epoch_batches(n_examples, cfg.batch_size, 0, cfg.seed, world_size=world.size))
    if per_epoch == 0:
        raise TrainingError(f"{cfg.train_data_path}: {n_examples} records make no batch of {cfg.batch_size}")
    total = per_epoch * cfg.epochs
    if cfg.max_steps > 0:
        total = min(total, cfg.max_steps) if cfg.epochs > 0 else cfg.max_steps
    return total, math.ceil(total / per_epoch)


def load_data(cfg: LoopConfig, negatives: int, teacher: bool = False):
    """(training dataset, dev dataset or None): `negatives` hard negatives per question; `teacher`:
    each example carries its passages' teacher scores (distillation)."""
    records = read_biencoder_records(cfg.train_data_path)
    dataset = BiEncoderDataset(records, negatives, seed=cfg.seed, shuffle_positives=cfg.shuffle_positives,
                               teacher=teacher, path=cfg.train_data_path)
    dev = None
    if cfg.dev_data_path:
        dev = BiEncoderDataset(read_biencoder_records(cfg.dev_data_path), negatives, seed=cfg.seed,
                               shuffle_negatives=False)
    return dataset, dev


def resume_state(resume_from: Optional[str], optimizer, scheduler, model, total_steps: int) -> TrainState:
    """A fresh TrainState, or the resumed checkpoint's (its optimizer and scheduler restored too)."""
    state = TrainState(total_steps=total_steps)
    if resume_from:
        ckpt.restore_optimizer(resume_from, optimizer, scheduler, model)
        saved = ckpt.load_trainer_state(resume_from)
        state = TrainState(saved["global_step"], saved["epoch"], saved["batch_in_epoch"], saved["best"], total_steps,
                           saved.get("last"))
        logger.info("resuming from %s at step %d (epoch %d, batch %d)", resume_from, state.global_step, state.epoch,
                    state.batch_in_epoch)
    return state


@dataclass
class StepParts:
    """What one optimisation step needs besides its batch."""

    model: object
    optimizer: object
    scheduler: object
    world: World
    step: Callable  # Task.step: (batch, amp, scale_loss) -> (loss, number right)
    amp: Optional[dict]
    scaler: object
    save_dir: str


def optimise(parts: StepParts, batch, state: TrainState, epoch: int, b: int, n_global: int) -> Dict[str, float]:
    """Forward, backward and update on one batch; advances `state`; returns the step's metrics."""
    t0 = time.perf_counter()
    world = parts.world
    try:
        loss, correct = parts.step(batch, parts.amp, parts.scaler.scale if parts.scaler else None)
    except RuntimeError as e:
        if world.size == 1:
            raise
        raise lost_peer(e, world.rank, state.global_step, parts.save_dir) from None
    if not math.isfinite(loss):
        good = ckpt.latest_checkpoint(parts.save_dir)
        raise TrainingError(f"loss is {loss} at step {state.global_step} (epoch {epoch}); stopped without "
                            f"updating. Last good checkpoint: {good or 'none'}. Lower --learning_rate or check the data.")
    try:
        grad_norm, lr = apply_update(parts.model, parts.optimizer, parts.scheduler, parts.scaler)
    except NonFiniteGradient as e:
        good = ckpt.latest_checkpoint(parts.save_dir)
        raise TrainingError(f"{e} at step {state.global_step} (epoch {epoch}, loss {loss:.4g}); stopped without "
                            f"updating. Last good checkpoint: {good or 'none'}. Lower --learning_rate or check the "
                            "data.") from None
    state.global_step, state.epoch, state.batch_in_epoch = state.global_step + 1, epoch, b + 1
    state.last = {"loss": loss, "grad_norm": grad_norm, "lr": lr}
    return {"loss": loss, "accuracy": correct / n_global, "grad_norm": grad_norm, "lr": lr,
            "examples_per_sec": n_global / (time.perf_counter() - t0)}


def log_step(writer, bar, last: Dict[str, float], state: TrainState, epoch: int, log_steps: int, is_main: bool) -> None:
    """The step's curves to VisualDL, its loss to the bar, and a log line every `log_steps`."""
    step = state.global_step
    if writer:
        for k, v in last.items():
            writer.add_scalar(f"train/{k}", v, step)
    bar.update(1)
    bar.set_postfix(loss=f"{last['loss']:.4f}", acc=f"{last['accuracy']:.2f}")
    if log_steps and step % log_steps == 0 and is_main:
        logger.info("step %d/%d epoch %d: loss %.4f, accuracy %.3f, grad norm %.3f, lr %.3g, %.2f examples/s",
                    step, state.total_steps, epoch, last["loss"], last["accuracy"], last["grad_norm"], last["lr"],
                    last["examples_per_sec"])


def open_writer(log_dir: Optional[str], save_dir: str, world: World):
    """rank 0's VisualDL writer (SAVE_DIR/vdl by default); None on the other ranks."""
    if not world.is_main:
        return None
    from visualdl import LogWriter

    os.makedirs(save_dir, exist_ok=True)
    return LogWriter(logdir=log_dir or os.path.join(save_dir, "vdl"))


def train(cfg: Union[TrainConfig, RerankConfig]) -> Dict[str, float]:
    """Train a bi-encoder (TrainConfig) or a reranker (RerankConfig) as `cfg` says; returns the last
    step's metrics, the step and the checkpoint."""
    check_config(cfg)
    world = World.init()
    if cfg.batch_size % world.size:
        raise TrainingError(f"--batch_size {cfg.batch_size} is the global batch and must be divisible by the "
                            f"number of processes ({world.size})")
    make_task = reranker_task if isinstance(cfg, RerankConfig) else bi_encoder_task
    negatives = cfg.group_size - 1 if isinstance(cfg, RerankConfig) else cfg.hard_negatives
    dataset, dev = load_data(cfg, negatives, teacher=getattr(cfg, "distill_weight", 0) > 0)
    total_steps, n_epochs = plan_steps(len(dataset), cfg, world)
    resume_from, stale = prepare_save_dir(cfg.save_dir, cfg.resume, cfg.overwrite_save_dir, world)
    if resume_from:
        ckpt.check_resume(dataclasses.asdict(cfg), resume_from)
    task = make_task(cfg, resume_from, world)
    model = task.model
    optimizer, scheduler = build_optimizer(model, cfg.learning_rate, total_steps, cfg.warmup_steps,
                                           cfg.weight_decay, cfg.adam_epsilon, cfg.max_grad_norm)
    model = world.wrap(model)
    state = resume_state(resume_from, optimizer, scheduler, model, total_steps)
    clear_save_dir(cfg.save_dir, stale, world)  # only now: nothing above refused the run
    resumed_step = state.global_step if resume_from else None
    say_why_when_stopped(world, state, cfg.save_dir)
    amp, scaler = setup_amp(cfg.fp16, cfg.amp_dtype, cfg.bf16)
    parts = StepParts(model, optimizer, scheduler, world, task.step, amp, scaler, cfg.save_dir)
    saver = Saver(cfg.save_dir, cfg.keep_last, world, model, task.tokenizer, optimizer, scheduler, state,
                  task.model_cfg, dataclasses.asdict(cfg))
    writer = open_writer(cfg.log_dir, cfg.save_dir, world)
    precision = ("bfloat16 GEMMs on CPU (oneDNN)" if cpu_bf16(cfg.fp16, cfg.amp_dtype, cfg.bf16)
                 else f"AMP {amp['dtype']}" if amp else "float32")
    logger.info("training %s: %d records, global batch %d (%d ranks), %d steps; %s; %s", task.name, len(dataset),
                cfg.batch_size, world.size, total_steps, task.describe, precision)
    dev_run = (task, dev, cfg.dev_batch_size, writer)

    model.train()
    last = {}
    for epoch in range(state.epoch, n_epochs):
        if state.global_step >= total_steps:
            break
        batches = epoch_batches(len(dataset), cfg.batch_size, epoch, cfg.seed, world_size=world.size)
        first = state.batch_in_epoch  # 0 but in the epoch a resumed run starts in
        # with --max_steps the run may end inside this epoch: the bar counts what will really run
        last_batch = min(len(batches), first + total_steps - state.global_step)
        with tqdm(total=last_batch, initial=first, desc=f"epoch {epoch}", disable=not world.is_main,
                  dynamic_ncols=True, unit="step") as bar:  # closed before an error's line, not after it
            for b in range(first, last_batch):
                paddle.seed(step_seed(cfg.seed, state.global_step, world.rank))
                batch = task.collator([dataset.example(i, epoch) for i in rank_slice(batches[b], world.rank,
                                                                                       world.size)])
                last = optimise(parts, batch, state, epoch, b, len(batches[b]))
                log_step(writer, bar, last, state, epoch, cfg.log_steps, world.is_main)
                if cfg.eval_steps and state.global_step % cfg.eval_steps == 0:
                    run_dev(*dev_run, state.global_step, state, saver)
                if cfg.save_steps and state.global_step % cfg.save_steps == 0:
                    saver.save_and_prune()
        if state.batch_in_epoch >= len(batches):  # the epoch is complete
            state.epoch, state.batch_in_epoch = epoch + 1, 0
            run_dev(*dev_run, state.global_step, state, saver)
            saver.save_and_prune()

    final = saver.written.get(state.global_step)
    if final is None and resumed_step == state.global_step:
        final = resume_from  # resumed at the end: nothing left to train
    if final is None:
        final = saver.save_and_prune()
    if world.is_main:
        ckpt.point_latest(cfg.save_dir, final)
    if writer:
        writer.close()
    logger.info("done: %d steps; last checkpoint %s", state.global_step, final)
    world.shutdown()
    return {**last, "global_step": state.global_step, "checkpoint": final}
