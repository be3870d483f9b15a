"""ERNIE works as BERT does: the exact gradient cache, training, the default (Paddle Inference)
encoding backend and retrieval, with a tiny random-init ERNIE that has task-type ids on."""
import json

import numpy as np
import pytest

from conftest import run_cli, sample_head
from dpr_paddle.training.grad_cache import cached_step, graph_reference_step
from dpr_paddle.index.shards import load_shards
from test_grad_cache import compare, dropout_on_steps, grads, setup, split_chunks


@pytest.mark.parametrize("fast", [False, True], ids=["paddle_dropout", "fast_cpu"])
def test_gradient_cache_is_exact_for_ernie(fast):
    model, q, p, encs, loss_fn = setup("tiny-ernie", 6, fast=fast)
    model.eval()  # dropout off: equal to the plain full-batch step
    ref_loss, _ = graph_reference_step(encs, [split_chunks(q, 0), split_chunks(p, 0)], loss_fn)
    ref = grads(model)
    loss, _ = cached_step(encs, [split_chunks(q, 4), split_chunks(p, 5)], loss_fn)
    assert abs(float(loss) - float(ref_loss)) <= 1e-5 * float(ref_loss)
    assert compare(ref, grads(model)) <= 1e-4  # a random-init model: float32 summation order shows at ~1e-5
    # dropout on: bit for bit equal to the same chunks encoded with a graph
    _, ref, _, got = dropout_on_steps(model, encs, [split_chunks(q, 4), split_chunks(p, 5)], loss_fn, seed=3)
    assert all(np.array_equal(ref[k], got[k]) for k in ref)


def test_ernie_trains_encodes_and_retrieves_with_the_default_backend(sample_dir, tmp_path):
    titles = [line.split("\t")[2].strip() for line in sample_head(sample_dir, tmp_path, 40)]
    (tmp_path / "qa.csv").write_text("".join(f"About {t}?\t{json.dumps([t])}\n" for t in titles[:6]), encoding="utf-8")
    run_cli("train_dense_encoder.py", "--model_name_or_path", "tiny-ernie", "--train_data_path",
            f"{sample_dir}/train.json", "--batch_size", 8, "--chunk_size", 3, "--max_steps", 2, "--epochs", 1,
            "--save_dir", tmp_path / "save", "--max_passage_length", 32)
    backends = ("auto", "inference", "dygraph")  # auto on CPU: ONNX Runtime
    for backend in backends:
        run_cli("generate_dense_embedding.py", "--model_file", tmp_path / "save" / "latest", "--ctx_file",
                tmp_path / "p.tsv", "--out_file", tmp_path / f"emb_{backend}", "--backend", backend)
    onnx, static, eager = (load_shards(str(tmp_path / f"emb_{b}"))[0] for b in backends)
    assert [s.meta["backend"] for s in (onnx, static, eager)] == ["onnxruntime", "inference", "dygraph"]
    np.testing.assert_allclose(static.vectors, eager.vectors, atol=1e-5)
    np.testing.assert_allclose(onnx.vectors, eager.vectors, atol=1e-5)
    proc = run_cli("dense_retriever.py", "--model_file", tmp_path / "save" / "latest", "--ctx_file", tmp_path / "p.tsv",
                   "--qa_file", tmp_path / "qa.csv", "--encoded_ctx_file", tmp_path / "emb_auto", "--n_docs", 5,
                   "--out_file", tmp_path / "out.json")
    assert "| top-1 |" in proc.stdout and len(json.load(open(tmp_path / "out.json"))) == 6
