"""Query time: the passage store, the Python API, the search command and the HTTP server,
each against what dense_retriever.py returns, on real files, a real SQLite file and a real
server process on 127.0.0.1."""
import json
import os
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import ROOT, run_cli, sample_head
from dpr_paddle.common.errors import DprError
from dpr_paddle.common.net import free_port, wait_healthy
from dpr_paddle.retrieval.passage_store import PassageStore, PassageStoreError


def write_tsv(path, rows):
    path.write_text("id\ttext\ttitle\n" + "".join(f"{i}\t{t}\t{ti}\n" for i, t, ti in rows), encoding="utf-8")
    return str(path)


def test_store_looks_up_resumes_and_refuses_another_corpus(tmp_path):
    rows = [(str(i), f"text number {i}", f"T{i}") for i in range(1, 121)]
    ctx = write_tsv(tmp_path / "p.tsv", rows)
    store = PassageStore.build(ctx, str(tmp_path / "s.sqlite"), batch=50)
    assert len(store) == 120 and store.get(["7", "120", "nope"]) == {"7": ("text number 7", "T7"),
                                                                    "120": ("text number 120", "T120")}
    assert len(store.get([str(i) for i in range(1, 121)])) == 120  # more ids than SQLite binds at once
    # an interrupted build: only the first batch committed, no count yet; the next run finishes it
    db = str(tmp_path / "cut.sqlite")
    part = PassageStore.build(write_tsv(tmp_path / "head.tsv", rows[:50]), str(tmp_path / "tmp.sqlite"), batch=50)
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("CREATE TABLE passages (id TEXT PRIMARY KEY, row INTEGER, title TEXT, text TEXT)")
    conn.executemany("INSERT INTO passages VALUES (?, ?, ?, ?)", part.conn.execute("SELECT * FROM passages"))
    from dpr_paddle.common.files import file_fingerprint

    conn.executemany("INSERT INTO meta VALUES (?, ?)", [("format", json.dumps("dpr_paddle.passages/1")),
                                                        ("corpus", json.dumps(file_fingerprint(ctx))),
                                                        ("rows_done", "50")])
    conn.commit()
    conn.close()
    with pytest.raises(PassageStoreError, match="incomplete"):
        PassageStore.open(db)
    resumed = PassageStore.open_or_build(ctx, db)
    assert len(resumed) == 120
    assert resumed.conn.execute("SELECT COUNT(*), MIN(row), MAX(row) FROM passages").fetchone() == (120, 0, 119)
    other = write_tsv(tmp_path / "other.tsv", rows[:3])
    with pytest.raises(PassageStoreError, match="not from .*other.tsv"):
        PassageStore.open(str(tmp_path / "s.sqlite"), other)


def test_a_repeated_passage_id_names_both_lines(tmp_path):
    ctx = write_tsv(tmp_path / "p.tsv", [("1", "a", "A"), ("2", "b", "B"), ("1", "c", "C")])
    with pytest.raises(DprError, match=r"passage id '1' occurs twice, at lines 2 and 4"):
        PassageStore.build(ctx, str(tmp_path / "s.sqlite"))
    proc = subprocess.run([sys.executable, "-m", "dpr_paddle.passage_store", ctx, "--output", str(tmp_path / "x.sqlite")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "occurs twice, at lines 2 and 4" in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def setup(tmp_path_factory, sample_dir):
    """60 sample passages encoded with the tiny encoder, 10 questions, and dense_retriever.py's results."""
    d = tmp_path_factory.mktemp("qt")
    titles = [line.split("\t")[2].strip() for line in sample_head(sample_dir, d, 60)]
    qa = [(f"What is known about {t}?", [t]) for t in titles[:20:2]]
    (d / "qa.csv").write_text("".join(f"{q}\t{json.dumps(a)}\n" for q, a in qa), encoding="utf-8")
    run_cli("generate_dense_embedding.py", "--model_name_or_path", "tiny", "--ctx_file", d / "p.tsv",
            "--out_file", d / "emb", "--max_passage_length", 48)
    run_cli("dense_retriever.py", "--model_name_or_path", "tiny", "--ctx_file", d / "p.tsv", "--qa_file", d / "qa.csv",
            "--encoded_ctx_file", d / "emb", "--n_docs", 5, "--out_file", d / "cli.json")
    return d, [q for q, _ in qa], json.load(open(d / "cli.json"))


def same_hits(api_hits, cli_results):
    assert len(api_hits) == len(cli_results)
    for hits, res in zip(api_hits, cli_results):
        assert [h["id"] for h in hits] == [c["id"] for c in res["ctxs"]]
        assert [f"{h['score']:.6f}" for h in hits] == [c["score"] for c in res["ctxs"]]
        assert [(h["title"], h["text"]) for h in hits] == [(c["title"], c["text"]) for c in res["ctxs"]]


def test_api_equals_dense_retriever(setup):
    from dpr_paddle import Retriever

    d, questions, cli = setup
    r = Retriever.load("tiny", index=str(d / "emb"), passages=str(d / "p.tsv"), max_passage_length=48)
    assert os.path.isfile(d / "passages.sqlite")  # built beside the shards on first load
    r.batch_size = 3  # questions are batched; the batching changes nothing
    same_hits(r.search(questions, k=5), cli)
    assert r.search([], k=5) == []
    # with the store beside the shards, dense_retriever.py reads texts from it: same results
    run_cli("dense_retriever.py", "--model_name_or_path", "tiny", "--ctx_file", d / "p.tsv", "--qa_file", d / "qa.csv",
            "--encoded_ctx_file", d / "emb", "--n_docs", 5, "--out_file", d / "cli_store.json")
    assert json.load(open(d / "cli_store.json")) == cli
    hybrid = Retriever.load("tiny", index=str(d / "emb"), passages=str(d / "p.tsv"), mode="hybrid",
                            bm25_index=str(d / "bm25"))
    run_cli("dense_retriever.py", "--hybrid", "--model_name_or_path", "tiny", "--ctx_file", d / "p.tsv", "--qa_file",
            d / "qa.csv", "--encoded_ctx_file", d / "emb", "--n_docs", 5, "--out_file", d / "hy.json",
            "--bm25_index", d / "bm25")
    same_hits(hybrid.search(questions, k=5), json.load(open(d / "hy.json")))


def test_search_command_prints_a_ranked_table(setup):
    d, questions, cli = setup
    base = [sys.executable, "-m", "dpr_paddle.search", "--model_name_or_path", "tiny", "--ctx_file", str(d / "p.tsv"),
            "--encoded_ctx_file", str(d / "emb"), "--n_docs", "3"]
    title = cli[0]["ctxs"][0]["title"]
    proc = subprocess.run(base + [questions[0], "--answers", title], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == f"Q: {questions[0]}" and lines[1].split()[:3] == ["rank", "score", "id"]
    first = lines[2].split()
    assert first[0] == "1" and first[2] == cli[0]["ctxs"][0]["id"] and f"**{title}**" in lines[2]
    assert len([l for l in lines if l[:4].strip().isdigit()]) == 3
    # no question on the command line: one per line from standard input
    proc = subprocess.run(base, input=f"{questions[1]}\n\n{questions[2]}\n", capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.count("Q: ") == 2
    assert proc.stdout.splitlines()[2].split()[2] == cli[1]["ctxs"][0]["id"]


@pytest.fixture(scope="module")
def server(setup):
    """A server process on 127.0.0.1 over MiniLM vectors of the 60 passages (a real model: the tiny
    random encoder's scores tie to 1e-5, too close to compare batched and single requests)."""
    d, _, _ = setup
    run_cli("generate_dense_embedding.py", "--model_name_or_path", "minilm", "--ctx_file", d / "p.tsv",
            "--out_file", d / "mini" / "emb", "--max_passage_length", 128)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dpr_paddle.serve", "--model_name_or_path", "minilm", "--ctx_file",
                             str(d / "p.tsv"), "--encoded_ctx_file", str(d / "mini" / "emb"), "--port", str(port),
                             "--max_k", "50"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    if not wait_healthy(url + "/health", proc):
        raise AssertionError(proc.stdout.read()[-3000:])
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def close(a, b):
    """Two requests' hits agree: the same passages, scores equal to float32 noise (a batch of one
    and a batch of eight are summed in other orders by oneDNN)."""
    assert [h["id"] for h in a] == [h["id"] for h in b]
    assert [h["score"] for h in a] == pytest.approx([h["score"] for h in b], abs=1e-5)


def test_http_search_health_concurrency_and_bad_requests(setup, server):
    import httpx

    d, questions, _ = setup
    health = httpx.get(server + "/health").json()
    assert health["status"] == "ok" and health["passages"] == 60 and health["index"] == "exact"
    assert health["model_fingerprint"] == json.load(open(d / "mini" / "emb_0" / "meta.json"))["model_fingerprint"]

    def one(i, k=5):
        r = httpx.post(server + "/search", json={"queries": [questions[i]], "k": k}, timeout=60)
        assert r.status_code == 200
        return i, r.json()["results"][0]

    alone = dict(one(i) for i in range(len(questions)))  # one request at a time
    assert all(len(h) == 5 and h[0]["title"] and h[0]["text"] for h in alone.values())
    both = httpx.post(server + "/search", json={"queries": questions, "k": 5}, timeout=60).json()["results"]
    for i, hits in enumerate(both):
        close(hits, alone[i])
    with ThreadPoolExecutor(8) as pool:  # 8 clients at once, micro-batched: each gets its own answer
        ks = [5 if i % 3 else 3 for i in range(24)]  # two values of k: batched apart
        jobs = [pool.submit(one, i % len(questions), k) for i, k in enumerate(ks)]
        for job, k in zip(jobs, ks):
            i, hits = job.result()
            assert len(hits) == k
            close(hits, alone[i][:k])
    for bad in ({"queries": "not a list"}, {"queries": []}, {"queries": ["q"], "k": 0}, {"queries": ["q"], "k": 51},
                {"queries": ["  "]}, {"queries": ["q"], "extra": 1}, {"k": 3}):
        r = httpx.post(server + "/search", json=bad, timeout=30)
        assert 400 <= r.status_code < 500 and "detail" in r.json(), (bad, r.status_code, r.text)
    r = httpx.post(server + "/search", content=b"{not json", headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 422 and "Traceback" not in r.text
    assert httpx.get(server + "/nope").status_code == 404
