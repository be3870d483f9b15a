"""Nothing wrong passes silently, round four: each class of mistake has one mechanism, and each test here
walks every entry point the mistake can arrive through (the commands, `Retriever`, the HTTP server,
mining, reduce), not only the one where it was first seen."""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, run_cli, sample_slice
from test_hostile import start_server
from dpr_paddle import encode, evaluation, mine, passage_store, reduce, retrieve, search, train
from dpr_paddle.common.errors import DprError
from dpr_paddle.common.net import free_port, wait_healthy

BIG = 10**12


@pytest.fixture(scope="module")
def world(tmp_path_factory, sample_dir, tiny_dir):
    """60 sample passages in 2 shards of the tiny encoder; `other/`, an encoder of the same shape whose
    weights differ (a question tower the shards do not belong with); 5 questions."""
    d = tmp_path_factory.mktemp("round4")
    sample_slice(sample_dir, d)
    (d / "t.json").write_text(json.dumps([{"question": "who", "answers": ["zzz"], "positive_ctxs": [
        {"title": "", "text": "x"}]}]))
    for shard in (0, 1):
        encode.main(["--model_name_or_path", "tiny", "--ctx_file", str(d / "p.tsv"), "--out_file", str(d / "emb"),
                     "--shard_id", str(shard), "--num_shards", "2", "--max_passage_length", "48"])
    import paddle

    shutil.copytree(tiny_dir, d / "other")
    state = paddle.load(str(d / "other" / "model_state.pdparams"))
    rng = np.random.default_rng(0)
    paddle.save({k: paddle.to_tensor(v.numpy() + rng.normal(0, 0.02, v.shape).astype(v.numpy().dtype))
                 if v.dtype == paddle.float32 else v for k, v in state.items()}, str(d / "other" / "model_state.pdparams"))
    return d


def refused(capsys, main, *argv) -> str:
    """Run a command's `main` in this process: it must stop with status 2 and one `error:` line, no
    traceback; returns that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: "), err[-3000:]
    return line


def ran(capsys, main, *argv) -> str:
    """Run a command's `main` in this process; it must succeed; returns what it printed."""
    capsys.readouterr()
    main([str(a) for a in argv])
    return capsys.readouterr().out


def dense_args(world, model="tiny", shards="emb"):
    return ["--model_name_or_path", model, "--encoded_ctx_file", world / shards, "--ctx_file", world / "p.tsv",
            "--max_passage_length", 48]


@pytest.fixture(scope="module")
def server(world):
    """A hybrid server over the tiny shards that lets a request ask for any k."""
    proc, url = start_server("--hybrid", *dense_args(world), "--max_k", BIG, "--bm25_index", world / "bm25srv",
                             "--passage_store", world / "srv.sqlite")
    assert url, proc.stdout.read()[-3000:]
    yield url
    proc.terminate()
    proc.wait(timeout=30)


# --------------------------------------------------------------------------- 1. encoder and vectors

def test_one_pair_check_where_shards_meet_a_question_tower(world, capsys, tmp_path):
    from dpr_paddle import Retriever

    want = "to be searched with the question encoder"
    other = dense_args(world, model=world / "other")
    assert want in refused(capsys, retrieve.main, *other, "--qa_file", world / "qa.csv")
    assert want in refused(capsys, retrieve.main, *other, "--qa_file", world / "qa.csv", "--topk_out", tmp_path / "t.npz")
    assert want in refused(capsys, search.main, *other, "who wrote it")
    assert want in refused(capsys, mine.main, "--retriever", "dense", *other, "--train_data_path",
                           world / "t.json", "--output", tmp_path / "m.json")
    with pytest.raises(DprError, match=want):
        Retriever.load(str(world / "other"), index=str(world / "emb"), passages=str(world / "p.tsv"),
                       max_passage_length=48)
    proc, url = start_server(*other, "--passage_store", world / "s1.sqlite")
    assert url is None and proc.returncode == 2, proc.stdout.read()[-2000:]
    assert want in proc.stdout.read().strip().splitlines()[-1]
    # the encoder the shards were made to pair with is served
    hits = Retriever.load("tiny", index=str(world / "emb"), passages=str(world / "p.tsv"),
                          max_passage_length=48).search(["who"], k=3)
    assert len(hits[0]) == 3
    # shards from a lone --con_model_path do not know their pair: refused unless the context encoder is named
    ran(capsys, encode.main, "--con_model_path", world / "other", "--ctx_file", world / "p.tsv", "--out_file",
        tmp_path / "lone", "--max_passage_length", 48)
    lone = dense_args(world, shards=tmp_path / "lone")
    assert "do not record which question encoder" in refused(capsys, retrieve.main, *lone, "--qa_file", world / "qa.csv")
    ran(capsys, retrieve.main, *lone, "--con_model_path", world / "other", "--qa_file", world / "qa.csv")


def test_reduce_refuses_parts_of_another_question_length(world, capsys, tmp_path):
    base = [*dense_args(world, shards="emb_{}"), "--qa_file", world / "qa.csv", "--n_docs", 5]
    ran(capsys, retrieve.main, *[str(a).format(0) for a in base], "--topk_out", tmp_path / "t0.npz")
    ran(capsys, retrieve.main, *[str(a).format(1) for a in base], "--max_query_length", 24, "--topk_out",
        tmp_path / "t1.npz")
    line = refused(capsys, reduce.main, tmp_path / "t0.npz", tmp_path / "t1.npz", "--qa_file", world / "qa.csv",
                   "--ctx_file", world / "p.tsv")
    assert "max_query_length" in line


# --------------------------------------------------------------------------- 2. empty is an error

def test_empty_is_refused_by_every_reader_and_writer(world, capsys, tmp_path, sample_dir):
    from dpr_paddle import Retriever

    empty = tmp_path / "empty.tsv"
    empty.write_text("id\ttext\ttitle\n", encoding="utf-8")
    want = f"{empty}: line 2: no passages"
    assert want in refused(capsys, encode.main, "--model_name_or_path", "tiny", "--ctx_file", empty,
                           "--out_file", tmp_path / "e")
    assert want in refused(capsys, retrieve.main, "--bm25", "--ctx_file", empty, "--qa_file", world / "qa.csv",
                           "--bm25_index", tmp_path / "b")
    assert want in refused(capsys, passage_store.main, empty, "--output", tmp_path / "s.sqlite")
    assert want in refused(capsys, mine.main, "--ctx_file", empty, "--train_data_path",
                           os.path.join(sample_dir, "train.json"), "--output", tmp_path / "m.json",
                           "--bm25_index", tmp_path / "b2")
    with pytest.raises(DprError, match="no passages"):
        Retriever.load(mode="bm25", passages=str(empty), store=str(tmp_path / "s2.sqlite"))
    (tmp_path / "corpus.jsonl").write_text("", encoding="utf-8")
    assert "no passages" in refused(capsys, encode.main, "--model_name_or_path", "tiny", "--ctx_file",
                                    tmp_path / "corpus.jsonl", "--out_file", tmp_path / "e2")
    # more shards than the corpus can fill
    line = refused(capsys, encode.main, "--model_name_or_path", "tiny", "--ctx_file", world / "p.tsv", "--out_file",
                   tmp_path / "e3", "--shard_id", 99, "--num_shards", 100)
    assert "would hold no passage" in line and "--num_shards <= 60" in line
    # relevance labels without a positive: nothing to mine
    (tmp_path / "q.tsv").write_text("q1\twho\nq2\twhat\n", encoding="utf-8")
    ids = [line.split("\t")[0] for line in (world / "p.tsv").read_text(encoding="utf-8").splitlines()[1:3]]
    (tmp_path / "zero.txt").write_text(f"q1 0 {ids[0]} 0\nq2 0 {ids[1]} 0\n", encoding="utf-8")
    assert "no query" in refused(capsys, mine.main, "--qa_file", tmp_path / "q.tsv", "--qrels", tmp_path / "zero.txt",
                                 "--ctx_file", world / "p.tsv", "--output", tmp_path / "m2.json")
    assert not (tmp_path / "m2.json").exists()
    convert = load_convert_squad()
    (tmp_path / "sq.json").write_text('{"data": []}', encoding="utf-8")
    assert "no paragraph" in refused(capsys, convert.main, "--eval", tmp_path / "sq.json", "--output_dir",
                                     tmp_path / "sq")


def load_convert_squad():
    spec = importlib.util.spec_from_file_location("convert_squad", os.path.join(ROOT, "data", "convert_squad.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- 3. what the user can't see

INVISIBLE = ["", "   ", "\u200b", "\u200b\u200d\ufeff", "\u3164", "\u2800", "\t\u00a0\u2003"]


def test_nothing_to_search_is_refused_the_same_way_everywhere(world, capsys, tmp_path, server):
    import httpx

    from dpr_paddle import Retriever
    from dpr_paddle.common.options import InvalidValue

    r = Retriever.load(mode="bm25", passages=str(world / "p.tsv"), bm25_index=str(world / "bm25api"),
                       store=str(world / "api.sqlite"))
    for q in INVISIBLE:
        with pytest.raises(InvalidValue, match="has nothing to search"):
            r.search([q], k=3)
        got = httpx.post(server + "/search", json={"queries": ["fine", q], "k": 3})
        assert got.status_code == 422 and "question 1 has nothing to search" in got.json()["detail"], got.text
    assert len(r.search(["\u200bwho\u200b"], k=3)[0]) == 3  # something visible around it: searched
    proc = subprocess.run([sys.executable, "-m", "dpr_paddle.search", "--bm25", "--ctx_file", str(world / "p.tsv"),
                           "--bm25_index", str(world / "bm25api"), "--passage_store", str(world / "api.sqlite"),
                           "\u200b\u200b", "who"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and "question 0 has nothing to search" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout.count("Q: ") == 1
    # the readers of questions apply the same rule, naming file, line and field
    (tmp_path / "qa.csv").write_text('who\t["a"]\n\u200b \u200b\t["b"]\n', encoding="utf-8")
    (tmp_path / "queries.jsonl").write_text('{"_id": "1", "text": "who"}\n{"_id": "2", "text": "\\u2060"}\n')
    (tmp_path / "queries.tsv").write_text("1\twho\n2\t\u200b\n", encoding="utf-8")
    for f, field in (("qa.csv", "question"), ("queries.jsonl", "text"), ("queries.tsv", "query")):
        line = refused(capsys, retrieve.main, "--bm25", "--ctx_file", world / "p.tsv", "--bm25_index",
                       world / "bm25api", "--qa_file", tmp_path / f)
        assert f"{tmp_path / f}: line 2: field '{field}' has nothing to search" in line
    (tmp_path / "t.json").write_text(json.dumps([{"question": "\u200b", "answers": [],
                                                  "positive_ctxs": [{"title": "", "text": "x"}]}]))
    assert "record 0: field 'question' has nothing to search" in refused(
        capsys, mine.main, "--train_data_path", tmp_path / "t.json", "--ctx_file", world / "p.tsv", "--output",
        tmp_path / "m.json", "--bm25_index", world / "bm25api")


# --------------------------------------------------------------------------- 4. types at the boundary

def test_types_at_the_boundary_are_strict(world, server):
    import httpx

    from dpr_paddle import Retriever
    from dpr_paddle.common.options import InvalidValue

    for body in ({"queries": ["who"], "k": True}, {"queries": ["who"], "k": "5"}, {"queries": ["who"], "k": 5.0},
                 {"queries": [1], "k": 3}, {"queries": ["who"], "k": 3, "mode": 1}, {"queries": "who", "k": 3}):
        r = httpx.post(server + "/search", json=body)
        assert r.status_code == 422, (body, r.status_code, r.text[:300])
    assert httpx.post(server + "/search", json={"queries": ["who"], "k": 3}).status_code == 200
    r = Retriever.load(mode="bm25", passages=str(world / "p.tsv"), bm25_index=str(world / "bm25api"),
                       store=str(world / "api.sqlite"))
    for kw in ({"k": True}, {"k": 2.0}, {"k": "3"}, {"mode": 1}):
        with pytest.raises(InvalidValue):
            r.search(["who"], **{"k": 3, **kw})
    for kw in ({"depth": True}, {"alpha": True}, {"depth": 2.5}, {"hnsw_m": 16.0}):
        with pytest.raises(InvalidValue):
            Retriever.load(mode="bm25", passages=str(world / "p.tsv"), **kw)


# --------------------------------------------------------------------------- 5. single-line ids

def test_ids_are_single_line_in_every_reader(world, capsys, tmp_path):
    from dpr_paddle.data import read_biencoder_records
    from dpr_paddle.data.readers import DataFormatError

    (tmp_path / "corpus.jsonl").write_text('{"_id": "a", "text": "one"}\n{"_id": "b\\nc", "text": "two"}\n')
    want = f"{tmp_path / 'corpus.jsonl'}: line 2: field '_id'"
    assert want in refused(capsys, encode.main, "--model_name_or_path", "tiny", "--ctx_file", tmp_path / "corpus.jsonl",
                           "--out_file", tmp_path / "e")
    assert want in refused(capsys, retrieve.main, "--bm25", "--ctx_file", tmp_path / "corpus.jsonl", "--qa_file",
                           world / "qa.csv", "--bm25_index", tmp_path / "b")
    (tmp_path / "p.tsv").write_text("id\ttext\ttitle\n1\tone\tA\n2 3\ttwo\tB\n", encoding="utf-8")
    assert "line 3: field 'id'" in refused(capsys, passage_store.main, tmp_path / "p.tsv", "--output", tmp_path / "s.sqlite")
    (tmp_path / "queries.jsonl").write_text('{"_id": "q\\r1", "text": "who"}\n')
    assert "line 1: field '_id'" in refused(capsys, retrieve.main, "--bm25", "--ctx_file", world / "p.tsv",
                                            "--bm25_index", world / "bm25api", "--qa_file", tmp_path / "queries.jsonl")
    (tmp_path / "qrels.tsv").write_text("q 1\t1\t1\n", encoding="utf-8")
    from dpr_paddle.retrieval.qrels import read_qrels

    with pytest.raises(DataFormatError, match="line 1: field 'query id'"):
        read_qrels(str(tmp_path / "qrels.tsv"))
    (tmp_path / "t.json").write_text(json.dumps([{"question": "who", "answers": [], "positive_ctxs": [
        {"title": "", "text": "x", "passage_id": "p\n1"}]}]))
    with pytest.raises(DataFormatError, match="record 0: field 'positive_ctxs\\[0\\].passage_id'"):
        read_biencoder_records(str(tmp_path / "t.json"))
    (tmp_path / "sq.json").write_text(json.dumps({"data": [{"title": "A\nB", "paragraphs": []}]}))
    assert "data[0].title holds a line break" in refused(capsys, load_convert_squad().main, "--eval",
                                                         tmp_path / "sq.json", "--output_dir", tmp_path / "sq")


# --------------------------------------------------------------------------- 6. non-finite values

def test_a_non_finite_vector_is_refused_by_every_backend(world, capsys, tmp_path):
    from dpr_paddle import Retriever

    for i in (0, 1):
        shutil.copytree(world / f"emb_{i}", tmp_path / f"nan_{i}")
    vectors = np.load(tmp_path / "nan_1" / "vectors.npy", mmap_mode="r+")
    vectors[7, 3] = np.nan
    vectors.flush()
    del vectors
    bad = tmp_path / "nan_1"
    args = [*dense_args(world, shards=tmp_path / "nan"), "--qa_file", world / "qa.csv"]
    want = f"{bad}: row 7"
    assert want in refused(capsys, retrieve.main, *args)
    assert want in refused(capsys, retrieve.main, *args, "--hnsw_index", "--index_path", tmp_path / "g.bin")
    assert want in refused(capsys, retrieve.main, *args, "--index", "milvus", "--milvus_uri", tmp_path / "m.db")
    assert want in refused(capsys, mine.main, "--retriever", "dense", *dense_args(world, shards=tmp_path / "nan"),
                           "--train_data_path", world / "t.json", "--output", tmp_path / "o.json")
    r = Retriever.load("tiny", index=str(tmp_path / "nan"), passages=str(world / "p.tsv"), max_passage_length=48,
                       store=str(tmp_path / "s.sqlite"))
    with pytest.raises(DprError, match="row 7"):
        r.search(["who"], k=3)


# --------------------------------------------------------------------------- 7. allocations

def test_asking_for_more_than_the_corpus_gives_the_corpus(world, capsys, tmp_path, server):
    import httpx

    from dpr_paddle import Retriever

    ran(capsys, retrieve.main, "--hybrid", *dense_args(world), "--qa_file", world / "qa.csv", "--n_docs", BIG,
        "--bm25_index", world / "bm25api", "--out_file", tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json.metrics.json").read_text())["n_docs"] == 60
    ran(capsys, retrieve.main, *dense_args(world), "--qa_file", world / "qa.csv", "--n_docs", 5, "--hnsw_index",
        "--ef_search", BIG, "--index_path", tmp_path / "g.bin")
    r = Retriever.load("tiny", index=str(world / "emb"), passages=str(world / "p.tsv"), mode="hybrid",
                       max_passage_length=48, bm25_index=str(world / "bm25api"), depth=BIG)
    assert [len(x) for x in r.search(["who", "what"], k=BIG)] == [60, 60]
    got = httpx.post(server + "/search", json={"queries": ["who"], "k": BIG, "mode": "hybrid"}, timeout=60)
    assert got.status_code == 200 and len(got.json()["results"][0]) == 60


# --------------------------------------------------------------------------- 8. lengths

def test_lengths_beyond_the_position_embeddings_are_refused(world, capsys, tmp_path, sample_dir):
    from dpr_paddle import Retriever

    want = "longer than the encoder can read: its position embeddings stop at 512 tokens"
    assert want in refused(capsys, encode.main, "--model_name_or_path", "tiny", "--ctx_file", world / "p.tsv",
                           "--out_file", tmp_path / "e", "--max_passage_length", 1024)
    assert want in refused(capsys, retrieve.main, *dense_args(world), "--qa_file", world / "qa.csv",
                           "--max_query_length", 600)
    assert want in refused(capsys, train.main, "--model_name_or_path", "tiny", "--train_data_path",
                           os.path.join(sample_dir, "train.json"), "--save_dir", tmp_path / "run",
                           "--max_passage_length", 513, "--max_steps", 1)
    with pytest.raises(DprError, match=want):
        Retriever.load("tiny", index=str(world / "emb"), passages=str(world / "p.tsv"), max_query_length=4096)


# --------------------------------------------------------------------------- 9. relevance labels

def test_relevance_labels_mean_one_thing(capsys, tmp_path):
    import pytrec_eval

    from dpr_paddle.data.readers import DataFormatError
    from dpr_paddle.retrieval.qrels import read_qrels

    for text, why in (("q1 0 d1 0.5\n", "not a whole number"), ("q1 0 d1 inf\n", "not a whole number"),
                      ("q1 0 d1 nan\n", "not a whole number"), ("q1 0 d1 1\nq1 0 d1 2\n", "judged again"),
                      ("q1 0 d1 1\nq1\td2\n", "fields")):
        (tmp_path / "q.txt").write_text(text, encoding="utf-8")
        with pytest.raises(DataFormatError, match=why):
            read_qrels(str(tmp_path / "q.txt"))
    # near-duplicates tie under BM25: the TREC run must make trec_eval read our order
    words = ["alpha beta", "gamma delta", "epsilon zeta", "eta theta"]
    rows = [f"p{i}\t{words[i // 3]} common text here\tT" for i in range(12)]
    (tmp_path / "p.tsv").write_text("id\ttext\ttitle\n" + "\n".join(rows) + "\n", encoding="utf-8")
    (tmp_path / "queries.tsv").write_text("q1\talpha common\nq2\tgamma text\nq3\teta here\nq4\tnothing\n")
    (tmp_path / "qrels.txt").write_text("q1 0 p2 1\nq1 0 p1 0\nq2 0 p4 1\nq2 0 p5 2\nq3 0 p11 1\nq4 0 p0 0\n")
    out = ran(capsys, retrieve.main, "--bm25", "--ctx_file", tmp_path / "p.tsv", "--qa_file", tmp_path / "queries.tsv",
              "--qrels", tmp_path / "qrels.txt", "--bm25_index", tmp_path / "b", "--out_file", tmp_path / "r.json",
              "--trec_file", tmp_path / "run.trec", "--n_docs", 12)
    metrics = json.loads((tmp_path / "r.json.metrics.json").read_text())
    assert metrics["gold_questions"] == 3 and "| bm25 |" in out  # q4 has no relevant passage: left out, said
    table = ran(capsys, evaluation.main, f"bm25={tmp_path / 'r.json.metrics.json'}")  # no answers: the gold table
    assert "| system | MRR@10 | nDCG@10 | MAP |" in table and f"| bm25 | {metrics['mrr@10']:.3f} |" in table
    run = {}
    for line in (tmp_path / "run.trec").read_text().splitlines():
        qid, _, pid, _, score, _ = line.split()
        run.setdefault(qid, {})[pid] = float(score)
    assert set(run) == {"q1", "q2", "q3"}
    qrels = {"q1": {"p2": 1, "p1": 0}, "q2": {"p4": 1, "p5": 2}, "q3": {"p11": 1}}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"map", "ndcg"}).evaluate(run)
    assert abs(np.mean([m["map"] for m in per_query.values()]) - metrics["map"]) < 1e-12


# --------------------------------------------------------------------------- 10. state read back

def test_trainer_state_is_trusted_only_whole(capsys, tmp_path, sample_dir):
    from test_train import tiny_args

    from dpr_paddle.common.files import claim
    from dpr_paddle.training.checkpoint import save_dir_lock

    ran(capsys, train.main, *tiny_args(sample_dir, tmp_path / "run", "--max_steps", 2))
    good = tmp_path / "run" / "checkpoint-2"
    for name, edit, why in (("norecipe", lambda s: s.pop("run_config"), "'run_config'"),
                            ("nosched", lambda s: s.pop("scheduler"), "'scheduler'"),
                            ("nullsched", lambda s: s.update(scheduler=None), "no learning-rate scheduler state"),
                            ("badstep", lambda s: s.update(global_step="abc"), "'global_step' is 'abc'"),
                            ("negstep", lambda s: s.update(epoch=-1), "'epoch' is -1")):
        bad = tmp_path / name
        shutil.copytree(good, bad)
        state = json.loads((bad / "trainer_state.json").read_text())
        edit(state)
        (bad / "trainer_state.json").write_text(json.dumps(state))
        assert why in refused(capsys, train.main, *tiny_args(sample_dir, tmp_path / f"r_{name}", "--resume", bad,
                                                             "--max_steps", 3))
    # a second training on a save_dir another process writes is refused, not mixed in
    lock = claim(save_dir_lock(str(tmp_path / "busy")), "the test's")
    try:
        line = refused(capsys, train.main, *tiny_args(sample_dir, tmp_path / "busy", "--max_steps", 1))
        assert f"--save_dir {tmp_path / 'busy'} is in use by another process (pid {os.getpid()})" in line
    finally:
        lock.close()


# --------------------------------------------------------------------------- 11. workers and their parent

def test_workers_die_with_their_parent(world):
    import httpx

    port = free_port()
    args = [sys.executable, "-m", "dpr_paddle.serve", "--bm25", "--ctx_file", str(world / "p.tsv"), "--bm25_index",
            str(world / "bm25api"), "--passage_store", str(world / "api.sqlite"), "--workers", "2", "--port", str(port)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    assert wait_healthy(url + "/health", proc)
    children = [int(p) for p in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()]
    assert len(children) == 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(os.path.exists(f"/proc/{c}") and
                                         open(f"/proc/{c}/stat").read().split()[2] != "Z" for c in children):
        time.sleep(0.2)
    assert not any(os.path.exists(f"/proc/{c}") and open(f"/proc/{c}/stat").read().split()[2] != "Z"
                   for c in children), "workers outlived their parent"
    proc = subprocess.Popen(args[:-4] + ["--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            try:
                if httpx.get(url + "/health", timeout=2).json()["pid"] == proc.pid:
                    break
            except (httpx.TransportError, ValueError, KeyError):
                time.sleep(0.3)
        assert proc.poll() is None, proc.stderr.read()[-2000:]  # the port was free for a restart
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --------------------------------------------------------------------------- 12. identity and cp -p

def test_a_corpus_edited_with_its_mtime_kept_is_seen(world, capsys, tmp_path):
    corpus = tmp_path / "p.tsv"
    shutil.copy2(world / "p.tsv", corpus)
    base = ["--bm25", "--ctx_file", corpus, "--qa_file", world / "qa.csv", "--bm25_index", tmp_path / "b"]
    ran(capsys, retrieve.main, *base)
    st = os.stat(corpus)
    data = corpus.read_bytes()
    edited = data.replace(b"the", b"THE", 1)
    assert len(edited) == len(data) and edited != data
    (tmp_path / "new.tsv").write_bytes(edited)
    subprocess.run(["cp", "-p", str(tmp_path / "new.tsv"), str(corpus)], check=True)  # same inode, mtime copied
    os.utime(corpus, ns=(st.st_atime_ns, st.st_mtime_ns))  # and set back as rsync -t would
    assert os.stat(corpus).st_mtime_ns == st.st_mtime_ns and os.stat(corpus).st_size == st.st_size
    assert "not from what" in refused(capsys, retrieve.main, *base)


# --------------------------------------------------------------------------- 13. malformed JSON inputs

@pytest.mark.parametrize("data, where", [
    ({"data": {}}, "data is an object, expected a list"),
    ({"data": [{"title": "a", "paragraphs": None}]}, "data[0].paragraphs is null or missing, expected a list"),
    ({"data": [{"title": "a", "paragraphs": [{"context": "x", "qas": [{"question": "q", "answers": [{"text": 3}]}]}]}]},
     "data[0].paragraphs[0].qas[0].answers[0].text is a number, expected a string"),
    ({"data": [{"title": 7, "paragraphs": []}]}, "data[0].title is a number, expected a string"),
    ({"data": [{"paragraphs": [{"context": "x", "qas": [None]}]}]},
     "data[0].paragraphs[0].qas[0] is null or missing, expected an object"),
    ([], "the top level is a list, expected an object"),
])
def test_malformed_squad_names_the_json_path(capsys, tmp_path, data, where):
    (tmp_path / "sq.json").write_text(json.dumps(data))
    line = refused(capsys, load_convert_squad().main, "--eval", tmp_path / "sq.json", "--output_dir", tmp_path / "o")
    assert line == f"error: {tmp_path / 'sq.json'}: {where}"


# --------------------------------------------------------------------------- 14. answers in mixed scripts

def test_latin_answers_inside_chinese_text_are_found(capsys, tmp_path):
    from dpr_paddle.retrieval.evaluation import has_answer

    assert has_answer(["L2"], "编号L2，为") and has_answer(["3.5"], "约3.5公里") and has_answer(["iPhone 4"], "推出iPhone 4的")
    assert not has_answer(["L2"], "编号L23，为") and has_answer(["2010"], "成立於２０１０年")  # full-width digits too
    # English is DPR's, token for token
    assert has_answer(["L2"], "the L2 norm") and not has_answer(["L2"], "the XL2 norm")
    assert not has_answer(["lo"], "hello") and has_answer(["ω-force"], "the ω-force here")
    (tmp_path / "p.tsv").write_text("id\ttext\ttitle\n1\t该型号编号L2，为第二代产品\t产品\n2\t其他内容与此无关的文字\t其他\n",
                                    encoding="utf-8")
    (tmp_path / "qa.csv").write_text('该型号的编号是什么\t["L2"]\n', encoding="utf-8")
    out = ran(capsys, retrieve.main, "--bm25", "--ctx_file", tmp_path / "p.tsv", "--qa_file", tmp_path / "qa.csv",
              "--bm25_index", tmp_path / "b", "--n_docs", 1)
    assert "| bm25 | 1.000 |" in out


# --------------------------------------------------------------------------- 15. damaged milvus-lite files

def test_damaged_milvus_lite_databases_are_one_line(world, capsys, tmp_path):
    from dpr_paddle import Retriever
    from dpr_paddle.index.factory import IndexSpec

    args = [*dense_args(world), "--qa_file", world / "qa.csv", "--index", "milvus", "--n_docs", 3]
    ran(capsys, retrieve.main, *args, "--milvus_uri", tmp_path / "good.db")
    (tmp_path / "garbage.db").write_bytes(os.urandom(3000))
    shutil.copytree(tmp_path / "good.db", tmp_path / "cut.db")
    for f in (tmp_path / "cut.db").rglob("*.parquet"):
        f.write_bytes(f.read_bytes()[:100])
    shutil.copytree(tmp_path / "good.db", tmp_path / "noschema.db")
    for f in (tmp_path / "noschema.db").rglob("schema.json"):
        f.write_text("")
    for name, why in (("garbage.db", "it is a file, not a milvus-lite database"), ("cut.db", "damaged"),
                      ("noschema.db", "damaged")):
        assert why in refused(capsys, retrieve.main, *args, "--milvus_uri", tmp_path / name)
        with pytest.raises(DprError, match=why):
            Retriever.load("tiny", index=str(world / "emb"), passages=str(world / "p.tsv"), max_passage_length=48,
                           index_spec=IndexSpec("milvus", milvus_uri=str(tmp_path / name)),
                           store=str(tmp_path / "s.sqlite"))
    # this process holds good.db open (milvus-lite serves one process): a second process is refused in one line
    proc = run_cli("dense_retriever.py", *args, "--milvus_uri", tmp_path / "good.db", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "another process has it open" in proc.stderr.strip().splitlines()[-1]
