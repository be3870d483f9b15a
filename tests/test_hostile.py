"""Nothing wrong passes silently, round three: numbers out of bounds, damaged or foreign artefacts,
non-finite values, resumes of another recipe, model directories without their recipe, an HTTP server
that one bad request cannot poison, and a search command that survives bad input."""
import json
import os
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import ROOT, run_cli, sample_head, sample_slice
from test_train import tiny_args as tiny_args_for
from dpr_paddle.common.errors import DprError
from dpr_paddle.common.net import free_port, wait_healthy


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sample_dir):
    """60 sample passages, encoded by the tiny encoder into 2 shards, with a BM25 index and a store."""
    d = tmp_path_factory.mktemp("hostile")
    sample_slice(sample_dir, d)
    for shard in (0, 1):
        run_cli("generate_dense_embedding.py", "--model_name_or_path", "tiny", "--ctx_file", d / "p.tsv",
                "--out_file", d / "emb", "--shard_id", shard, "--num_shards", 2, "--max_passage_length", 48)
    return d


def last_line(proc):
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr.strip().splitlines()[-1]


# --------------------------------------------------------------------------- 1. numbers

@pytest.mark.parametrize("script, flags, message", [
    ("dense_retriever.py", ["--bm25", "--n_docs", "-1"], "error: --n_docs must be >= 1, got -1"),
    ("dense_retriever.py", ["--bm25", "--hybrid_alpha", "nan"], "error: --hybrid_alpha must be a finite number, got nan"),
    ("dense_retriever.py", ["--bm25", "--hybrid_depth", "0"], "error: --hybrid_depth must be >= 1, got 0"),
    ("dense_retriever.py", ["--bm25", "--validation_workers", "0"], "error: --validation_workers must be >= 1 and <= 1024, got 0"),
    ("dense_retriever.py", ["--bm25", "--ef_search", "-3"], "error: --ef_search must be >= 0, got -3"),
    ("mine_hard_negatives.py", ["--num_negatives", "-1"], "error: --num_negatives must be >= 1, got -1"),
    ("mine_hard_negatives.py", ["--rank_range", "-2", "5"], "error: --rank_range must be >= 0, got -2"),
    ("train_dense_encoder.py", ["--learning_rate", "inf"], "error: --learning_rate must be a finite number, got inf"),
    ("train_dense_encoder.py", ["--dropout", "1.5"], "error: --dropout must be >= 0 and <= 0.999, got 1.5"),
    ("train_dense_encoder.py", ["--max_passage_length", "0"], "error: --max_passage_length must be >= 4, got 0"),
    ("generate_dense_embedding.py", ["--batch_size", "0"], "error: --batch_size must be >= 1, got 0"),
])
def test_numbers_out_of_bounds_are_one_line(corpus, script, flags, message):
    required = {"dense_retriever.py": ["--ctx_file", corpus / "p.tsv", "--qa_file", corpus / "qa.csv"],
                "mine_hard_negatives.py": ["--ctx_file", corpus / "p.tsv", "--output", corpus / "x.json",
                                           "--train_data_path", corpus / "none.json"],
                "train_dense_encoder.py": ["--train_data_path", corpus / "none.json"],
                "generate_dense_embedding.py": ["--ctx_file", corpus / "p.tsv", "--out_file", corpus / "e"]}[script]
    assert last_line(run_cli(script, *required, *flags, check=False)) == message


def test_search_and_serve_commands_check_numbers_too(corpus):
    for module, extra in (("dpr_paddle.search", ["q"]), ("dpr_paddle.serve", ["--port", "70000"])):
        proc = subprocess.run([sys.executable, "-m", module, "--bm25", "--ctx_file", str(corpus / "p.tsv"),
                               "--n_docs", "-1" if module.endswith("search") else "5", *extra], capture_output=True,
                              text=True, cwd=ROOT)
        assert last_line(proc) in ("error: --n_docs must be >= 1, got -1",
                                   "error: --port must be >= 0 and <= 65535, got 70000")


def test_the_api_checks_its_arguments(corpus):
    from dpr_paddle import Retriever
    from dpr_paddle.common.options import InvalidValue

    r = Retriever.load(mode="bm25", passages=str(corpus / "p.tsv"), bm25_index=str(corpus / "bm25"),
                       store=str(corpus / "api.sqlite"))
    with pytest.raises(InvalidValue, match="not one string"):
        r.search("a question")
    for k in (-5, 0, 2.5, float("nan"), True):
        with pytest.raises(InvalidValue, match=r"k must be an integer >= 1, got"):
            r.search(["a question"], k=k)
    with pytest.raises(InvalidValue, match="lone surrogate"):
        r.search(["ok", "bad \ud800"])
    with pytest.raises(InvalidValue, match="alpha must be a finite number, got nan"):
        Retriever.load(mode="bm25", passages=str(corpus / "p.tsv"), alpha=float("nan"))
    assert len(r.search(["a question"], k=1000)[0]) == 60  # more than the corpus: the whole corpus


def numeric_inputs():
    """{name: where} of every number a user can type: each option of each command (a dataclass field with
    help) and each field of the specs the API checks."""
    import dataclasses
    import importlib
    import pkgutil

    import dpr_paddle
    from dpr_paddle.encoding.spec import TowerSpec
    from dpr_paddle.index.factory import IndexSpec
    from dpr_paddle.retrieval.searcher import SearchSpec

    classes = {TowerSpec, IndexSpec, SearchSpec}
    for info in pkgutil.walk_packages(dpr_paddle.__path__, "dpr_paddle."):
        module = importlib.import_module(info.name)
        classes |= {c for c in vars(module).values() if isinstance(c, type) and dataclasses.is_dataclass(c)
                    and any("help" in f.metadata for f in dataclasses.fields(c))}
    out = {"k": "Retriever.search and HTTP's k"}
    for c in classes:
        for f in dataclasses.fields(c):
            kind = str(f.type)
            if ("int" in kind or "float" in kind) and not any(t in kind for t in ("bool", "Tuple", "List")):
                out.setdefault(f.name, f"{c.__module__}.{c.__name__}")
    return out


def test_every_number_a_user_types_has_declared_bounds():
    """The class behind `--rerank_batch_size 0` (a traceback): a number not in BOUNDS took ">= 0" unasked.
    Now each is bounded in BOUNDS or listed in ZERO_MEANS with what its 0 does."""
    from dpr_paddle.common.options import BOUNDS, ZERO_MEANS

    inputs = numeric_inputs()
    assert len(inputs) > 60 and {"rerank_batch_size", "n_docs", "k", "chunk_size"} <= set(inputs)
    undeclared = {name: where for name, where in inputs.items() if name not in BOUNDS and name not in ZERO_MEANS}
    assert not undeclared, f"say what 0 does (ZERO_MEANS) or bound them (BOUNDS): {undeclared}"


def test_a_zero_rerank_batch_is_refused_at_every_entry(capsys, corpus, tmp_path):
    from test_round_four import refused

    from dpr_paddle import Retriever, mine, retrieve, score_records, search, serve
    from dpr_paddle.common.options import InvalidValue

    line = "error: --rerank_batch_size must be >= 1, got 0"
    common = ["--rerank_model", tmp_path / "rr", "--rerank_batch_size", "0"]
    p = corpus / "p.tsv"
    for main, argv in ((retrieve.main, ["--bm25", "--ctx_file", p, "--qa_file", corpus / "qa.csv", *common]),
                       (mine.main, ["--ctx_file", p, "--output", tmp_path / "x.json", "--train_data_path",
                                    corpus / "none.json", "--denoise_model", tmp_path / "rr", "--rerank_batch_size", "0"]),
                       (score_records.main, ["--train_data_path", corpus / "none.json", "--output", tmp_path / "s.json",
                                             *common]),
                       (search.main, ["--bm25", "--ctx_file", p, "q", *common]),
                       (serve.main, ["--bm25", "--ctx_file", p, *common])):
        assert refused(capsys, main, *argv) == line, main.__module__
    with pytest.raises(InvalidValue, match="rerank_batch_size must be >= 1, got 0"):
        Retriever.load(mode="bm25", passages=str(p), rerank_model=str(tmp_path / "rr"), rerank_batch_size=0)


# --------------------------------------------------------------------------- 2. damaged or foreign artefacts

def copy_shards(corpus, dst):
    for shard in (0, 1):
        shutil.copytree(corpus / f"emb_{shard}", dst / f"emb_{shard}")
    return dst / "emb"


def retrieve(corpus, shards, *flags):
    return run_cli("dense_retriever.py", "--model_name_or_path", "tiny", "--ctx_file", corpus / "p.tsv",
                   "--qa_file", corpus / "qa.csv", "--encoded_ctx_file", shards, "--max_passage_length", 48,
                   "--n_docs", 5, *flags, check=False)


def test_damaged_shards_graphs_and_foreign_graphs_are_one_line(corpus, tmp_path):
    emb = copy_shards(corpus, tmp_path)
    vec = tmp_path / "emb_1" / "vectors.npy"
    vec.write_bytes(vec.read_bytes()[:-100])  # cut
    assert "damaged or unreadable shard vectors" in last_line(retrieve(corpus, emb))
    shutil.rmtree(tmp_path / "emb_1")
    shutil.copytree(corpus / "emb_1", tmp_path / "emb_1")
    (tmp_path / "emb_0" / "meta.json").write_text('{"dim": 32, "count"')
    line = last_line(retrieve(corpus, emb))
    assert "meta.json: damaged or unreadable shard metadata" in line and "--overwrite" in line
    shutil.rmtree(tmp_path / "emb_0")
    shutil.copytree(corpus / "emb_0", tmp_path / "emb_0")
    # an hnsw graph: built and saved once, then cut, then replaced by a graph of other vectors of the same size
    graph = tmp_path / "g.hnsw"
    assert retrieve(corpus, emb, "--hnsw_index", "--index_path", graph).returncode == 0
    good = graph.read_bytes()
    graph.write_bytes(good[: len(good) // 2])
    assert "damaged or unreadable hnsw graph" in last_line(retrieve(corpus, emb, "--hnsw_index", "--index_path", graph))
    from dpr_paddle.index.exact import ExactIndex
    from dpr_paddle.index.hnsw import HNSWIndex
    from dpr_paddle.index.shards import load_shards

    other = copy_shards(corpus, tmp_path / "other")
    for shard in (0, 1):  # same count, dim and dtype, other vectors
        v = np.load(tmp_path / "other" / f"emb_{shard}" / "vectors.npy")
        np.save(tmp_path / "other" / f"emb_{shard}" / "vectors.npy", np.ascontiguousarray(v[::-1]))
    foreign = HNSWIndex(ExactIndex(load_shards(str(other))), m=48, ef_construction=400, space="auto").build()
    foreign.index.save_index(str(graph))
    line = last_line(retrieve(corpus, emb, "--hnsw_index", "--index_path", graph))
    assert "the graph's vectors are not these shards'" in line and "to rebuild the graph" in line
    (tmp_path / "g.hnsw.json").write_text("{")
    assert "damaged or unreadable hnsw graph sidecar" in last_line(
        retrieve(corpus, emb, "--hnsw_index", "--index_path", graph))


def test_verify_shards_finds_a_flipped_bit(corpus, tmp_path):
    """A bit flipped inside vectors.npy keeps its shape and dtype, so loading cannot see it; the
    vectors.sha1 written with the shard can, and verify_shards names the file in one line."""
    def verify(*args):
        return subprocess.run([sys.executable, "-m", "dpr_paddle.verify_shards", *map(str, args)], cwd=ROOT,
                              capture_output=True, text=True)

    emb = copy_shards(corpus, tmp_path)
    good = verify(emb)
    assert good.returncode == 0 and good.stdout.splitlines() == [f"{tmp_path / 'emb_0'}: ok", f"{tmp_path / 'emb_1'}: ok"]
    vec = tmp_path / "emb_1" / "vectors.npy"
    data = bytearray(vec.read_bytes())
    data[-7] ^= 0x10  # one bit of one float
    vec.write_bytes(bytes(data))
    bad = verify(emb)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stdout.splitlines() == [
        f"{tmp_path / 'emb_0'}: ok",
        f"{tmp_path / 'emb_1'}: error: {vec}: its content is not what the shard was written with (its SHA-1 differs "
        "from vectors.sha1); re-encode the shard (generate_dense_embedding.py --overwrite)"]
    (tmp_path / "emb_0" / "vectors.sha1").unlink()  # a shard written before the digest existed
    assert verify(tmp_path / "emb_0").stdout.strip() == f"{tmp_path / 'emb_0'}: unchecked"
    missing = verify(tmp_path / "nothing")
    assert missing.returncode == 2 and missing.stderr.strip().splitlines()[-1] == f"error: no embedding shards match '{tmp_path / 'nothing'}'"


def test_damaged_store_bm25_index_and_topk_files_are_one_line(corpus, tmp_path):
    import sqlite3

    ctx = str(corpus / "p.tsv")
    store = tmp_path / "s.sqlite"
    proc = subprocess.run([sys.executable, "-m", "dpr_paddle.passage_store", ctx, "--output", str(store)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    conn = sqlite3.connect(store)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    data = bytearray(store.read_bytes())
    page = 4096
    middle = (len(data) // page // 2 + 1) * page  # the end of a page in the middle: cell contents, i.e. texts
    for i in range(middle - 300, middle - 100):
        data[i] ^= 0x5A
    store.write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, "-m", "dpr_paddle.passage_store", ctx, "--output", str(store)],
                          capture_output=True, text=True, cwd=ROOT)
    assert "passage store" in last_line(proc) and "delete" in last_line(proc)
    store.write_bytes(bytes(data[:5000]))  # cut
    proc = run_cli("dense_retriever.py", "--bm25", "--ctx_file", ctx, "--qa_file", corpus / "qa.csv",
                   "--passage_store", store, "--bm25_index", tmp_path / "bm25", check=False)
    assert "passage store" in last_line(proc)
    # a BM25 index with a damaged array
    run_cli("dense_retriever.py", "--bm25", "--ctx_file", ctx, "--qa_file", corpus / "qa.csv", "--bm25_index",
            tmp_path / "bm25")
    for name in os.listdir(tmp_path / "bm25"):
        if name.endswith(".npy"):
            (tmp_path / "bm25" / name).write_bytes(b"\x93NUMPY garbage")
    line = last_line(run_cli("dense_retriever.py", "--bm25", "--ctx_file", ctx, "--qa_file", corpus / "qa.csv",
                             "--bm25_index", tmp_path / "bm25", check=False))
    assert "damaged or unreadable BM25 index" in line and "to rebuild it" in line
    # a cut top-k file
    run_cli("dense_retriever.py", "--model_name_or_path", "tiny", "--ctx_file", ctx, "--qa_file", corpus / "qa.csv",
            "--encoded_ctx_file", corpus / "emb_0", "--topk_out", tmp_path / "t0.npz", "--max_passage_length", 48)
    (tmp_path / "t0.npz").write_bytes((tmp_path / "t0.npz").read_bytes()[:300])
    proc = subprocess.run([sys.executable, "-m", "dpr_paddle.reduce", str(tmp_path / "t0.npz"), "--qa_file",
                           str(corpus / "qa.csv"), "--ctx_file", ctx], capture_output=True, text=True, cwd=ROOT)
    assert "damaged or unreadable top-k file" in last_line(proc)


def test_an_edit_in_place_of_the_same_size_is_caught(corpus, tmp_path):
    ctx = tmp_path / "p.tsv"
    shutil.copy(corpus / "p.tsv", ctx)
    base = ["--bm25", "--ctx_file", ctx, "--qa_file", corpus / "qa.csv", "--bm25_index", tmp_path / "bm25",
            "--passage_store", tmp_path / "s.sqlite"]
    subprocess.run([sys.executable, "-m", "dpr_paddle.passage_store", str(ctx), "--output",
                    str(tmp_path / "s.sqlite")], check=True, capture_output=True, cwd=ROOT)
    run_cli("dense_retriever.py", *base)
    text = ctx.read_text(encoding="utf-8")
    middle = text.index("\n", len(text) // 2) + 1
    i = text.index(" the ", middle)
    ctx.write_text(text[:i] + " THE " + text[i + 5:], encoding="utf-8")  # same size, not at either end
    assert ctx.stat().st_size == (corpus / "p.tsv").stat().st_size
    line = last_line(run_cli("dense_retriever.py", *base, check=False))
    assert "not from what" in line and "holds now" in line


def test_reduce_refuses_another_questions_file_of_the_same_length(corpus, tmp_path):
    ctx = str(corpus / "p.tsv")
    for shard in (0, 1):
        run_cli("dense_retriever.py", "--model_name_or_path", "tiny", "--ctx_file", ctx, "--qa_file",
                corpus / "qa.csv", "--encoded_ctx_file", corpus / f"emb_{shard}", "--topk_out",
                tmp_path / f"t{shard}.npz", "--max_passage_length", 48)
    lines = (corpus / "qa.csv").read_text(encoding="utf-8").splitlines()
    (tmp_path / "other.csv").write_text("\n".join(reversed(lines)) + "\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "dpr_paddle.reduce", str(tmp_path / "t*.npz"), "--qa_file",
                           str(tmp_path / "other.csv"), "--ctx_file", ctx], capture_output=True, text=True, cwd=ROOT)
    assert "is not the questions file the parts searched" in last_line(proc)


# --------------------------------------------------------------------------- 3-5. non-finite, resume, recipe

def test_a_diverging_run_stops_and_broken_models_encode_nothing(sample_dir, tmp_path):
    proc = run_cli("train_dense_encoder.py", *tiny_args_for(sample_dir, tmp_path / "run", "--max_steps", "4",
                                                            "--epochs", "1", "--learning_rate", "1e10"), check=False)
    line = last_line(proc)
    assert " at step " in line and "stopped without updating" in line and "--learning_rate" in line
    # a model whose weights are NaN: encoding refuses it instead of writing NaN vectors
    import paddle

    from dpr_paddle.modeling.pretrained import export

    model = export("tiny", str(tmp_path / "broken"))
    state = paddle.load(os.path.join(model, "model_state.pdparams"))
    key = next(k for k in state if "word_embeddings" in k)
    state[key] = paddle.full_like(state[key], float("nan"))
    paddle.save(state, os.path.join(model, "model_state.pdparams"))
    sample_head(sample_dir, str(tmp_path), 20)
    for backend in ("dygraph", "onnxruntime"):
        proc = run_cli("generate_dense_embedding.py", "--model_name_or_path", model, "--ctx_file", tmp_path / "p.tsv",
                       "--out_file", tmp_path / f"emb_{backend}", "--backend", backend, check=False)
        assert "gives non-finite values (NaN or inf)" in last_line(proc), backend
        assert not os.path.exists(tmp_path / f"emb_{backend}_0")


def test_resume_with_another_recipe_is_refused(sample_dir, tmp_path):
    run_cli("train_dense_encoder.py", *tiny_args_for(sample_dir, tmp_path / "run", "--max_steps", "2", "--epochs", "1",
                                                     "--save_steps", "1"))
    for flag, value in (("--pooling", "mean"), ("--projection_dim", "8"), ("--model_name_or_path", "tiny-ernie")):
        proc = run_cli("train_dense_encoder.py", *tiny_args_for(sample_dir, tmp_path / "run", "--max_steps", "4",
                                                                "--epochs", "1", "--resume", "auto", flag, value),
                       check=False)
        line = last_line(proc)
        assert f"that run trained with {flag}" in line and "--overwrite_save_dir" in line, line


def test_empty_positive_passages_are_counted_not_trained(tmp_path):
    from dpr_paddle.data import read_biencoder_records

    records = [{"question": "q1", "answers": ["a"], "positive_ctxs": [{"title": "t", "text": "  "}]},
               {"question": "q2", "answers": ["a"], "positive_ctxs": [{"title": "t", "text": ""},
                                                                     {"title": "t", "text": "a text"}]}]
    (tmp_path / "r.json").write_text(json.dumps(records))
    kept = read_biencoder_records(str(tmp_path / "r.json"))
    assert [r.question for r in kept] == ["q2"] and [p.text for p in kept[0].positives] == ["a text"]


def test_an_exported_model_directory_carries_its_recipe(tmp_path):
    from dpr_paddle.modeling.builder import encoder_recipe

    out = tmp_path / "minilm"
    proc = subprocess.run([sys.executable, "-m", "dpr_paddle.pretrained", "minilm", "--output_dir", str(out)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.load(open(out / "dpr_recipe.json"))["pooling"] == "mean"
    assert encoder_recipe(str(out)) == {"pooling": "mean", "similarity": "cosine", "temperature": 0.05}


# --------------------------------------------------------------------------- 6. the HTTP server

def start_server(*args):
    """`python -m dpr_paddle.serve ARGS` on a free port: (process, url), or (process, None) when it stopped."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dpr_paddle.serve", "--port", str(port), *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        return proc, url if wait_healthy(url + "/health", proc) else None
    except TimeoutError:
        proc.kill()
        raise


def test_bad_requests_get_4xx_and_never_poison_the_good_ones(corpus):
    import httpx

    proc, url = start_server("--bm25", "--ctx_file", corpus / "p.tsv", "--bm25_index", corpus / "bm25s",
                             "--passage_store", corpus / "serve.sqlite")
    try:
        questions = [line.split("\t")[0] for line in (corpus / "qa.csv").read_text(encoding="utf-8").splitlines()]
        alone = {q: httpx.post(url + "/search", json={"queries": [q], "k": 5}).json()["results"][0] for q in questions}
        for body in ('{"queries": ["q"], "k": NaN}', '{"queries": ["q"], "k": Infinity}',
                     '{"queries": ["bad \\ud800"], "k": 3}', '{"queries": ["q"], "k": 1e400}'):
            r = httpx.post(url + "/search", content=body.encode(), headers={"content-type": "application/json"})
            assert r.status_code == 422 and "detail" in r.json(), (body, r.status_code, r.text[:300])
        big = '{"queries": ["' + "x" * 5_000_000 + '"], "k": 1, "oops": 1}'
        r = httpx.post(url + "/search", content=big.encode(), headers={"content-type": "application/json"}, timeout=60)
        assert r.status_code == 422 and len(r.content) < 2000  # the body is not echoed back

        def good(q):
            return q, httpx.post(url + "/search", json={"queries": [q], "k": 5}, timeout=60)

        def bad(_):
            body = b'{"queries": ["bad \\ud800 query"], "k": 5}'  # legal JSON: an escaped lone surrogate
            return None, httpx.post(url + "/search", content=body, headers={"content-type": "application/json"},
                                    timeout=60)

        with ThreadPoolExecutor(16) as pool:  # good and bad requests at once: batched together
            jobs = [pool.submit(good if i % 2 else bad, questions[i % len(questions)]) for i in range(48)]
            for job in jobs:
                q, r = job.result()
                if q is None:
                    assert r.status_code == 422
                else:
                    assert r.status_code == 200 and r.json()["results"][0] == alone[q]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_bm25_search_leaves_the_vocabulary_alone(corpus):
    from dpr_paddle.retrieval.bm25 import BM25Index

    index = BM25Index.open(str(corpus / "p.tsv"), str(corpus / "bm25v"))
    size = len(index.retriever.vocab_dict)
    rng = random.Random(0)
    words = [" ".join("".join(rng.choice("abcdefghij") for _ in range(9)) for _ in range(30)) for _ in range(200)]
    index.search(words, 5)
    assert len(index.retriever.vocab_dict) == size


def test_a_server_over_shards_of_another_corpus_refuses_to_start(corpus, tmp_path, sample_dir):
    with open(os.path.join(sample_dir, "passages.tsv"), encoding="utf-8") as f:
        lines = f.readlines()
    (tmp_path / "other.tsv").write_text(lines[0] + "".join(lines[500:560]), encoding="utf-8")
    proc, url = start_server("--model_name_or_path", "tiny", "--max_passage_length", 48, "--ctx_file",
                             tmp_path / "other.tsv", "--encoded_ctx_file", corpus / "emb", "--passage_store",
                             tmp_path / "s.sqlite")
    if url:
        proc.terminate()
    out = proc.stdout.read()
    assert url is None and proc.returncode == 2 and "Traceback" not in out
    assert "the shards were encoded from another corpus" in out.strip().splitlines()[-1]


# --------------------------------------------------------------------------- 7. the search command

def test_search_reports_a_line_of_invalid_utf8_and_goes_on(corpus):
    proc = subprocess.run([sys.executable, "-m", "dpr_paddle.search", "--bm25", "--ctx_file", str(corpus / "p.tsv"),
                           "--bm25_index", str(corpus / "bm25s2"), "--passage_store", str(corpus / "sc.sqlite"),
                           "--n_docs", "2"], input=b"first question\n\xff\xfe broken\nsecond question\n",
                          capture_output=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.decode().count("Q: ") == 2
    assert b"standard input line 2: not UTF-8 text" in proc.stderr and b"Traceback" not in proc.stderr


# --------------------------------------------------------------------------- the fuzz test, on artefacts

def test_fuzzed_artefacts_load_the_same_or_are_one_line(corpus, tmp_path):
    """Seeded mutations (cuts, byte flips, appended garbage) of shard metadata and ids, a graph sidecar,
    a top-k file and the store: each either reads back as before or raises our one-line error."""
    from dpr_paddle.index.exact import ExactIndex
    from dpr_paddle.index.hnsw import HNSWIndex
    from dpr_paddle.index.shards import load_shards
    from dpr_paddle.retrieval.passage_store import PassageStore
    from dpr_paddle.retrieval.topk_file import read_topk, write_topk

    emb = copy_shards(corpus, tmp_path / "base")
    shards = load_shards(str(emb))
    graph = tmp_path / "base" / "g.hnsw"
    HNSWIndex(ExactIndex(shards)).open(str(graph))
    write_topk(str(tmp_path / "base" / "t.npz"), np.ones((2, 3), np.float32), [["1", "2", "3"]] * 2, {"k": 3})
    PassageStore.build(str(corpus / "p.tsv"), str(tmp_path / "base" / "s.sqlite"))

    def load(d):
        s = load_shards(str(d / "emb"))
        HNSWIndex(ExactIndex(s)).open(str(d / "g.hnsw"))
        read_topk(str(d / "t.npz"))
        st = PassageStore.open(str(d / "s.sqlite"), str(corpus / "p.tsv"))
        st.verify(str(corpus / "p.tsv"))
        return [x.ids for x in s], st.get(["1", "2"])

    want = load(tmp_path / "base")
    targets = ["emb_0/meta.json", "emb_1/ids.txt", "g.hnsw.json", "t.npz", "s.sqlite", "emb_0/vectors.npy",
               "emb_1/ids.sha1"]
    rng = random.Random(int(os.environ.get("FUZZ_SEED", "0")))
    for case in range(int(os.environ.get("FUZZ_CASES", "36"))):
        d = tmp_path / f"c{case}"
        shutil.copytree(tmp_path / "base", d)
        target = d / targets[case % len(targets)]
        data = bytearray(target.read_bytes())
        kind = rng.choice(["cut", "flip", "append"])
        if kind == "cut":
            data = data[: rng.randrange(len(data))]
        elif kind == "flip":
            at = rng.randrange(len(data) if not target.name.endswith(".npy") else 128)  # the .npy header
            data[at] ^= 1 << rng.randrange(8)
        else:
            data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        target.write_bytes(bytes(data))
        try:
            assert load(d) == want, (case, target.name, kind)
        except DprError as e:
            assert "\n" not in str(e) and str(e), (case, target.name, kind)
        shutil.rmtree(d)
