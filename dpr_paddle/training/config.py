"""The configuration of a training run: `TrainConfig`, one field per flag of train_dense_encoder.py,
with its default and help (the command makes its flags from these fields)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..common.options import option
from ..modeling.spec import ModelSpec


@dataclass
class LoopConfig:
    """What every run of the training loop (loop.py) shares, the bi-encoder's and the reranker's: data,
    batches, the optimiser, checkpoints and logs. Recorded in each checkpoint's trainer_state.json as
    `run_config`."""

    train_data_path: str = option(None, "biencoder training data (.json, .json.gz, .jsonl)", required=True)
    dev_data_path: Optional[str] = option(None, "biencoder dev data: logs dev NLL and average rank")
    save_dir: str = option("save_biencoder", "where checkpoints go")
    log_dir: Optional[str] = option(None, "VisualDL log dir (default: SAVE_DIR/vdl)")
    batch_size: int = option(128, "questions per step (global: summed over all ranks)")
    chunk_size: int = option(0, "gradient-cache chunk size; 0 or >= batch = plain step")
    sort_chunks: bool = option(True, "gradient cache: put questions and passages of similar token length in one chunk, "
                                     "so a chunk pads little (exact either way; --no-sort_chunks keeps batch order)")
    dropout: Optional[float] = option(None, "override the encoders' dropout probabilities (default: the model's config)")
    learning_rate: float = option(2e-5, "peak learning rate")
    weight_decay: float = option(0.0, "AdamW weight decay (never on bias/LayerNorm)")
    adam_epsilon: float = option(1e-8, "AdamW epsilon")
    warmup_steps: int = option(0, "linear warmup steps, then linear decay to 0")
    epochs: int = option(40, "training epochs", aliases=("--epoches",))
    max_steps: int = option(0, "stop after this many steps (0 = epochs decide)")
    max_grad_norm: float = option(2.0, "clip gradients to this global norm (0 = no clipping)")
    seed: int = option(12345, "seed for data order, negatives and dropout")
    shuffle_positives: bool = option(False, "pick a random positive instead of the first")
    log_steps: int = option(10, "log a line every N steps (0 = never)")
    eval_steps: int = option(0, "evaluate on the dev set every N steps (0 = per epoch only)")
    save_steps: int = option(0, "save a checkpoint every N steps (0 = per epoch only)")
    keep_last: int = option(3, "keep the last N step checkpoints (the best is kept apart)")
    resume: Optional[str] = option(None, "resume from a checkpoint dir, or 'auto' for the latest in SAVE_DIR")
    overwrite_save_dir: bool = option(False, "start afresh in a SAVE_DIR that holds another run's checkpoints "
                                         "(deletes its checkpoint-*, best and latest)")
    fp16: bool = option(False, "mixed precision on GPU (float16 with loss scaling)")
    amp_dtype: str = option("float16", "AMP dtype on GPU: float16 | bfloat16")
    bf16: bool = option(False, "bfloat16 mixed precision: on a GPU, Paddle's AMP in bfloat16 (= --fp16 --amp_dtype "
                               "bfloat16); on a CPU with AMX or AVX512-BF16, the encoder layers' GEMMs with bfloat16 "
                               "inputs and float32 accumulation (oneDNN), everything else float32")
    dev_batch_size: int = option(64, "questions per dev batch")


@dataclass
class TrainConfig(LoopConfig, ModelSpec):
    """Everything a bi-encoder training run is (train_dense_encoder.py's flags)."""

    q_chunk_size: int = option(0, "chunk size for questions (default: --chunk_size)")
    p_chunk_size: int = option(0, "chunk size for passages (default: --chunk_size)")
    hard_negatives: int = option(1, "hard negatives per question (plus all in-batch negatives)")
    temperature: float = option(0.0, "softmax temperature: scores / T (0 = auto: 0.05 for cosine, as sentence-transformers' "
                                 "scale 20; 1 for dot, as DPR)")
    mask_duplicates: bool = option(True, "leave the batch's other copies of a question's positive (another question's "
                                         "positive or hard negative that is the same passage) out of its softmax, "
                                         "instead of teaching them as its negatives; --no-mask_duplicates keeps "
                                         "DPR's loss as published")
    distill_weight: float = option(0.0, "add this weight times KL(teacher || student) over each question's own "
                                        "passages (positive + hard negatives) to DPR's loss; the records must carry "
                                        "`teacher_score` per passage (python -m dpr_paddle.score_records)")
    distill_temperature: float = option(1.0, "softmax temperature of the teacher's scores in --distill_weight's KL "
                                             "(the student's use --temperature)")


@dataclass
class RerankConfig(LoopConfig):
    """Everything a cross-encoder (reranker) training run is (train_reranker.py's flags): the loop's, and
    the group each question is scored in."""

    model_name_or_path: str = option("minilm", "backbone: minilm | tiny | tiny-ernie | a model dir | a PaddleNLP name "
                                               "| a reranker dir (trained further)")
    save_dir: str = option("save_reranker", "where checkpoints go; each is a reranker directory (--rerank_model)")
    batch_size: int = option(16, "questions per step (global), each with its group of --group_size passages")
    chunk_size: int = option(0, "questions per chunk: gradients accumulate chunk by chunk (exact); 0 = one chunk")
    group_size: int = option(8, "passages scored together per question: 1 positive + GROUP_SIZE-1 hard negatives "
                                "(listwise softmax cross-entropy)")
    max_length: int = option(256, "max tokens of question + title + text")
