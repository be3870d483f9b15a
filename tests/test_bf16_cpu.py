"""bfloat16 training on CPU (modeling/bf16_cpu.py): the oneDNN GEMMs against Paddle's float32 ones, the
gradient cache's exactness carried over to this precision, and `--bf16` through every training entry point.

On a CPU without AMX or AVX512-BF16 the operators still build and run (oneDNN then computes in float32), so
the numerical and exactness tests run on every host; only the commands refuse `--bf16` there."""
import os

import numpy as np
import paddle
import pytest

from conftest import run_cli, shared_path
from dpr_paddle.modeling import bf16_cpu, fast_cpu, fused_cpu
from dpr_paddle.modeling.model import BiEncoder, set_dropout
from dpr_paddle.modeling.pooling import POOLINGS, SIMILARITIES
from dpr_paddle.modeling.pretrained import load_encoder
from dpr_paddle.training.grad_cache import cached_step, graph_reference_step
from dpr_paddle.training.step import numpy_chunks as split_chunks
from test_grad_cache import compare, dropout_on_steps, grads, setup, sorted_setup

BF16_GEMMS = bf16_cpu.GEMMS


@pytest.fixture(scope="module", autouse=True)
def built():
    if bf16_cpu.ops() is None:
        pytest.skip("the bfloat16 GEMMs did not build here (no compiler, or no oneDNN in this Paddle)")


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("shape_x,shape_w", [([2, 5, 24], [24, 40]), ([7, 16], [16, 3]), ([1, 1, 8], [8, 8])])
def test_linear_is_matmul_with_bfloat16_inputs(shape_x, shape_w):
    rng = np.random.default_rng(0)
    x, w = (paddle.to_tensor(rng.standard_normal(s).astype("float32"), stop_gradient=False) for s in (shape_x, shape_w))
    up = paddle.to_tensor(rng.standard_normal(shape_x[:-1] + shape_w[-1:]).astype("float32"))
    out = bf16_cpu.linear(x, w)
    (out * up).sum().backward()
    got = [out.numpy(), x.grad.numpy(), w.grad.numpy()]
    x.clear_gradient(), w.clear_gradient()
    ref = paddle.matmul(x, w)
    (ref * up).sum().backward()
    for g, r in zip(got, [ref.numpy(), x.grad.numpy(), w.grad.numpy()]):
        assert g.shape == r.shape and rel(g, r) < 2e-2  # bfloat16 keeps 8 bits of mantissa: ~0.4 % per input
    # with AMX or AVX512-BF16: float32 arithmetic on inputs rounded to bfloat16; without (AVX2 hosts), oneDNN
    # ignores the bf16 permission and computes in float32
    rounded = [paddle.to_tensor(t.numpy()).astype("bfloat16").astype("float32") for t in (x, w)]
    want = paddle.matmul(*rounded) if bf16_cpu.hardware() else ref
    assert rel(got[0], want.numpy()) < 1e-5


def install_bf16(encoder):
    """What --bf16 installs in an encoder, without its hardware check, so that the tests run on every CPU."""
    bf16_cpu.check_encoder(encoder)
    return fused_cpu.speed_up(fast_cpu.speed_up(encoder), BF16_GEMMS)


def bf16_model(name_or_dir):
    """A bi-encoder whose layers train fused with the bfloat16 GEMMs."""
    model = BiEncoder(load_encoder(name_or_dir)[0], load_encoder(name_or_dir)[0])
    for encoder in (model.question_model, model.ctx_model):
        install_bf16(encoder)
    return model


@pytest.mark.parametrize("pooling,similarity", [(p, s) for p in POOLINGS for s in SIMILARITIES])
def test_dropout_on_bitwise_in_bfloat16(tiny_dir, pooling, similarity):
    """The cached step replays each chunk's dropout and its bfloat16 GEMMs: bit for bit the graph reference's
    gradients in the same precision."""
    paddle.seed(0)
    model, q, p, encs, loss_fn = setup(bf16_model(tiny_dir), 7, pooling=pooling, similarity=similarity)
    chunks, sorted_loss = sorted_setup(model, q, p, loss_fn, 3, 4)
    before = fused_cpu.counts["fused_layers"]
    ref_loss, ref, loss, got = dropout_on_steps(model, encs, chunks, sorted_loss, seed=9)
    assert fused_cpu.counts["fused_layers"] > before  # the fused layers (and so the bf16 GEMMs) ran
    assert float(loss) == float(ref_loss)
    assert all(np.array_equal(ref[k], got[k]) for k in ref)
    # and they are bfloat16 gradients: not those of the float32 layers
    model, q, p, encs, loss_fn = setup(tiny_dir, 7, pooling=pooling, similarity=similarity, fast=True)
    chunks, sorted_loss = sorted_setup(model, q, p, loss_fn, 3, 4)
    f32 = dropout_on_steps(model, encs, chunks, sorted_loss, seed=9)[1]
    assert any(not np.array_equal(ref[k], f32[k]) for k in ref)


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("heads", ["ours", "library"])
def test_dropout_on_bitwise_with_either_heads_gemm(tiny_dir, monkeypatch, bf16, heads):
    """Each CPU runs whichever per-head GEMM it measured faster (fused_cpu.heads_gemm); the tests above run the
    one this host chose. Forced here, both keep the cached step bit for bit against the graph reference."""
    monkeypatch.setenv("DPR_PADDLE_HEADS_GEMM", heads)
    paddle.seed(0)
    model = bf16_model(tiny_dir) if bf16 else BiEncoder(load_encoder(tiny_dir)[0], load_encoder(tiny_dir)[0])
    if not bf16:
        fused_cpu.speed_up(fast_cpu.speed_up(model))
    chosen = {layer._dpr_gemms[1] for layer in model.sublayers() if hasattr(layer, "_dpr_gemms")}
    gemms = BF16_GEMMS if bf16 else fused_cpu.F32
    assert chosen == {gemms.ours if heads == "ours" else gemms.library[1]}
    model, q, p, encs, loss_fn = setup(model, 7, pooling="mean", similarity="cosine")
    chunks, sorted_loss = sorted_setup(model, q, p, loss_fn, 3, 4)
    ref_loss, ref, loss, got = dropout_on_steps(model, encs, chunks, sorted_loss, seed=9)
    assert float(loss) == float(ref_loss)
    assert all(np.array_equal(ref[k], got[k]) for k in ref)


def test_dropout_off_cached_step_equals_full_batch_to_bfloat16_rounding():
    """Dropout off, the cached step and the plain full-batch step run the same bfloat16 GEMMs on other row
    blocks: equal to bfloat16's rounding of the gradient scale (float32's 1e-5 does not apply)."""
    model = bf16_model("minilm")
    set_dropout(model, 0.0)
    model, q, p, encs, loss_fn = setup(model, 8)
    model.train()  # the fused (bf16) layers run in training mode only
    ref_loss, _ = graph_reference_step(encs, [split_chunks(q, 0), split_chunks(p, 0)], loss_fn)
    ref = grads(model)
    chunks, sorted_loss = sorted_setup(model, q, p, loss_fn, 3, 5)
    loss, _ = cached_step(encs, chunks, sorted_loss)
    assert abs(float(loss) - float(ref_loss)) <= 1e-3 * float(ref_loss)
    assert compare(ref, grads(model)) <= 2e-2


def train_args(tmp_path, data, *extra):
    return ["--train_data_path", data, "--model_name_or_path", "tiny", "--batch_size", "4", "--chunk_size", "2",
            "--max_steps", "1", "--save_dir", tmp_path / "run", "--max_passage_length", "32", *extra]


def one_line(proc, *fragments):
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for f in fragments:
        assert f in last, last


@pytest.mark.parametrize("script,extra", [("train_dense_encoder.py", ["--bf16"]),
                                          ("train_dense_encoder.py", ["--fp16", "--amp_dtype", "bfloat16"]),
                                          ("train_reranker.py", ["--bf16", "--group_size", "2"])])
def test_every_training_command_runs_bf16_or_refuses_it_in_one_line(tmp_path, script, extra):
    data = shared_path("data", "squad1_open", "train.json")
    args = train_args(tmp_path, data, *extra)
    if script == "train_reranker.py":
        args = [a for a in args if a not in ("--max_passage_length", "32")] + ["--max_length", "48"]
    proc = run_cli(script, *args, check=False)
    if bf16_cpu.hardware():
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "bfloat16 GEMMs on CPU (oneDNN)" in proc.stderr
        saved = sorted(os.listdir(tmp_path / "run"))
        off = run_cli(script, *args, "--overwrite_save_dir", check=False, env={"DPR_PADDLE_FUSED": "0"})
        one_line(off, "--bf16", "DPR_PADDLE_FUSED=0")
        assert sorted(os.listdir(tmp_path / "run")) == saved  # refused before --overwrite_save_dir deleted anything
    else:
        one_line(proc, "--bf16 on a CPU needs AMX or AVX512-BF16")


def test_python_api_refuses_bf16_where_it_cannot_run(monkeypatch, tiny_dir):
    from dpr_paddle.modeling.cross_encoder import build_cross_encoder

    model = BiEncoder(load_encoder(tiny_dir)[0])
    cross = build_cross_encoder(tiny_dir, trained=False)[0]
    monkeypatch.setenv("DPR_PADDLE_FUSED", "0")
    for m in (model, cross):
        with pytest.raises(bf16_cpu.Bf16Unavailable, match="--bf16"):
            m.speed_up_training(bf16=True)


@pytest.mark.parametrize("groups,chunk,sort", [(6, 2, True), (7, 3, False)])
def test_reranker_chunks_dropout_on_bitwise_in_bfloat16(tiny_dir, groups, chunk, sort):
    """The reranker's chunked groups with the bfloat16 GEMMs: bit for bit its graph reference."""
    from dpr_paddle.modeling.cross_encoder import build_cross_encoder
    from dpr_paddle.training.distributed import World
    from dpr_paddle.training.rerank import rerank_step
    from test_rerank import pair_batch

    paddle.seed(0)
    model = build_cross_encoder(tiny_dir, trained=False)[0]
    install_bf16(model.backbone)
    set_dropout(model, 0.2)
    model.train()
    batch = pair_batch(np.random.default_rng(1), groups, 3)
    runs = []
    for reference in (True, False):
        paddle.seed(7)
        before = fused_cpu.counts["fused_layers"]
        loss, _ = rerank_step(model, batch, chunk, World(), sort_chunks=sort, reference=reference)
        assert fused_cpu.counts["fused_layers"] > before
        runs.append((loss, grads(model)))
    (ref_loss, ref), (loss, got) = runs
    assert ref.keys() == got.keys() and len(ref) > 10
    assert all(np.array_equal(ref[k], got[k]) for k in ref)
    assert abs(loss - ref_loss) <= 1e-6 * abs(ref_loss)


@pytest.fixture
def relu_dir(tiny_dir, tmp_path):
    """The tiny BERT with ReLU feed-forward layers: a layer the fused kernels do not cover."""
    import json
    import shutil

    path = tmp_path / "tiny-relu"
    shutil.copytree(tiny_dir, path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(dict(config, hidden_act="relu")))
    return str(path)


def test_bf16_refuses_an_encoder_whose_layers_would_run_float32(relu_dir, tmp_path):
    """--bf16 exists only inside the fused layers: an encoder with a layer they do not cover is refused in one
    line by the Python API and the command (which leaves an earlier run's checkpoints), not half run in
    float32."""
    from dpr_paddle.modeling.cross_encoder import build_cross_encoder

    for model in (BiEncoder(load_encoder(relu_dir)[0]), build_cross_encoder(relu_dir, trained=False)[0]):
        encoder = getattr(model, "backbone", None) or model.question_model
        with pytest.raises(bf16_cpu.Bf16Unavailable, match="activation relu, not GELU"):
            bf16_cpu.check_encoder(encoder)
        if bf16_cpu.hardware():
            with pytest.raises(bf16_cpu.Bf16Unavailable, match="activation relu"):
                model.speed_up_training(bf16=True)
    if not bf16_cpu.hardware():
        return
    data = shared_path("data", "squad1_open", "train.json")
    args = train_args(tmp_path, data)
    run_cli("train_dense_encoder.py", *args)
    saved = sorted(os.listdir(tmp_path / "run"))
    args[args.index("tiny")] = relu_dir
    one_line(run_cli("train_dense_encoder.py", *args, "--bf16", "--overwrite_save_dir", check=False),
             "--bf16", "activation relu, not GELU")
    assert sorted(os.listdir(tmp_path / "run")) == saved
