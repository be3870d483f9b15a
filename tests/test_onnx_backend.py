"""The ONNX Runtime backend: converted once, checked against Paddle Inference, int8 kept apart."""
import os

import numpy as np
import pytest

from conftest import run_cli
from dpr_paddle.common.runtime import cpu_info
from dpr_paddle.encoding import onnx_backend
from dpr_paddle.encoding.towers import load_tower, paddle_inference_encoder, tower_fingerprint
from dpr_paddle.modeling.model import CONTEXT, QUESTION
from dpr_paddle.index.shards import load_shards

PAIRS = [("Paris", "Paris is the capital of France."), ("", "a b c"), ("Long", "the quick brown fox " * 30)]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """An empty model cache for this module, so that the conversion happens inside its first test."""
    path = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DPR_PADDLE_HOME", str(path))
        yield path


def _arrays(tensorizer):
    return tensorizer.pad(tensorizer.encode_passages_ids(PAIRS))


def test_onnxruntime_is_converted_once_and_equals_paddle_inference(home):
    encode, tensorizer, info = load_tower(CONTEXT, model_name_or_path="tiny", max_passage_length=64,
                                          backend="onnxruntime")
    assert info["backend"] == "onnxruntime" and "quantization" not in info
    converted = [os.path.join(r, f) for r, _, fs in os.walk(home) for f in fs if f == "tower.onnx"]
    assert len(converted) == 1
    mtime = os.stat(converted[0]).st_mtime_ns
    reference, _, ref_info = load_tower(CONTEXT, model_name_or_path="tiny", max_passage_length=64, backend="inference")
    arrays = _arrays(tensorizer)
    assert np.abs(encode(arrays) - reference(arrays)).max() <= 1e-5
    again, _, _ = load_tower(QUESTION, model_name_or_path="tiny", backend="onnxruntime")  # shared tower: same file
    assert os.stat(converted[0]).st_mtime_ns == mtime
    assert np.abs(again(arrays) - reference(arrays)).max() <= 1e-5


@pytest.mark.parametrize("name", ["tiny", "tiny-ernie"])
def test_attention_runs_fused_and_gives_the_converted_graphs_vectors(home, name):
    """ONNX Runtime runs each attention block as one fused `Attention` node (onnx_fusion); on padded input its
    vectors equal the converted graph's, op by op, and Paddle Inference's."""
    import glob

    import onnx

    from dpr_paddle.encoding import onnx_fusion

    encode, tensorizer, _ = load_tower(CONTEXT, model_name_or_path=name, max_passage_length=64, backend="onnxruntime")
    _, fingerprint = tower_fingerprint(CONTEXT, model_name_or_path=name)
    [converted] = glob.glob(str(home / "inference" / f"{fingerprint}-*" / "tower.onnx"))
    graph = onnx.load(onnx_fusion.fused_path(converted)).graph
    layers = sum(n.op_type == "Softmax" for n in onnx.load(converted).graph.node)
    assert layers >= 2 and sum(n.op_type == "Attention" for n in graph.node) == layers
    assert not any(n.op_type == "Softmax" for n in graph.node)
    arrays = _arrays(tensorizer)  # three pairs of different lengths: padded
    assert arrays["attention_mask"].min() == 0
    plain = onnx_backend.session(converted)
    reference = paddle_inference_encoder(converted[: -len(".onnx")])
    assert np.abs(encode(arrays) - plain(arrays)).max() <= 1e-5
    assert np.abs(encode(arrays) - reference(arrays)).max() <= 1e-5


def test_auto_is_the_faster_cpu_backend_measured_once_per_model_cpu_and_length(home, caplog):
    """`auto` on CPU times ONNX Runtime against Paddle Inference once for this model, CPU and length, runs the
    faster, logs one line and caches the choice beside the export; a second load reads it; another length is
    measured on its own; a damaged cache file is measured again; a named backend is never measured."""
    import glob
    import json
    import logging

    def load(tower=CONTEXT, **kw):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="dpr_paddle.encoding.towers"):
            _, _, info = load_tower(tower, model_name_or_path="tiny", max_passage_length=64, **kw)
        return info["backend"], [r.getMessage() for r in caplog.records if "backend auto ->" in r.getMessage()]

    backend, logged = load()
    [cached] = glob.glob(str(home / "inference" / "*" / "backend-*.json"))
    choice = json.load(open(cached))
    faster = "onnxruntime" if choice["onnxruntime_ms"] <= choice["inference_ms"] else "inference"
    assert backend == choice["backend"] == faster and len(logged) == 1 and cached in logged[0]
    assert choice["length"] == 64 and choice["cpu"] == cpu_info()[0]
    assert load() == (backend, [])  # read, not measured again
    assert load(QUESTION, max_query_length=16)[1] != []  # another length: measured on its own
    assert len(glob.glob(str(home / "inference" / "*" / "backend-*.json"))) == 2
    with open(cached, "w") as f:
        f.write('{"backend": "onnx')  # damaged: measured again and rewritten, not a traceback
    assert len(load()[1]) == 1 and json.load(open(cached))["backend"] in ("onnxruntime", "inference")
    os.remove(cached)
    assert load(backend="inference") == ("inference", []) and not os.path.exists(cached)


def test_int8_is_close_but_not_faithful_and_is_refused_by_the_float_check(home):
    exact, tensorizer, _ = load_tower(CONTEXT, model_name_or_path="tiny", backend="onnxruntime")
    int8, _, info = load_tower(CONTEXT, model_name_or_path="tiny", backend="onnxruntime-int8")
    assert info["quantization"] == "int8-dynamic"
    a, b = exact(_arrays(tensorizer)), int8(_arrays(tensorizer))
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.99 and np.abs(a - b).max() > onnx_backend.PROBE_TOLERANCE
    # the check a fresh float conversion must pass would refuse these int8 vectors
    prefix = next(os.path.join(r, f[: -len(".json")]) for r, _, fs in os.walk(home) for f in fs if f == "tower.json")
    with pytest.raises(onnx_backend.OnnxUnavailable, match="differs from Paddle Inference by"):
        onnx_backend.check_faithful(int8, paddle_inference_encoder(prefix), onnx_backend.probe_arrays(30522), prefix)


def test_int8_shards_are_another_job(tmp_path, sample_dir):
    ctx = os.path.join(sample_dir, "passages.tsv")
    common = ["--model_name_or_path", "tiny", "--ctx_file", ctx, "--max_passage_length", 32]
    run_cli("generate_dense_embedding.py", *common, "--out_file", tmp_path / "emb", "--backend", "onnxruntime-int8")
    shard = load_shards(str(tmp_path / "emb_*"))[0]
    assert shard.meta["backend"] == "onnxruntime-int8" and shard.meta["quantization"] == "int8-dynamic"
    proc = run_cli("generate_dense_embedding.py", *common, "--out_file", tmp_path / "emb", check=False)
    assert proc.returncode != 0 and "quantization 'int8-dynamic' there, None now" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bf16_runs_where_the_cpu_has_it_as_another_job_and_is_refused_in_one_line_elsewhere(home, tmp_path, sample_dir):
    from dpr_paddle.modeling import bf16_cpu

    ctx = os.path.join(sample_dir, "passages.tsv")
    common = ["--model_name_or_path", "tiny", "--ctx_file", ctx, "--max_passage_length", 32]
    proc = run_cli("generate_dense_embedding.py", *common, "--out_file", tmp_path / "emb", "--backend", "inference-bf16",
                   check=False)
    assert "Traceback" not in proc.stderr
    if not bf16_cpu.hardware():  # e.g. AMD EPYC before Zen 4: one line, nothing written
        assert proc.returncode == 2 and "needs a CPU with AVX512-BF16 or AMX" in proc.stderr
        assert not os.path.exists(tmp_path / "emb_0")
        return
    assert proc.returncode == 0, proc.stderr[-2000:]
    shard = load_shards(str(tmp_path / "emb_*"))[0]
    assert shard.meta["backend"] == "inference-bf16" and shard.meta["quantization"] == "bf16"
    proc = run_cli("generate_dense_embedding.py", *common, "--out_file", tmp_path / "emb", check=False)
    assert proc.returncode != 0 and "quantization 'bf16' there, None now" in proc.stderr
    # close to float32, but not the same vectors
    exact, tensorizer, _ = load_tower(CONTEXT, model_name_or_path="tiny", backend="inference")
    bf16, _, info = load_tower(CONTEXT, model_name_or_path="tiny", backend="inference-bf16")
    a, b = exact(_arrays(tensorizer)), bf16(_arrays(tensorizer))
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert info["quantization"] == "bf16" and cosine.min() > 0.99 and np.abs(a - b).max() > 1e-4


def test_a_graph_without_attention_is_read_once_and_run_as_converted(tmp_path):
    """No block matched: fuse_attention says None and remembers it beside the graph, so a later load neither
    reads the graph again nor writes a fused copy."""
    import onnx
    from onnx import TensorProto, helper

    from dpr_paddle.encoding import onnx_fusion

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    path = str(tmp_path / "tower.onnx")
    onnx.save(helper.make_model(graph), path)
    assert onnx_fusion.fuse_attention(path) is None
    with open(path, "wb") as f:
        f.write(b"not a graph")  # read again, it would fail
    assert onnx_fusion.fuse_attention(path) is None
    assert not os.path.exists(onnx_fusion.fused_path(path))


def _installed():
    import importlib.metadata

    return sorted((d.metadata["Name"], d.version) for d in importlib.metadata.distributions())


def test_a_first_conversion_installs_nothing_and_int8_finds_its_quantiser(tmp_path, monkeypatch):
    """paddle2onnx turns on polygraphy's pip-install of what its constant folding imports: a first conversion
    (an empty model cache) and its int8 quantisation must run on what the requirements installed, changing no
    package (the folded graph's attention fusion: test_attention_runs_fused_and_gives_the_converted_graphs_vectors)."""
    monkeypatch.setenv("DPR_PADDLE_HOME", str(tmp_path / "home"))
    before = _installed()
    _, _, info = load_tower(CONTEXT, model_name_or_path="tiny", max_passage_length=64, backend="onnxruntime-int8")
    assert info["quantization"] == "int8-dynamic" and _installed() == before
    import polygraphy.config

    assert polygraphy.config.AUTOINSTALL_DEPS is False
    made = {f for _, _, fs in os.walk(tmp_path / "home") for f in fs}
    assert {"tower.onnx", "tower.int8.onnx"} <= made


BLOCKED = """
import runpy, sys
sys.modules["ml_dtypes"] = None  # as where it is not installed: its import raises ImportError
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_int8_without_its_quantiser_is_one_line(tmp_path, sample_dir):
    """Where ONNX Runtime's quantiser cannot be imported (ml_dtypes missing), int8 stops in one line."""
    import subprocess
    import sys

    from conftest import ROOT

    ctx = os.path.join(sample_dir, "passages.tsv")
    proc = subprocess.run([sys.executable, "-c", BLOCKED, os.path.join(ROOT, "generate_dense_embedding.py"),
                           "--model_name_or_path", "tiny", "--ctx_file", ctx, "--max_passage_length", "32",
                           "--out_file", str(tmp_path / "emb"), "--backend", "onnxruntime-int8"],
                          capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, DPR_PADDLE_HOME=str(tmp_path / "home")))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "int8 needs ONNX Runtime's quantiser" in proc.stderr and "pip install -r requirements.txt" in proc.stderr
