"""Training: optimizer settings, exact resume, VisualDL curves, and clear errors."""
import glob
import json
import os

import numpy as np
import paddle
import pytest

from conftest import checkpoint_params, run_cli
from dpr_paddle.modeling.model import BiEncoder
from dpr_paddle.modeling.pretrained import load_encoder
from dpr_paddle.training.optim import build_optimizer, global_grad_norm, no_decay


def tiny_args(sample_dir, save_dir, *extra):
    return ["--model_name_or_path", "tiny", "--train_data_path", os.path.join(sample_dir, "train.json"),
            "--batch_size", "8", "--chunk_size", "3", "--max_passage_length", "48", "--max_query_length", "16",
            "--learning_rate", "1e-3", "--warmup_steps", "2", "--save_dir", str(save_dir), "--log_steps", "1", *extra]


def test_clipping_weight_decay_and_schedule():
    model = BiEncoder(load_encoder("tiny")[0], load_encoder("tiny")[0])
    opt, sched = build_optimizer(model, 1e-3, total_steps=10, warmup_steps=2, weight_decay=0.01, max_grad_norm=0.5)
    # the clip the optimizer applies is a global-norm clip at max_grad_norm
    assert isinstance(opt._grad_clip, paddle.nn.ClipGradByGlobalNorm) and opt._grad_clip.clip_norm == 0.5
    ids = paddle.to_tensor(np.random.default_rng(0).integers(1000, 5000, (4, 12)))
    loss = (model(ids) ** 2).sum() * 100
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    before = global_grad_norm(params)
    original = params[0].grad.numpy().copy()
    assert before > 0.5
    clipped = opt._grad_clip([(p, p.grad) for p in params])
    after = float(paddle.sqrt(paddle.add_n([paddle.sum(g * g) for _, g in clipped])))
    assert after <= 0.5 * (1 + 1e-5) and abs(after - 0.5) < 1e-3  # scaled down to the limit, not below
    np.testing.assert_allclose(clipped[0][1].numpy(), original * (0.5 / before), rtol=1e-4, atol=1e-12)  # same direction
    # no weight decay on bias and LayerNorm
    decayed = {n for n, p in model.named_parameters() if opt._apply_decay_param_fun(p.name)}
    assert any(n.endswith("linear1.weight") for n in decayed)
    assert not any(n.endswith("bias") or "norm" in n for n in decayed)
    assert no_decay("question_model.encoder.layers.0.norm1.weight") and not no_decay("x.linear1.weight")
    # linear warmup over 2 steps, then linear decay to 0 at step 10
    lrs = []
    for _ in range(11):
        lrs.append(opt.get_lr())
        sched.step()
    assert np.allclose(lrs, [0, 5e-4, 1e-3, 8.75e-4, 7.5e-4, 6.25e-4, 5e-4, 3.75e-4, 2.5e-4, 1.25e-4, 0], atol=1e-9)


def test_resume_in_mid_epoch_is_exact(sample_dir, tmp_path):
    # 1,400 records / batch 8 = 175 steps per epoch; stop at 3, go on to 6.
    common = ["--max_steps", "6", "--epochs", "1", "--save_steps", "3", "--keep_last", "5"]
    run_cli("train_dense_encoder.py", *tiny_args(sample_dir, tmp_path / "straight", *common))
    # an interrupted run leaves its step-3 checkpoint behind; resume a copy of it
    import shutil

    shutil.copytree(tmp_path / "straight" / "checkpoint-3", tmp_path / "resumed" / "checkpoint-3")
    proc = run_cli("train_dense_encoder.py", *tiny_args(sample_dir, tmp_path / "resumed", *common, "--resume", "auto"))
    assert "resuming from" in proc.stderr and "at step 3 (epoch 0, batch 3)" in proc.stderr
    state = json.load(open(tmp_path / "resumed" / "checkpoint-6" / "trainer_state.json"))
    assert (state["global_step"], state["epoch"], state["batch_in_epoch"]) == (6, 0, 6)
    a, b = checkpoint_params(tmp_path / "straight" / "checkpoint-6"), checkpoint_params(tmp_path / "resumed" / "checkpoint-6")
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) == 0.0  # exact, as the README says
    # and the resumed model did move away from step 3
    c = checkpoint_params(tmp_path / "straight" / "checkpoint-3")
    assert max(float(np.abs(a[k] - c[k]).max()) for k in a) > 1e-4


def test_visualdl_curves_and_checkpoint_contents(sample_dir, tmp_path):
    from visualdl import LogReader

    proc = run_cli("train_dense_encoder.py", *tiny_args(sample_dir, tmp_path / "run", "--max_steps", "4", "--epochs", "1",
                                                       "--dev_data_path", os.path.join(sample_dir, "dev.json"),
                                                       "--eval_steps", "2"))
    logged = {}
    for line in proc.stderr.splitlines():
        if "dpr_paddle.training.loop: step " in line:  # the loop logs as its module
            step = int(line.split("step ")[1].split("/")[0])
            logged[step] = float(line.split("loss ")[1].split(",")[0])
    assert sorted(logged) == [1, 2, 3, 4]
    files = glob.glob(str(tmp_path / "run" / "vdl" / "vdlrecords.*.log"))
    assert len(files) == 1
    reader = LogReader(file_path=files[0])
    tags = set(reader.get_tags()["scalar"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/accuracy", "train/examples_per_sec",
            "dev/nll", "dev/avg_rank", "dev/accuracy"} <= tags
    loss = {r.id: r.value for r in reader.get_data("scalar", "train/loss")}
    assert sorted(loss) == [1, 2, 3, 4]
    for step, value in logged.items():
        assert abs(loss[step] - value) <= 1e-4 * max(1.0, abs(value))
    assert sorted(r.id for r in reader.get_data("scalar", "dev/avg_rank")) == [2, 4]
    # checkpoints carry encoders the other scripts take, plus the config and training state
    best = tmp_path / "run" / "best"
    cfg = json.load(open(best / "dpr_config.json"))
    assert cfg["max_passage_length"] == 48 and cfg["max_query_length"] == 16
    from paddlenlp.transformers import AutoModel, AutoTokenizer

    AutoModel.from_pretrained(str(best / "context_encoder"))
    assert AutoTokenizer.from_pretrained(str(best / "question_encoder"))("hi")["input_ids"] == [101, 7632, 102]
    assert set(json.load(open(best / "trainer_state.json"))) >= {"global_step", "epoch", "batch_in_epoch", "scheduler"}


@pytest.mark.parametrize("extra,message", [
    (["--batch_size", "0"], "--batch_size must be >= 1"),
    (["--chunk_size", "-1"], "--chunk_size must be >= 1"),
    (["--model_name_or_path", "/nonexistent/model/dir"], "/nonexistent/model/dir: no such directory"),
    (["--resume", "/nonexistent/ckpt"], "no such checkpoint directory"),
    (["--save_dir", "{a_file}/run"], "{a_file}/run/checkpoint: the checkpoint cannot be written there"),
    (["--dev_data_path", "/nonexistent/dev.json"], "/nonexistent/dev.json: dev data not found"),
])
def test_bad_settings_fail_clearly(sample_dir, tmp_path, extra, message):
    a_file = tmp_path / "a_file"  # a path under a regular file cannot be a directory
    a_file.write_text("")
    extra, message = [x.format(a_file=a_file) for x in extra], message.format(a_file=a_file)
    proc = run_cli("train_dense_encoder.py", *tiny_args(sample_dir, tmp_path / "x"), *extra, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_empty_training_file(tmp_path, sample_dir):
    empty = tmp_path / "empty.json"
    empty.write_text("")
    args = tiny_args(sample_dir, tmp_path / "x")
    args[args.index("--train_data_path") + 1] = str(empty)
    proc = run_cli("train_dense_encoder.py", *args, check=False)
    assert proc.returncode == 2 and f"{empty}: line 1: file is empty" in proc.stderr


def test_nan_loss_stops_and_keeps_last_good_checkpoint(sample_dir, tmp_path):
    args = tiny_args(sample_dir, tmp_path / "nan", "--max_steps", "5", "--epochs", "1", "--save_steps", "1",
                     "--max_grad_norm", "0", "--warmup_steps", "0")
    args[args.index("--learning_rate") + 1] = "1e38"  # the first update overflows the weights
    proc = run_cli("train_dense_encoder.py", *args, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "loss is nan at step 1" in proc.stderr and "Last good checkpoint" in proc.stderr
    assert [os.path.basename(p) for p in glob.glob(str(tmp_path / "nan" / "checkpoint-*"))] == ["checkpoint-1"]


def test_projection_checkpoint_round_trip(sample_dir, tmp_path):
    run_cli("train_dense_encoder.py", *tiny_args(sample_dir, tmp_path / "proj", "--max_steps", "2", "--epochs", "1",
                                                 "--projection_dim", "16"))
    ckpt = tmp_path / "proj" / "latest"
    assert json.load(open(ckpt / "dpr_config.json"))["projection_dim"] == 16
    assert (ckpt / "context_encoder" / "dpr_projection.npz").exists()
    ctx = tmp_path / "p.tsv"
    with open(os.path.join(sample_dir, "passages.tsv"), encoding="utf-8") as f:
        ctx.write_text("".join(f.readlines()[:11]), encoding="utf-8")
    run_cli("generate_dense_embedding.py", "--model_file", ckpt, "--ctx_file", ctx, "--out_file", tmp_path / "emb")
    vecs = np.load(tmp_path / "emb_0" / "vectors.npy")
    assert vecs.shape == (10, 16)
    # the same vectors from the dygraph backend, which applies the saved projection eagerly
    run_cli("generate_dense_embedding.py", "--model_file", ckpt, "--ctx_file", ctx, "--out_file", tmp_path / "eager",
            "--backend", "dygraph")
    np.testing.assert_allclose(np.load(tmp_path / "eager_0" / "vectors.npy"), vecs, atol=1e-5)
    # and what is applied is the trained projection saved next to the encoder, not a fresh one
    from dpr_paddle.modeling.builder import build_biencoder

    model, _ = build_biencoder(str(ckpt / "context_encoder"), str(ckpt / "context_encoder"), shared=True,
                               projection_dim=16)
    saved = np.load(ckpt / "context_encoder" / "dpr_projection.npz")
    np.testing.assert_array_equal(model.q_proj.weight.numpy(), saved["weight"])
    np.testing.assert_array_equal(model.q_proj.bias.numpy(), saved["bias"])


def test_max_steps_alone_runs_as_many_epochs_as_needed(sample_dir, tmp_path):
    # dev.json: 200 records / batch 64 = 4 batches an epoch (the last one partial); 6 steps cross into epoch 1
    args = tiny_args(sample_dir, tmp_path / "ms", "--epochs", "0", "--max_steps", "6")
    args[args.index("--train_data_path") + 1] = os.path.join(sample_dir, "dev.json")
    args[args.index("--batch_size") + 1] = "64"
    run_cli("train_dense_encoder.py", *args)
    state = json.load(open(tmp_path / "ms" / "latest" / "trainer_state.json"))
    assert (state["global_step"], state["epoch"], state["batch_in_epoch"]) == (6, 1, 2)


def test_a_run_refused_while_building_its_model_leaves_the_old_checkpoints(sample_dir, tmp_path):
    """--overwrite_save_dir deletes only after every check has passed, the model's included: a refused run
    (here a length past the encoder's positions, found when the model is built) keeps the old run."""
    save = tmp_path / "run"
    run_cli("train_dense_encoder.py", *tiny_args(sample_dir, save, "--max_steps", "1"))
    saved = sorted(os.listdir(save))
    args = tiny_args(sample_dir, save, "--max_steps", "1", "--overwrite_save_dir")
    args[args.index("--max_passage_length") + 1] = "4096"
    proc = run_cli("train_dense_encoder.py", *args, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "4096" in proc.stderr.strip().splitlines()[-1]
    assert sorted(os.listdir(save)) == saved


def test_a_fresh_run_never_reports_another_runs_checkpoint(sample_dir, tmp_path):
    # Training twice into one save_dir used to keep the first run's checkpoint-N and point
    # `latest` at it when the second run ended at the same step: the new model was lost.
    save = tmp_path / "run"
    run_cli("train_dense_encoder.py", *tiny_args(sample_dir, save, "--max_steps", "3", "--epochs", "1",
                                                 "--save_steps", "2"))
    first = checkpoint_params(save / "checkpoint-3")
    proc = run_cli("train_dense_encoder.py", *tiny_args(sample_dir, save, "--max_steps", "3", "--epochs", "1",
                                                        "--learning_rate", "5e-3"), check=False)
    assert proc.returncode == 2
    assert f"error: {save} already holds checkpoints of another run (checkpoint-3)" in proc.stderr
    assert "--resume auto" in proc.stderr and "--overwrite_save_dir" in proc.stderr
    os.makedirs(save / "checkpoint-4.abc123.tmp")  # what a run killed mid-save leaves
    (save / "vdl" / "old.log").write_text("the old run's curves")
    run_cli("train_dense_encoder.py", *tiny_args(sample_dir, save, "--max_steps", "3", "--epochs", "1",
                                                 "--learning_rate", "5e-3", "--overwrite_save_dir"))
    assert sorted(os.listdir(save)) == ["checkpoint-3", "latest", "vdl"]  # the old checkpoint-2 went too
    assert "old.log" not in os.listdir(save / "vdl")
    second = checkpoint_params(save / "latest")
    assert max(float(np.abs(first[k] - second[k]).max()) for k in first) > 1e-4  # the new run's model
    # resuming a finished run trains nothing and keeps its checkpoint; a stale temp folder goes
    os.makedirs(save / "best.xyz.tmp")
    proc = run_cli("train_dense_encoder.py", *tiny_args(sample_dir, save, "--max_steps", "3", "--epochs", "1",
                                                        "--resume", "auto"))
    assert os.path.realpath(save / "latest") == os.path.realpath(save / "checkpoint-3")
    assert not os.path.exists(save / "best.xyz.tmp") and "removed unfinished saves" in proc.stderr
    again = checkpoint_params(save / "latest")
    assert all(np.array_equal(second[k], again[k]) for k in second)
