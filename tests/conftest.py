"""Shared fixtures: the tiny random-init encoder, the generated sample, ../shared data."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The fused CPU kernels run in every test that trains, whatever this host's measured choice (fused_cpu.use_fused):
# the exactness tests must cover them on every CPU. Their choice is tested on its own (test_fused_cpu.py).
os.environ.setdefault("DPR_PADDLE_FUSED", "1")
SHARED = os.environ.get("DPR_PADDLE_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))


def shared_path(*parts):
    """A path under ../shared, or skip the test (a user's machine has no ../shared; CI does)."""
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing on CI")
        pytest.skip(f"{path} not present (../shared exists only on the project's machines)")
    return path


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory):
    """The built-in sample, generated once per session."""
    out = tmp_path_factory.mktemp("sample")
    subprocess.run([sys.executable, os.path.join(ROOT, "data", "make_sample.py"), "--output_dir", str(out)],
                   check=True, capture_output=True)
    return str(out)


def sample_head(sample_dir, out_dir, n):
    """Write the sample's header and first `n` passages to OUT_DIR/p.tsv; returns the data lines."""
    with open(os.path.join(sample_dir, "passages.tsv"), encoding="utf-8") as f:
        lines = f.readlines()[: n + 1]
    with open(os.path.join(out_dir, "p.tsv"), "w", encoding="utf-8") as f:
        f.write("".join(lines))
    return lines[1:]


def sample_slice(sample_dir, out_dir, passages=60, questions=5):
    """OUT_DIR/p.tsv with the sample's first `passages` passages and OUT_DIR/qa.csv with its first `questions`
    test questions: the small corpus most end-to-end tests search."""
    sample_head(sample_dir, str(out_dir), passages)
    with open(os.path.join(sample_dir, "qa_test.csv"), encoding="utf-8") as f:
        lines = f.read().splitlines()[:questions]
    with open(os.path.join(str(out_dir), "qa.csv"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


@pytest.fixture(scope="session")
def tiny_dir():
    """Directory of the tiny random-init BERT (made once, cached)."""
    from dpr_paddle.modeling.pretrained import resolve_model

    return resolve_model("tiny")


def run_cli(script, *args, check=True, env=None):
    """Run a root CLI in a fresh interpreter; returns the CompletedProcess."""
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], capture_output=True,
                          text=True, env=full_env, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def checkpoint_params(checkpoint):
    """{tower/name: array} of both encoders saved in a checkpoint directory."""
    import paddle

    out = {}
    for tower in ("question_encoder", "context_encoder"):
        state = paddle.load(os.path.join(str(checkpoint), tower, "model_state.pdparams"))
        out.update({f"{tower}/{k}": v.numpy() for k, v in state.items()})
    return out


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """A real Milvus standalone server (the PyPI package `milvus`, requirements-dev.txt) on 127.0.0.1, started
    once for the run by `python -m dpr_paddle.milvus_server` and stopped at its end by Ctrl-C (SIGINT);
    yields its http:// URI."""
    import signal

    try:
        import milvus  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("the milvus package (requirements-dev.txt) is missing on CI")
        pytest.skip("pip install -r requirements-dev.txt for the Milvus server tests")
    proc = subprocess.Popen([sys.executable, "-m", "dpr_paddle.milvus_server", "--base_dir",
                             str(tmp_path_factory.mktemp("milvus_server"))], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    uri = proc.stdout.readline().strip()  # printed once the server answers
    if not uri.startswith("http://127.0.0.1:"):
        proc.kill()
        raise AssertionError(f"the Milvus server did not start: {proc.stderr.read()[-3000:]}")
    try:
        yield uri
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(params=["milvus-lite", "milvus-server"])
def milvus_uri(request, tmp_path):
    """Each Milvus test runs twice: on a milvus-lite file, and on the real server with its collections
    dropped first (the default collection name follows the shards, so tests would otherwise share one)."""
    if request.param == "milvus-lite":
        return str(tmp_path / "m.db")
    uri = request.getfixturevalue("milvus_server")
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri)
    for name in client.list_collections():
        client.drop_collection(name)
    client.close()
    return uri
