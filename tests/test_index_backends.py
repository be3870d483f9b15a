"""Index backends behind one factory: Milvus (milvus-lite, real), hnswlib graphs per shard, the
reduce step over per-shard top-k files, and the memory plan that refuses what cannot fit."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, run_cli, sample_head
from dpr_paddle.common.errors import DprError
from dpr_paddle.index.hnsw import HNSWIndex, ShardGraphs, graph_path
from dpr_paddle.index.exact import ExactIndex, recall_at_k
from dpr_paddle.index.factory import IndexMemoryError, IndexSpec, check_memory, open_index, plan_memory
from dpr_paddle.index.milvus import MilvusIndex, MilvusIndexError
from dpr_paddle.index.shards import load_shards
from test_embeddings_index import fake_shards


def clustered(n, dim=32, seed=0, queries=60):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((30, dim)) * 2
    vecs = (centers[rng.integers(0, 30, n)] + rng.standard_normal((n, dim)) * 0.6) * rng.uniform(0.9, 1.3, (n, 1))
    q = centers[rng.integers(0, 30, queries)] + rng.standard_normal((queries, dim)) * 0.6
    return vecs.astype(np.float32), q.astype(np.float32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("backends")
    vecs, queries = clustered(3000)
    exact = ExactIndex(load_shards(fake_shards(d, vecs, 3)))
    return d, vecs, queries, exact


# --------------------------------------------------------------------------- Milvus (milvus-lite and a server)

def built_params(milvus):
    """The build parameters Milvus reports for the collection's index: milvus-lite nests them under
    "params", a server returns them as flat keys."""
    described = milvus.client.describe_index(milvus.collection, "vector")
    if described.get("params") is not None:
        return described["params"]
    return {k: int(v) for k, v in described.items() if k in ("M", "efConstruction", "nlist", "m", "nbits")}


def test_the_server_memory_plan_matches_the_measured_servers():
    """index.factory.milvus_server_bytes within 15 % of every point bench/milvus_memory.py measured on a
    Milvus 2.3.5 server (bench/results/milvus_memory*.json: 100k and 1M x 384, indexes built)."""
    import glob
    import os

    from dpr_paddle.index.factory import milvus_server_bytes

    rows = [r for path in glob.glob(os.path.join(ROOT, "bench", "results", "milvus_memory*.json"))
            for r in json.load(open(path))["rows"]]
    assert {(r["n"], r["index_type"]) for r in rows} >= {(100_000, "IVF_SQ8"), (100_000, "IVF_PQ"), (100_000, "HNSW"),
                                                          (1_000_000, "IVF_SQ8"), (1_000_000, "HNSW")}
    for r in rows:
        measured = max(r["measured_mb"], r["after_sweep_mb"]) * 2**20
        plan = milvus_server_bytes(r["n"], r["dim"], r["index_type"], r["M"] or 16, 0)
        assert 0.85 <= plan / measured <= 1.15, r


def assert_serves_its_index(milvus):
    """On a server, build() returns once the index covers every row and the query node serves the
    indexed segments (a server indexes sealed segments in the background; until the query node swaps
    them in it searches them by brute force). Segments under 1,024 rows are never indexed."""
    from dpr_paddle.index.milvus import is_remote

    if not is_remote(milvus.uri):
        return
    state = milvus.client.describe_index(milvus.collection, "vector")
    assert (state["indexed_rows"], state["pending_index_rows"]) == (milvus.count, 0)
    loaded = milvus.client.list_loaded_segments(milvus.collection)
    assert sum(s.num_rows for s in loaded) == milvus.count
    if milvus.index_type != "FLAT":  # a server keeps FLAT segments as they are (no index files)
        assert all(s.index_name == "vector" for s in loaded if s.num_rows >= 1024), loaded


@pytest.mark.parametrize("index_type,ef", [("FLAT", 0), ("HNSW", 2000)])
def test_milvus_equals_exact_search(data, milvus_uri, index_type, ef):
    _, vecs, queries, exact = data
    milvus = MilvusIndex(exact, milvus_uri, index_type=index_type, m=24).build()
    assert built_params(milvus) == milvus.params
    assert_serves_its_index(milvus)
    s_m, r_m = milvus.search(queries, 20, ef=ef)
    s_e, r_e = exact.search(queries, 20)
    assert recall_at_k(r_m, r_e, ks=(20,))[20] == 1.0
    np.testing.assert_allclose(s_m, s_e, rtol=1e-5)  # exact inner products, best first
    assert milvus.describe()["index_type"] == index_type


def test_milvus_ivf_sq8_recall_and_reopen(data, milvus_uri):
    _, _, queries, exact = data
    uri = milvus_uri
    ivf = MilvusIndex(exact, uri, index_type="IVF_SQ8", nprobe=8).build()
    # the build parameters reach milvus-lite (pymilvus 3's flat keys alone would be dropped there)
    assert built_params(ivf) == {"nlist": 76} == ivf.params
    r_e = exact.search(queries, 20)[1]
    assert recall_at_k(ivf.search(queries, 20)[1], r_e, ks=(20,))[20] >= 0.9
    # reopened from the file: nothing is loaded twice, the collection is loaded before the search
    again = MilvusIndex(exact, uri, index_type="IVF_SQ8", nprobe=8).build()
    assert again._rows_present() == 3000
    assert np.array_equal(again.search(queries, 20)[1], ivf.search(queries, 20)[1])


def test_an_interrupted_milvus_load_resumes_without_loss_or_duplicates(data, milvus_uri, monkeypatch):
    import dpr_paddle.index.milvus as mi

    _, _, queries, exact = data
    monkeypatch.setattr(mi, "LOAD_BATCH", 700)
    uri = milvus_uri
    first = MilvusIndex(exact, uri, index_type="FLAT")
    first.client = mi.connect(uri)
    first._create()
    if mi.is_remote(uri):  # a server counts rows of a loaded collection only (MilvusIndex.build's order)
        first._ensure_index()
        first.client.load_collection(first.collection)
    first._load_rows(stop_after=2)  # killed after two whole batches
    assert first._rows_present() == 1400
    # and a third batch half-written, as a crash inside an insert could leave it
    first.client.insert(first.collection, [{"row": r, "pid": p, "vector": v} for r, p, v in first._rows(1400, 1750)])
    first.client.flush(first.collection)
    resumed = MilvusIndex(exact, uri, index_type="FLAT").build()
    assert resumed.collection == first.collection and resumed._rows_present() == 3000
    got = resumed.client.query(resumed.collection, filter="row >= 0", output_fields=["row", "pid"], limit=16384)
    assert sorted(int(g["row"]) for g in got) == list(range(3000))  # no gaps, no duplicates
    assert all(g["pid"] == exact.row_id(int(g["row"])) for g in got)
    assert np.array_equal(resumed.search(queries, 10)[1], exact.search(queries, 10)[1])


def test_a_collection_of_another_model_is_refused(data, tmp_path, milvus_uri):
    d, vecs, _, exact = data
    uri = milvus_uri
    mine = MilvusIndex(exact, uri, index_type="FLAT").build()
    other = ExactIndex(load_shards(fake_shards(tmp_path / "other", vecs, 3, fingerprint="xyz")))
    theirs = MilvusIndex(other, uri, index_type="FLAT")
    assert theirs.collection != mine.collection  # by default every set of shards gets its own collection
    with pytest.raises(MilvusIndexError, match=r"holds 3000 passages of model abc .*not these shards' 3000 passages "
                                               r"of model xyz"):
        MilvusIndex(other, uri, collection=mine.collection, index_type="FLAT").build()
    wide = ExactIndex(load_shards(fake_shards(tmp_path / "wide", np.ones((30, 8), np.float32), 1)))
    with pytest.raises(MilvusIndexError, match=r"\(dim 32\).*\(dim 8\)"):
        MilvusIndex(wide, uri, collection=mine.collection).build()
    assert mine.search(np.ones((1, 32), np.float32), 5)[1].shape == (1, 5)  # what was loaded is untouched


def test_ivf_pq_on_a_server(data, milvus_server):
    """IVF_PQ, which milvus-lite lacks: built with our parameters, recall within PQ's loss."""
    from pymilvus import MilvusClient

    _, _, queries, exact = data
    for name in MilvusClient(uri=milvus_server).list_collections():
        MilvusClient(uri=milvus_server).drop_collection(name)
    pq = MilvusIndex(exact, milvus_server, index_type="IVF_PQ", nprobe=16).build()
    assert built_params(pq) == {"nlist": 76, "m": 8, "nbits": 8} == pq.params
    assert_serves_its_index(pq)
    recall = recall_at_k(pq.search(queries, 20)[1], exact.search(queries, 20)[1], ks=(20,))[20]
    assert recall >= 0.75  # measured 0.81: 8 sub-vectors of 4 dimensions, 8 bits each
    scores, rows = pq.search(queries, 20)
    np.testing.assert_allclose(scores, np.einsum("nd,nkd->nk", queries, exact.vectors_of(rows)), rtol=1e-5)


def test_two_processes_search_one_server_at_once(data, tmp_path, milvus_server):
    """Two client processes, each loading the same shards against the same server collection, search at
    once and both get exact search's answer."""
    from pymilvus import MilvusClient

    d, _, queries, exact = data
    for name in MilvusClient(uri=milvus_server).list_collections():
        MilvusClient(uri=milvus_server).drop_collection(name)
    MilvusIndex(exact, milvus_server, index_type="HNSW").build()
    np.save(tmp_path / "q.npy", queries)
    code = ("import sys, numpy as np\n"
            "from dpr_paddle.index.exact import ExactIndex\n"
            "from dpr_paddle.index.milvus import MilvusIndex\n"
            "from dpr_paddle.index.shards import load_shards\n"
            f"exact = ExactIndex(load_shards({str(d / 'fake')!r}))\n"
            f"m = MilvusIndex(exact, {milvus_server!r}, index_type='HNSW').build()\n"
            f"q = np.load({str(tmp_path / 'q.npy')!r})\n"
            "rows = np.concatenate([m.search(q, 10, ef=2000)[1] for _ in range(20)])\n"
            "np.save(sys.argv[1], rows)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"r{i}.npy")], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()[-2000:]
    want = np.tile(exact.search(queries, 10)[1], (20, 1))
    for i in range(2):
        assert np.array_equal(np.load(tmp_path / f"r{i}.npy"), want)


def test_bad_milvus_uris_are_one_line(data, tmp_path):
    _, _, _, exact = data
    with pytest.raises(MilvusIndexError, match=r"cannot open Milvus at http://127.0.0.1:9.*docker compose"):
        MilvusIndex(exact, "http://127.0.0.1:9").build()
    with pytest.raises(MilvusIndexError, match=r"must end in \.db"):
        MilvusIndex(exact, str(tmp_path / "milvus.sqlite")).build()


# --------------------------------------------------------------------------- hnsw per shard

def test_per_shard_graphs_equal_one_graph_and_exact_search(data):
    d, _, queries, exact = data
    per_shard = ShardGraphs(exact, m=32, ef_construction=400).build()
    for i, shard in enumerate(exact.shards):  # each graph is saved inside its shard
        assert graph_path(shard.path, 32, 400, "auto") == per_shard.graph_path(i)
        assert open(per_shard.graph_path(i), "rb").read(1)
    one = HNSWIndex(exact, m=32, ef_construction=400).build()
    s_p, r_p = per_shard.search(queries, 50, ef=1000)
    s_o, r_o = one.search(queries, 50, ef=1000)
    s_e, r_e = exact.search(queries, 50)
    # full-recall settings: the three find the same passages (order may differ only inside ties that
    # einsum and BLAS round differently, 1e-7 relative)
    assert recall_at_k(r_p, r_e, ks=(50,))[50] == 1.0 and recall_at_k(r_o, r_e, ks=(50,))[50] == 1.0
    np.testing.assert_allclose(s_p, s_e, rtol=1e-6)
    np.testing.assert_array_equal(s_p, s_o)  # both graphs rescore with the same exact products
    resident = ShardGraphs(exact, m=32, ef_construction=400, resident=True).build()  # loaded, not rebuilt
    assert all(g is not None for g in resident.graphs)
    assert np.array_equal(resident.search(queries, 50, ef=1000)[1], r_p)


def test_a_stale_shard_graph_is_rebuilt_with_a_warning(data, tmp_path, caplog):
    _, vecs, queries, _ = data
    exact = ExactIndex(load_shards(fake_shards(tmp_path, vecs, 2)))
    graphs = ShardGraphs(exact, m=16, ef_construction=100).build()
    meta_file = graphs.graph_path(1) + ".json"
    meta = json.loads(open(meta_file).read())
    meta["shards"] = ["another shard"]
    open(meta_file, "w").write(json.dumps(meta))
    caplog.clear()
    ShardGraphs(exact, m=16, ef_construction=100).build()
    assert any("was built from other shards" in r.message for r in caplog.records)
    assert json.loads(open(meta_file).read())["shards"] != ["another shard"]


# --------------------------------------------------------------------------- the memory plan

def test_the_memory_plan_refuses_what_cannot_fit_and_names_what_would():
    sizes, dim = [420_000] * 50, 768  # DPR's 21M passages in its 50 shards
    plan = plan_memory(IndexSpec("hnsw"), sizes, dim, available=24 * 2**30)
    assert not plan.fits and 120 * 2**30 < plan.needed < 140 * 2**30  # 60 GiB of vectors mapped + the graph (+ its copy)
    with pytest.raises(IndexMemoryError) as e:
        check_memory(plan, force=False)
    message = str(e.value)
    assert "\n" not in message and "--hnsw_per_shard" in message and "--milvus_uri" in message and "--force" in message
    check_memory(plan, force=True)  # --force: a warning, no error
    per_shard = plan_memory(IndexSpec("hnsw_per_shard"), sizes, dim, available=24 * 2**30)
    assert per_shard.fits and per_shard.needed < plan.needed / 40
    remote = plan_memory(IndexSpec("milvus", milvus_uri="http://h:19530", milvus_index_type="IVF_SQ8"), sizes, dim,
                         available=24 * 2**30)
    # 21M x 768: IVF_SQ8's codes (15.0 GiB) and 160 bytes a row (3.1 GiB), as measured on a server at 1M
    assert remote.fits and remote.needed == 0 and "holds ~18.2 GB of IVF_SQ8" in remote.line()
    lite = {t: plan_memory(IndexSpec("milvus", milvus_index_type=t), [1_000_000], 384, available=1).needed
            for t in ("HNSW", "IVF_SQ8")}
    # as measured at 1M x 384 (docs/benchmarks.md 3d): 5.5 and 5.1 GB peak RSS growth
    assert 4.8 * 2**30 < lite["IVF_SQ8"] < lite["HNSW"] < 5.8 * 2**30


def test_open_index_honours_the_plan(data, monkeypatch):
    _, _, queries, exact = data
    monkeypatch.setenv("DPR_PADDLE_MEMORY_GB", "0.0001")
    with pytest.raises(IndexMemoryError, match="memory plan: hnsw needs"):
        open_index(IndexSpec("hnsw"), exact)
    assert open_index(IndexSpec("exact"), exact) is exact  # exact search streams: always allowed
    forced = open_index(IndexSpec("hnsw", force=True), exact)
    assert forced.search(queries, 5, ef=100)[1].shape == (60, 5)


# --------------------------------------------------------------------------- CLIs: per shard, reduce, Milvus

@pytest.fixture(scope="module")
def encoded(sample_dir, tmp_path_factory, tiny_dir):
    d = tmp_path_factory.mktemp("sharded")
    titles = [line.split("\t")[2].strip() for line in sample_head(sample_dir, d, 90)]
    (d / "qa.csv").write_text("".join(f"About {t}?\t{json.dumps([t])}\n" for t in titles[:30:3]), encoding="utf-8")
    for shard in range(3):  # three machines, each encoding its shard and building its graph
        run_cli("generate_dense_embedding.py", "--model_name_or_path", tiny_dir, "--ctx_file", d / "p.tsv",
                "--out_file", d / "emb", "--shard_id", shard, "--num_shards", 3, "--hnsw_per_shard")
        assert (d / f"emb_{shard}" / "hnsw_M48_efc400_auto.bin").is_file()
    return d, tiny_dir


def retriever(d, model, *extra, check=True, env=None):
    return run_cli("dense_retriever.py", "--model_name_or_path", model, "--ctx_file", d / "p.tsv", "--qa_file",
                   d / "qa.csv", "--n_docs", 20, *extra, check=check, env=env)


def test_reduce_of_per_machine_searches_equals_the_in_process_merge(encoded):
    d, model = encoded
    retriever(d, model, "--encoded_ctx_file", d / "emb", "--hnsw_per_shard", "--out_file", d / "inproc.json")
    for shard in range(3):
        retriever(d, model, "--encoded_ctx_file", d / f"emb_{shard}", "--hnsw_per_shard", "--topk_out",
                  d / f"topk_{shard}.npz")
    proc = subprocess.run([sys.executable, "-m", "dpr_paddle.reduce", str(d / "topk_*.npz"), "--qa_file",
                           str(d / "qa.csv"), "--ctx_file", str(d / "p.tsv"), "--out_file", str(d / "reduced.json")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.load(open(d / "reduced.json")) == json.load(open(d / "inproc.json"))
    metrics = json.load(open(d / "inproc.json.metrics.json"))
    assert metrics["index"] == "hnsw_per_shard" and metrics["hnsw_per_shard"]["graphs"] == 3
    # an incomplete or doubled set is one line
    proc = subprocess.run([sys.executable, "-m", "dpr_paddle.reduce", str(d / "topk_0.npz"), str(d / "topk_2.npz"),
                           "--qa_file", str(d / "qa.csv"), "--ctx_file", str(d / "p.tsv")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "missing [1]" in proc.stderr and "Traceback" not in proc.stderr


def test_milvus_from_the_retriever_cli_and_a_memory_refusal(encoded):
    d, model = encoded
    exact = retriever(d, model, "--encoded_ctx_file", d / "emb", "--out_file", d / "exact.json")
    assert exact.returncode == 0
    retriever(d, model, "--encoded_ctx_file", d / "emb", "--index", "milvus", "--milvus_index_type", "FLAT",
              "--out_file", d / "milvus.json")
    assert (d / "milvus.db").exists()  # milvus-lite's file beside the shards
    got, want = json.load(open(d / "milvus.json")), json.load(open(d / "exact.json"))
    for g, w in zip(got, want):  # the same ranked scores; passages differ only inside float ties (einsum vs BLAS)
        scores = [float(c["score"]) for c in w["ctxs"]]
        np.testing.assert_allclose([float(c["score"]) for c in g["ctxs"]], scores, rtol=1e-5)
        tied = {c["id"] for c in g["ctxs"] + w["ctxs"] if abs(float(c["score"]) - scores[-1]) <= 1e-5 * abs(scores[-1])}
        assert {c["id"] for c in g["ctxs"]} - tied == {c["id"] for c in w["ctxs"]} - tied
    assert json.load(open(d / "milvus.json.metrics.json"))["milvus"]["index_type"] == "FLAT"
    proc = retriever(d, model, "--encoded_ctx_file", d / "emb", "--hnsw_index", check=False,
                     env={"DPR_PADDLE_MEMORY_GB": "0.00001"})
    assert proc.returncode == 2 and "memory plan: hnsw needs" in proc.stderr and "Traceback" not in proc.stderr
    proc = retriever(d, model, "--encoded_ctx_file", d / "emb", "--hnsw_index", "--index", "milvus", check=False)
    assert proc.returncode == 2 and "several indexes" in proc.stderr


def test_dense_retriever_against_a_milvus_server(encoded, milvus_server):
    """The path that crashed with `collection not loaded` on a server: dense_retriever.py --milvus_uri http://..."""
    d, model = encoded
    if not (d / "exact.json").exists():
        retriever(d, model, "--encoded_ctx_file", d / "emb", "--out_file", d / "exact.json")
    for index_type in ("HNSW", "IVF_FLAT"):
        out = d / f"server_{index_type}.json"
        retriever(d, model, "--encoded_ctx_file", d / "emb", "--index", "milvus", "--milvus_uri", milvus_server,
                  "--milvus_index_type", index_type, "--milvus_nprobe", 1024, "--ef_search", 2000, "--out_file", out)
        got, want = json.load(open(out)), json.load(open(d / "exact.json"))
        for g, w in zip(got, want):
            np.testing.assert_allclose([float(c["score"]) for c in g["ctxs"]], [float(c["score"]) for c in w["ctxs"]],
                                       rtol=1e-5)
        assert json.load(open(str(out) + ".metrics.json"))["milvus"]["index_type"] == index_type


def test_index_errors_are_dpr_errors():
    assert issubclass(MilvusIndexError, DprError) and issubclass(IndexMemoryError, DprError)


def test_a_second_server_starts_beside_the_first(milvus_server, tmp_path):
    """Two local servers on one machine (a user's and a test run's): the embedded etcd gets its own ports.
    It used to keep etcd's peer port 2380, so the second one died with a panic after 3 minutes."""
    import signal
    import socket

    from pymilvus import MilvusClient

    squatter = socket.socket()
    try:
        squatter.bind(("127.0.0.1", 2380))  # whoever holds etcd's default peer port
        squatter.listen()
    except OSError:
        pass  # already held
    # started as a shell starts a background job (SIGINT ignored, inherited through exec), which a user's script and
    # a CI runner do: Ctrl-C must still stop it, and stop its Milvus child with it
    base, err = tmp_path / "second", open(tmp_path / "stderr.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "dpr_paddle.milvus_server", "--base_dir", str(base)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    children = []
    try:
        uri = proc.stdout.readline().strip()
        assert uri.startswith("http://127.0.0.1:") and uri != milvus_server, (tmp_path / "stderr.log").read_text()[-2000:]
        client = MilvusClient(uri=uri)
        client.create_collection("second", dimension=4)
        assert client.list_collections() == ["second"]
        client.close()
        children = [int(p) for p in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()]
        assert children  # the Milvus binary
    finally:
        squatter.close()
        err.close()
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=30)  # it used to ignore this Ctrl-C and was killed after 60 s, its child left
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    assert code == 0
    for child in children:  # stopped with it, not orphaned
        assert not os.path.exists(f"/proc/{child}") or "zombie" in open(f"/proc/{child}/status").read()

    # a Milvus that dies while starting (a damaged install, storage it cannot open): one line with its status and
    # its log's last line at once, where the package's own wait polled the dead process for three minutes
    (base / "bin" / "milvus").write_text("#!/bin/sh\necho 'panic: cannot open storage' >&2\nexit 3\n")
    dead = subprocess.run([sys.executable, "-m", "dpr_paddle.milvus_server", "--base_dir", str(base)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert dead.returncode == 2 and "Traceback" not in dead.stderr, dead.stderr[-2000:]
    assert dead.stderr.strip().splitlines()[-1] == (
        f"error: the Milvus server exited with status 3 while starting; the last line of {base}/logs/milvus-stderr.log: "
        "panic: cannot open storage")
