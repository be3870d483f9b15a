"""The fused CPU training kernels (modeling/fused_ops.cc) against Paddle's eager ops: forward and
gradients within float32 tolerance on random shapes, dropout masks that follow paddle.seed, a model
whose fused forward equals the eager one, the switch, and the fallback without a compiler. The
gradient cache's exactness tests (tests/test_grad_cache.py, the `fast_cpu` cases) run with these
kernels on."""
import os
import subprocess
import sys

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from conftest import ROOT
from dpr_paddle.common.runtime import cpu_info
from dpr_paddle.modeling import fused_cpu


@pytest.fixture(scope="module")
def ops():
    built = fused_cpu.ops()
    if built is None:
        if os.environ.get("CI"):
            pytest.fail("the fused CPU kernels did not build on CI (g++ is there)")
        pytest.skip("no C++ compiler here")
    return built


def with_grads(fn, inputs, upstream):
    for t in inputs:
        t.clear_gradient()
    out = fn()
    (out * upstream).sum().backward()
    return [out.numpy()] + [t.grad.numpy().copy() for t in inputs]


def leaf(*shape, rng):
    t = paddle.to_tensor(rng.standard_normal(shape).astype("float32"))
    t.stop_gradient = False
    return t


def close(a, b, tol=2e-5):
    for x, y in zip(a, b):
        assert np.abs(x - y).max() <= tol * max(1.0, np.abs(y).max()), np.abs(x - y).max()


@pytest.mark.parametrize("shape", [(3, 5, 16), (2, 7, 24), (1, 1, 8), (4, 9, 64)])
def test_bias_gelu_equals_eager(ops, shape):
    rng = np.random.default_rng(sum(shape))
    x, b = leaf(*shape, rng=rng), leaf(shape[-1], rng=rng)
    up = paddle.to_tensor(rng.standard_normal(shape).astype("float32"))
    close(with_grads(lambda: fused_cpu.bias_gelu(x, b), [x, b], up), with_grads(lambda: F.gelu(x + b), [x, b], up))


@pytest.mark.parametrize("shape,p", [((3, 5, 16), 0.0), ((2, 7, 24), 0.1), ((4, 9, 64), 0.5), ((1, 1, 8), 0.0)])
def test_bias_dropout_residual_layernorm_equals_eager(ops, shape, p):
    rng = np.random.default_rng(sum(shape))
    x, b, r = leaf(*shape, rng=rng), leaf(shape[-1], rng=rng), leaf(*shape, rng=rng)
    norm = paddle.nn.LayerNorm(shape[-1], epsilon=1e-12)
    norm.weight.set_value(paddle.to_tensor(rng.standard_normal(shape[-1]).astype("float32")))
    norm.bias.set_value(paddle.to_tensor(rng.standard_normal(shape[-1]).astype("float32")))
    up = paddle.to_tensor(rng.standard_normal(shape).astype("float32"))
    seed = 1234
    keep = ops.dpr_bias_dropout_residual_ln(x, b, r, norm.weight, norm.bias, seed, p, 1e-12)[4]
    scale = paddle.to_tensor(keep.numpy().astype("float32") / (1 - p))  # the op's own mask, as eager ops

    def fused():
        return ops.dpr_bias_dropout_residual_ln(x, b, r, norm.weight, norm.bias, seed, p, 1e-12)[0]

    params = [x, b, r, norm.weight, norm.bias]
    close(with_grads(fused, params, up), with_grads(lambda: norm(r + (x + b) * scale), params, up))
    if p:
        assert abs(float(keep.astype("float32").mean()) - (1 - p)) < 0.1


@pytest.mark.parametrize("shape,p", [((2, 3, 5, 5), 0.0), ((3, 4, 7, 7), 0.1), ((1, 2, 1, 9), 0.3)])
def test_softmax_dropout_equals_eager(ops, shape, p):
    rng = np.random.default_rng(sum(shape))
    s = leaf(*shape, rng=rng)
    mask_np = np.where(rng.random((shape[0], 1, 1, shape[3])) < 0.3, -1e4, 0.0).astype("float32")
    mask_np[..., 0] = 0.0  # every row keeps one position
    mask = paddle.to_tensor(mask_np)
    up = paddle.to_tensor(rng.standard_normal(shape).astype("float32"))
    keep = ops.dpr_softmax_dropout(s, mask, 0.125, 99, p)[2]
    scale = paddle.to_tensor(keep.numpy().astype("float32") / (1 - p))
    close(with_grads(lambda: ops.dpr_softmax_dropout(s, mask, 0.125, 99, p)[0], [s], up),
          with_grads(lambda: F.softmax(s * 0.125 + mask) * scale, [s], up))


def bf16_rounded(t):
    return paddle.to_tensor(t.numpy()).astype("bfloat16").astype("float32")


# tiles are 6 rows x 32 (AVX-512) or 16 (AVX2) columns: these cover whole tiles, remainders and one-row cases
@pytest.mark.parametrize("lead,m,k,n", [((2, 3), 5, 8, 6), ((1, 2), 13, 32, 40), ((2,), 12, 17, 64), ((1,), 1, 3, 1)])
@pytest.mark.parametrize("transpose_b", [False, True])
@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("impl", ["ours", "library"])
def test_heads_matmul_equals_matmul(ops, lead, m, k, n, transpose_b, bf16, impl):
    """Both candidates for attention's per-head GEMM (fused_cpu.heads_gemm picks one per CPU) compute the same:
    ours (heads_matmul), and the library's (Paddle's MKL matmul in float32, oneDNN's batched matmul in bf16)."""
    from dpr_paddle.modeling import bf16_cpu

    if impl == "library" and bf16 and bf16_cpu.ops() is None:
        pytest.skip("the bfloat16 GEMMs did not build here")
    gemms = bf16_cpu.GEMMS if bf16 else fused_cpu.F32
    gemm = gemms.ours if impl == "ours" else gemms.library[1]
    rng = np.random.default_rng(m * k + n)
    a, b = leaf(*lead, m, k, rng=rng), leaf(*lead, *((n, k) if transpose_b else (k, n)), rng=rng)
    up = paddle.to_tensor(rng.standard_normal([*lead, m, n]).astype("float32"))
    got = with_grads(lambda: gemm(a, b, transpose_b), [a, b], up)
    f32 = with_grads(lambda: paddle.matmul(a, b, transpose_y=transpose_b), [a, b], up)
    if not bf16:
        close(got, f32)
        return
    # bfloat16 inputs, float32 accumulation: the product of the rounded inputs, and the gradients of the
    # rounded inputs and upstream gradient (each backward GEMM rounds its inputs too)
    ra, rb, rup = bf16_rounded(a), bf16_rounded(b), bf16_rounded(up)
    want_a = paddle.matmul(rup, rb, transpose_y=not transpose_b)
    want_b = paddle.matmul(rup, ra, transpose_x=True) if transpose_b else paddle.matmul(ra, rup, transpose_x=True)
    want = [paddle.matmul(ra, rb, transpose_y=transpose_b).numpy(), want_a.numpy(), want_b.numpy()]
    if impl == "library" and not bf16_cpu.hardware():
        # below AVX512-BF16 (e.g. under DPR_PADDLE_MAX_ISA=avx2) oneDNN rounds or computes float32, by its own ISA
        # checks; --bf16 is refused there, so only the values are checked: one of the two
        err = [max(np.abs(x - y).max() / max(1.0, np.abs(y).max()) for x, y in zip(got, r)) for r in (want, f32)]
        assert min(err) <= 1e-5, err
        return
    close(got, want, tol=1e-5)


def test_masks_follow_paddle_seed(ops):
    x = paddle.ones([64, 128])
    b, norm = paddle.zeros([128]), paddle.nn.LayerNorm(128)

    def masks(seed):
        paddle.seed(seed)
        return [fused_cpu.bias_dropout_residual_ln(x, b, x, norm, 0.1).numpy() for _ in range(2)]

    first, again, other = masks(5), masks(5), masks(6)
    assert all(np.array_equal(a, c) for a, c in zip(first, again))  # a replayed stream replays the masks
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[0], other[0])


def tiny_bert(tiny_dir, dropout):
    from dpr_paddle.modeling.model import BiEncoder, set_dropout
    from dpr_paddle.modeling.pretrained import load_encoder

    model = BiEncoder(load_encoder(tiny_dir)[0], load_encoder(tiny_dir)[0])
    if dropout is not None:
        set_dropout(model, dropout)
    return model


def test_a_fused_model_equals_the_eager_one(ops, tiny_dir, monkeypatch):
    """Dropout off: the same encoder with fused layers gives the eager outputs and gradients."""
    from dpr_paddle.modeling.model import CONTEXT

    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 8000, (5, 12))
    mask = np.ones_like(ids)
    mask[1, 7:] = mask[3, 4:] = 0
    ids[mask == 0] = 0
    batch = {k: paddle.to_tensor(v) for k, v in (("input_ids", ids), ("token_type_ids", np.zeros_like(ids)),
                                                  ("attention_mask", mask))}
    results = []
    for fused in ("0", "1"):
        monkeypatch.setenv("DPR_PADDLE_FUSED", fused)
        paddle.seed(0)
        model = tiny_bert(tiny_dir, 0.0).speed_up_training()
        layers = [l for l in model.sublayers() if type(l) is paddle.nn.TransformerEncoderLayer]
        assert all(("forward" in vars(l)) == (fused == "1") for l in layers) and layers
        model.train()
        before = fused_cpu.counts["fused_layers"]
        out = model(**batch, tower=CONTEXT)
        assert (fused_cpu.counts["fused_layers"] > before) == (fused == "1")  # the fused path really ran
        (out * paddle.arange(out.shape[1], dtype="float32")).sum().backward()
        results.append((out.numpy(), {n: p.grad.numpy() for n, p in model.named_parameters() if p.grad is not None}))
    (eager, eager_g), (fused_out, fused_g) = results
    assert np.abs(eager - fused_out).max() <= 1e-4 * np.abs(eager).max()
    assert eager_g.keys() == fused_g.keys()
    scale = max(np.abs(g).max() for g in eager_g.values())
    assert max(np.abs(eager_g[k] - fused_g[k]).max() for k in eager_g) <= 1e-4 * scale


def test_without_a_compiler_the_eager_kernels_run():
    code = ("import logging; logging.basicConfig(level=logging.INFO)\n"
            "from dpr_paddle.modeling import fused_cpu\nprint('ops', fused_cpu.ops())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PATH="/nonexistent", CXX="/nonexistent/g++"), timeout=300)
    assert proc.returncode == 0 and "ops None" in proc.stdout
    assert proc.stderr.count("no C++ compiler: fused CPU training kernels are off") == 1


def test_the_faster_path_is_measured_once_per_cpu_and_forced_by_the_switch(ops, tmp_path):
    """Unforced, the first training encoder on a machine times fused against eager once, runs the faster,
    logs one line and caches the choice beside the build; a second process reads it without measuring;
    measuring leaves Paddle's random state as it was; DPR_PADDLE_FUSED=1 or 0 forces either, unmeasured."""
    import glob
    import json
    import shutil

    build = fused_cpu._state["build_dir"]
    home = tmp_path / "home"
    shutil.copytree(build, home / "ops" / os.path.basename(build),  # the built kernels, without any cached choice
                    ignore=shutil.ignore_patterns("choice-*", "heads-*"))
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO)\n"
            "import paddle\nfrom dpr_paddle.modeling import fast_cpu, fused_cpu\n"
            "paddle.seed(7)\n"
            "layer = paddle.nn.TransformerEncoderLayer(64, 4, 128, dropout=0.1, activation='gelu')\n"
            "fused_cpu.speed_up(fast_cpu.speed_up(layer))\n"
            "heads = getattr(layer, '_dpr_gemms', (None, None))[1]\n"
            "print('fused', 'forward' in vars(layer), 'draw', paddle.rand([1]).item(), getattr(heads, '__name__', None))\n")
    env = {k: v for k, v in os.environ.items() if k != "DPR_PADDLE_FUSED"}

    def run(**extra):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                              env=dict(env, DPR_PADDLE_HOME=str(home), **extra))
        assert proc.returncode == 0, proc.stderr[-2000:]
        out = proc.stdout.split()
        run.heads = out[4]  # the per-head GEMM the fused layer got, or None
        return out[1] == "True", float(out[3]), proc.stderr

    fused, draw, err = run()
    assert err.count("per layer step") == 1 and "measured once, cached in" in err
    # the per-head GEMM was measured first (the fused step is timed with it), once, in float32
    assert err.count("attention's per-head GEMMs in float32") == 1
    [heads_file] = glob.glob(str(home / "ops" / "*" / "heads-*.json"))
    heads = json.load(open(heads_file))
    assert heads["ours"] == (heads["ours_ms"] <= heads["library_ms"]) and heads["shape"] == ["float32", 4, 16]
    if fused:
        assert run.heads == ("heads_matmul" if heads["ours"] else "_paddle_heads")
    [cached] = glob.glob(str(home / "ops" / "*" / "choice-*.json"))
    choice = json.load(open(cached))
    assert choice["fused"] == fused == (choice["fused_ms"] < choice["eager_ms"]) and choice["shape"] == [64, 4, 128]
    assert choice["vector"] == fused_cpu.vector_width() and choice["cpu"] == cpu_info()[0]
    again, draw_again, err = run()
    assert again == fused and "per layer step" not in err and "per-head" not in err  # read, not measured again
    forced_on, draw_on, err_on = run(DPR_PADDLE_FUSED="1")
    forced_off, draw_off, err_off = run(DPR_PADDLE_FUSED="0")
    assert forced_on and not forced_off and "per layer step" not in err_on + err_off
    assert draw == draw_again == draw_on == draw_off  # measuring drew nothing from Paddle's generator
    with open(cached, "w") as f:
        f.write('{"fused": tr')  # a damaged cache file is measured again and rewritten, not a traceback
    remeasured, _, err = run()
    assert remeasured == json.load(open(cached))["fused"] and err.count("per layer step") == 1
    os.remove(heads_file)  # DPR_PADDLE_HEADS_GEMM forces the per-head GEMM, unmeasured
    for forced, name in (("ours", "heads_matmul"), ("library", "_paddle_heads")):
        assert run(DPR_PADDLE_FUSED="1", DPR_PADDLE_HEADS_GEMM=forced)[0] and run.heads == name
    assert not glob.glob(str(home / "ops" / "*" / "heads-*.json"))


@pytest.mark.parametrize("script", ["train_dense_encoder.py", "train_reranker.py"])
def test_a_mistyped_heads_gemm_force_is_one_line(ops, tmp_path, script):
    """DPR_PADDLE_HEADS_GEMM is read where every CPU training path picks its per-head GEMM: a value that is neither
    ours nor library stops both training commands in one line, instead of measuring without a word."""
    from conftest import run_cli, shared_path

    args = ["--train_data_path", shared_path("data", "squad1_open", "train.json"), "--model_name_or_path", "tiny",
            "--batch_size", "4", "--chunk_size", "2", "--max_steps", "1", "--save_dir", tmp_path / "run"]
    args += ["--max_length", "48", "--group_size", "2"] if script == "train_reranker.py" else []
    proc = run_cli(script, *args, check=False, env={"DPR_PADDLE_HEADS_GEMM": "mkl"})
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "DPR_PADDLE_HEADS_GEMM='mkl' is not ours or library" in last, last
    assert not (tmp_path / "run").exists() or not os.listdir(tmp_path / "run")  # stopped before training wrote


def test_the_kernels_are_built_for_this_cpu():
    """AVX-512 where the CPU has it, else AVX2: the instruction set is in the build's hash (never loaded on a
    CPU without it)."""
    flags = cpu_info()[1]
    want = "AVX-512" if all(f in flags for f in fused_cpu.AVX512) else "AVX2" if {"avx2", "fma"} <= flags else "baseline"
    assert fused_cpu.vector_width() == want
    assert ("-mavx512f" in fused_cpu.cflags()) == (want == "AVX-512")
    assert ("-mavx2" in fused_cpu.cflags()) == (want != "baseline")


FAULTS = """
import ctypes, resource, sys
import paddle
from dpr_paddle.modeling.model import BiEncoder
from dpr_paddle.modeling.pretrained import load_encoder

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def faults():  # page faults while a training step's worth of 48 MB tensors come and go
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):
        (paddle.ones([3, 4, 1024, 1024]) * 2).sum()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def burst():  # page faults while a reranker chunk's 1.25 GB comes and goes, all freed at the heap's top at once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        held = [libc.malloc(256 << 20) for _ in range(5)]
        for p in held:
            ctypes.memset(p, 1, 256 << 20)
        for p in held:
            libc.free(p)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults()
plain = faults()
BiEncoder(load_encoder(sys.argv[1])[0], load_encoder(sys.argv[1])[0]).speed_up_training()
faults()
burst()
print(plain, faults(), burst())
"""


@pytest.mark.parametrize("defaults_off", [False, True])
def test_training_keeps_freed_memory_for_reuse(tiny_dir, defaults_off):
    """Every CPU training path (speed_up_encoder: both models, commands and API) makes malloc reuse freed blocks
    and never trim its heap, so a step's large tensors stop costing page faults, also when a chunk frees
    gigabytes at once (a fixed trim threshold returned them to the kernel, and the next chunk faulted them back
    in); DPR_PADDLE_NO_CPU_DEFAULTS=1 leaves malloc alone."""
    env = dict(os.environ, DPR_PADDLE_NO_CPU_DEFAULTS="1" if defaults_off else "0")
    out = subprocess.run([sys.executable, "-c", FAULTS, tiny_dir], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    plain, kept, burst = map(int, out.stdout.split()[-3:])
    assert plain > 10000  # glibc maps each 48 MB tensor afresh: ~12,000 pages apiece
    if defaults_off:
        assert kept > 10000 and burst > 10000, (plain, kept, burst)
    else:
        assert kept < 1000 and burst < 1000, (plain, kept, burst)


CAPPED = """
import os, sys
from dpr_paddle.common.runtime import host_line, prepare_process
prepare_process()
from dpr_paddle.modeling import bf16_cpu, fused_cpu
try:
    bf16_cpu.require()
except bf16_cpu.Bf16Unavailable as e:
    refused = str(e)
print(os.environ["ONEDNN_MAX_CPU_ISA"], os.environ["MKL_ENABLE_INSTRUCTIONS"], fused_cpu.vector_width(),
      fused_cpu.ops() is not None, fused_cpu._state["build_dir"])
print(host_line())
print(refused)
"""


@pytest.mark.skipif("avx512f" not in cpu_info()[1], reason="emulating AVX2 needs a CPU with more than AVX2")
def test_an_avx2_host_is_emulated_by_max_isa(ops):
    """DPR_PADDLE_MAX_ISA=avx2 on an AVX-512 CPU: the kernels are built for AVX2 (their own build), oneDNN and MKL
    are capped alike, --bf16 is refused as on an AVX2 host, and the kernels' equality tests pass in that build."""
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")}
    env["DPR_PADDLE_MAX_ISA"] = "avx2"
    proc = subprocess.run([sys.executable, "-c", CAPPED], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    libs, host, refused = proc.stdout.strip().splitlines()
    dnnl, mkl, width, built, build_dir = libs.split()
    assert (dnnl, mkl, width, built) == ("AVX2", "AVX2", "AVX2", "True")
    assert build_dir != fused_cpu._state["build_dir"]  # never the AVX-512 build
    assert "avx512" not in host and "capped by DPR_PADDLE_MAX_ISA=avx2" in host
    assert "as capped by DPR_PADDLE_MAX_ISA=avx2" in refused and "train without --bf16" in refused
    # the AVX2 build computes what the eager ops do (its tiles are 16 columns wide, not 32)
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "equals"],
                           capture_output=True, text=True, cwd=os.path.dirname(__file__), env=env, timeout=900)
    assert tests.returncode == 0 and " passed" in tests.stdout, tests.stdout[-3000:]


@pytest.mark.parametrize("entry", ["train", "retrieve", "serve", "api"])
def test_an_unknown_max_isa_is_refused_in_one_line(entry, tiny_dir):
    """Every entry point reads the CPU through the one capped view, so a mistyped level stops each in one line
    instead of building for, or measuring on, a CPU nobody has."""
    argv = {"train": [os.path.join(ROOT, "train_dense_encoder.py"), "--model_name_or_path", tiny_dir,
                      "--train_data_path", "t.json"],
            "retrieve": [os.path.join(ROOT, "dense_retriever.py"), "--bm25", "--ctx_file", "x.tsv", "--qa_file", "q.csv"],
            "serve": ["-m", "dpr_paddle.serve", "--model_name_or_path", tiny_dir, "--ctx_file", "x.tsv"],
            "api": ["-c", f"from dpr_paddle import Retriever\nRetriever.load({tiny_dir!r}, 'emb_*', 'x.tsv')"]}[entry]
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env=dict(os.environ, DPR_PADDLE_MAX_ISA="avx3"))
    assert proc.returncode != 0
    line = "DPR_PADDLE_MAX_ISA='avx3' is not a level this project knows: use one of avx2, avx512_core"
    if entry == "api":  # the API raises the one error type its callers catch
        assert proc.stderr.strip().splitlines()[-1].startswith("dpr_paddle.common.errors.DprError: " + line)
    else:
        assert proc.stderr.strip().splitlines() == [f"error: {line}, avx512_core_bf16, or leave it unset to use all "
                                                    "of this CPU"]


def test_each_max_isa_level_keeps_what_that_host_has():
    """The levels' flag filters on a Sapphire Rapids flag set: each keeps exactly the instructions of the host it
    stands for, so the kernels' build, --bf16 and bf16 encoding decide as they would there."""
    from dpr_paddle.common.runtime import ISA_LEVELS, isa_keeps

    spr = {"sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512cd", "avx512bw", "avx512dq",
           "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx512ifma", "avx512vbmi", "amx_bf16", "amx_int8",
           "amx_tile"}
    kept = {level: {f for f in spr if isa_keeps(level, f)} for level in ISA_LEVELS}
    base = {"sse4_2", "avx", "avx2", "fma", "f16c"}
    assert kept["avx2"] == base
    assert kept["avx512_core"] == base | {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}
    assert kept["avx512_core_bf16"] == spr - {"amx_bf16", "amx_int8", "amx_tile", "avx512_fp16", "avx_vnni"}
