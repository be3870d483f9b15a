"""Data parallelism proven on CPU: `paddle.distributed.launch --nproc_per_node 2` (gloo)."""
import glob
import os
import subprocess
import sys

import numpy as np
import paddle

from conftest import checkpoint_params, ROOT, run_cli
from dpr_paddle.data import epoch_batches, rank_slice


def launch(script, log_dir, *args, check=True):
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(log_dir),
           os.path.join(ROOT, script), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    logs = "".join(open(f, encoding="utf-8", errors="replace").read() for f in sorted(glob.glob(str(log_dir / "workerlog.*"))))
    if check and proc.returncode != 0:
        raise AssertionError(f"launch failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}\n{logs[-4000:]}")
    return proc, logs


def train_args(sample_dir, save_dir, *extra):
    return ["--model_name_or_path", "tiny", "--train_data_path", os.path.join(sample_dir, "train.json"),
            "--chunk_size", "2", "--epochs", "1", "--max_passage_length", "32", "--max_query_length", "16",
            "--save_dir", str(save_dir), "--log_steps", "1", *extra]


def test_rank_slices_are_disjoint_and_in_single_process_order():
    for epoch in range(3):
        for batch in epoch_batches(101, 8, epoch, seed=5, world_size=2):
            a, b = rank_slice(batch, 0, 2), rank_slice(batch, 1, 2)
            assert a + b == batch and not set(a) & set(b) and len(a) == len(b)
    # one process keeps the last partial batch; two ranks keep it only when it splits evenly
    assert len(epoch_batches(101, 8, 0, seed=5, world_size=1)[-1]) == 5
    assert len(epoch_batches(101, 8, 0, seed=5, world_size=2)) == 12
    assert len(epoch_batches(102, 8, 0, seed=5, world_size=2)[-1]) == 6


def test_two_ranks_equal_one_process_with_the_doubled_batch(sample_dir, tmp_path):
    # Dropout off (each rank draws its own masks), gradient cache on (4 questions per rank, chunks of 2).
    # epsilon=1 makes AdamW's step linear in the gradient: with the default 1e-8 a random-init
    # encoder's ~0 gradients turn float32 summation-order noise into full +-lr steps.
    # The questions share 3 positives, so a batch holds copies of a positive on both ranks: each rank must leave
    # the other's copies out of its questions' softmax too (the passage keys are gathered), as one process does.
    import json

    from dpr_paddle.data import BiEncoderDataset, read_biencoder_records
    from dpr_paddle.data.collator import passage_keys
    from dpr_paddle.modeling.model import positive_copies

    records = json.load(open(os.path.join(sample_dir, "train.json"), encoding="utf-8"))[:64]
    for i, r in enumerate(records):
        r["positive_ctxs"] = records[i % 3]["positive_ctxs"]
    (tmp_path / "train.json").write_text(json.dumps(records), encoding="utf-8")
    data = BiEncoderDataset(read_biencoder_records(str(tmp_path / "train.json")), hard_negatives=1, seed=12345)
    batch = [data.example(i) for i in epoch_batches(64, 8, 0, 12345, world_size=2)[0]]
    copies = positive_copies(passage_keys([p for e in batch for p in e.passages]), np.arange(8) * 2)  # [8, 16]
    assert copies[:4, 8:].any() or copies[4:, :8].any()  # across the ranks' halves
    common = ["--batch_size", "8", "--max_steps", "3", "--dropout", "0", "--learning_rate", "0.05",
              "--adam_epsilon", "1", "--warmup_steps", "0"]
    run_cli("train_dense_encoder.py", *train_args(tmp_path, tmp_path / "one", *common))
    launch("train_dense_encoder.py", tmp_path / "log", *train_args(tmp_path, tmp_path / "two", *common))
    a, b = checkpoint_params(tmp_path / "one" / "checkpoint-3"), checkpoint_params(tmp_path / "two" / "checkpoint-3")
    init = params_from_dir(tmp_path)
    diff = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    moved = max(float(np.abs(a[k] - init[k]).max()) for k in a)
    assert moved > 1e-3, moved
    assert diff <= 1e-5, diff
    assert not os.path.exists(tmp_path / "two" / "checkpoint-3.tmp")


def params_from_dir(tmp_path):
    from dpr_paddle.modeling.pretrained import resolve_model

    state = paddle.load(os.path.join(resolve_model("tiny"), "model_state.pdparams"))
    return {f"{t}/{k}": v.numpy() for t in ("question_encoder", "context_encoder") for k, v in state.items()}


def test_dropout_on_two_ranks_train_and_resume(sample_dir, tmp_path):
    from visualdl import LogReader

    common = ["--batch_size", "16", "--learning_rate", "5e-3", "--warmup_steps", "2", "--hard_negatives", "1"]
    launch("train_dense_encoder.py", tmp_path / "log", *train_args(sample_dir, tmp_path / "run", *common,
                                                                   "--max_steps", "40", "--save_steps", "20",
                                                                   "--keep_last", "5"))
    (vdl,) = glob.glob(str(tmp_path / "run" / "vdl" / "vdlrecords.*.log"))
    loss = [r.value for r in LogReader(file_path=vdl).get_data("scalar", "train/loss")]
    assert len(loss) == 40
    assert np.mean(loss[-10:]) < np.mean(loss[:10]) - 0.3, loss  # it learns
    # only rank 0 wrote checkpoints and curves
    assert sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "run" / "checkpoint-*"))) == \
        ["checkpoint-20", "checkpoint-40"]
    # resume under launch from step 20 reaches the same step 40 (dropout is seeded per step and rank)
    import shutil

    shutil.copytree(tmp_path / "run" / "checkpoint-20", tmp_path / "again" / "checkpoint-20")
    _, logs = launch("train_dense_encoder.py", tmp_path / "log2", *train_args(sample_dir, tmp_path / "again", *common,
                                                                              "--max_steps", "40", "--save_steps", "20",
                                                                              "--resume", "auto"))
    assert "resuming from" in logs
    a, b = checkpoint_params(tmp_path / "run" / "checkpoint-40"), checkpoint_params(tmp_path / "again" / "checkpoint-40")
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) == 0.0  # exact, as the README says


def test_batch_not_divisible_by_world_size_is_a_clear_error(sample_dir, tmp_path):
    proc, logs = launch("train_dense_encoder.py", tmp_path / "log", *train_args(sample_dir, tmp_path / "x", "--batch_size", "7"),
                        check=False)
    assert proc.returncode != 0
    assert "--batch_size 7 is the global batch and must be divisible by the number of processes (2)" in logs
    assert "Traceback" not in logs
    assert not glob.glob(str(tmp_path / "x" / "checkpoint-*"))


def test_embedding_shard_follows_rank(sample_dir, tmp_path):
    ctx = tmp_path / "p.tsv"
    with open(os.path.join(sample_dir, "passages.tsv"), encoding="utf-8") as f:
        ctx.write_text("".join(f.readlines()[:31]), encoding="utf-8")
    launch("generate_dense_embedding.py", tmp_path / "log", "--model_name_or_path", "tiny", "--ctx_file", ctx,
           "--out_file", tmp_path / "emb", "--max_passage_length", "32")
    from dpr_paddle.index.shards import load_shards

    shards = load_shards(str(tmp_path / "emb"))
    assert [(s.meta["shard_id"], s.meta["num_shards"], len(s.ids)) for s in shards] == [(0, 2, 15), (1, 2, 15)]
    assert [i for s in shards for i in s.ids] == [str(i) for i in range(1, 31)]


def test_a_failing_rank_stops_the_job_cleanly(sample_dir, tmp_path):
    import time

    import psutil

    save = tmp_path / "run"
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(tmp_path / "log"),
           os.path.join(ROOT, "train_dense_encoder.py"),
           *train_args(sample_dir, save, "--batch_size", "8", "--max_steps", "100000", "--save_steps", "20")]
    launcher = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not (save / "checkpoint-20").exists():
            assert time.time() < deadline and launcher.poll() is None, "training did not reach step 20"
            time.sleep(0.5)
        victims = [p for p in psutil.process_iter(["cmdline"])
                   if str(save) in " ".join(p.info["cmdline"] or []) and "paddle.distributed.launch" not in
                   " ".join(p.info["cmdline"] or []) and p.environ().get("PADDLE_TRAINER_ID") == "1"]
        assert len(victims) == 1
        victims[0].kill()  # rank 1 dies without warning
        assert launcher.wait(timeout=120) != 0
    finally:
        if launcher.poll() is None:
            launcher.kill()
    log0 = open(tmp_path / "log" / "workerlog.0", encoding="utf-8", errors="replace").read()
    # rank 0 either sees the dead peer in a collective or is stopped by the launcher first (a loaded machine)
    assert ("rank 0 lost the other ranks" in log0 or "rank 0 was stopped (SIGTERM)" in log0), log0[-2000:]
    assert "--resume auto" in log0
    leftovers = [p.name for p in save.iterdir() if p.name.endswith((".tmp", ".old"))]
    assert not leftovers  # no half-written checkpoint
    from dpr_paddle.training.checkpoint import list_checkpoints

    for _, path in list_checkpoints(str(save)):  # every checkpoint on disk is complete and loadable
        assert checkpoint_params(path)


def test_a_rank_stopped_by_the_launcher_says_how_to_resume(tmp_path):
    """The launcher stops every rank with SIGTERM once one fails, at times before a rank's collective
    notices: the rank logs what happened and how to resume, then dies of SIGTERM as before."""
    import signal
    import time

    code = ("import logging, time; logging.basicConfig(level=logging.INFO)\n"
            "from dpr_paddle.training.distributed import World\n"
            "from dpr_paddle.training.loop import TrainState, say_why_when_stopped\n"
            "state = TrainState(); state.global_step = 7\n"
            f"say_why_when_stopped(World(rank=1, size=2), state, {str(tmp_path)!r})\n"
            "print('ready', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM
    assert "rank 1 was stopped (SIGTERM) at step 7" in err and "resume with --resume auto from the start" in err
