"""dense_retriever.py end to end on a small corpus with the tiny encoder."""
import json
import os

import pytest

from conftest import run_cli
from dpr_paddle.retrieval.evaluation import has_answer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sample_dir):
    d = tmp_path_factory.mktemp("retr")
    with open(os.path.join(sample_dir, "passages.tsv"), encoding="utf-8") as f:
        lines = f.readlines()[:61]  # 60 passages
    (d / "p.tsv").write_text("".join(lines), encoding="utf-8")
    titles = [line.split("\t")[2].strip() for line in lines[1:]]
    qa = "".join(f"What is known about {t}?\t{json.dumps([t])}\n" for t in titles[:20:2])
    (d / "qa.csv").write_text(qa, encoding="utf-8")
    run_cli("generate_dense_embedding.py", "--model_name_or_path", "tiny", "--ctx_file", d / "p.tsv", "--out_file",
            d / "emb", "--shard_id", 0, "--num_shards", 2, "--max_passage_length", "48")
    run_cli("generate_dense_embedding.py", "--model_name_or_path", "tiny", "--ctx_file", d / "p.tsv", "--out_file",
            d / "emb", "--shard_id", 1, "--num_shards", 2, "--max_passage_length", "48")
    return d


def retrieve(d, *extra, check=True):
    return run_cli("dense_retriever.py", "--que_model_path", "tiny", "--con_model_path", "tiny", "--ctx_file", d / "p.tsv",
                   "--qa_file", d / "qa.csv", "--n_docs", "10", *extra, check=check)


def test_exact_and_hnsw_results_in_dpr_format(corpus, tmp_path):
    proc = retrieve(corpus, "--encoded_ctx_file", str(corpus / "emb_*"), "--out_file", tmp_path / "exact.json",
                    "--trec_file", tmp_path / "run.trec")
    assert "| top-1 | top-5 |" in proc.stdout
    results = json.load(open(tmp_path / "exact.json"))
    assert len(results) == 10 and all(len(r["ctxs"]) == 10 for r in results)
    first = results[0]["ctxs"][0]
    assert set(first) == {"id", "title", "text", "score", "has_answer"}
    for r in results:
        scores = [float(c["score"]) for c in r["ctxs"]]
        assert scores == sorted(scores, reverse=True)
        for c in r["ctxs"]:
            assert c["has_answer"] == has_answer(r["answers"], c["text"])
    metrics = json.load(open(str(tmp_path / "exact.json") + ".metrics.json"))
    hits = [any(c["has_answer"] for c in r["ctxs"][:5]) for r in results]
    assert metrics["top_k_accuracy"]["5"] == sum(hits) / len(hits)
    assert metrics["index"] == "exact" and metrics["passages"] == 60
    trec = open(tmp_path / "run.trec").read().splitlines()
    assert len(trec) == 100 and trec[0].split()[:4] == ["1", "Q0", first["id"], "1"]
    # hnsw over the same shards (named by the --out_file prefix, as in the original README) agrees here
    retrieve(corpus, "--hnsw_index", "--encoded_ctx_file", str(corpus / "emb"), "--out_file", tmp_path / "hnsw.json",
             "--index_path", tmp_path / "g.hnsw", "--validate_index", "10")
    hnsw = json.load(open(tmp_path / "hnsw.json"))
    # the same top-10 scores as exact search: the same passages up to ties, which the random-init
    # encoder's near-identical vectors produce at the last ULP
    for h, e in zip(hnsw, results):
        assert [float(c["score"]) for c in h["ctxs"]] == pytest.approx([float(c["score"]) for c in e["ctxs"]], rel=1e-5)
    m = json.load(open(str(tmp_path / "hnsw.json") + ".metrics.json"))
    # recall@1 counts ids: a question whose top-1 differs from exact search's must be a score tie
    same_top1 = [h["ctxs"][0]["id"] == e["ctxs"][0]["id"] for h, e in zip(hnsw, results)]
    assert m["hnsw_recall"]["1"] == sum(same_top1) / len(same_top1) >= 0.9 and os.path.exists(tmp_path / "g.hnsw")
    for same, h, e in zip(same_top1, hnsw, results):
        assert same or float(h["ctxs"][0]["score"]) == pytest.approx(float(e["ctxs"][0]["score"]), rel=1e-6)
    # max(8 * 10, 256), but never more than the index holds
    assert m["hnsw"]["space"] in ("ip", "l2") and m["hnsw"]["ef_search"] == min(256, m["passages"])
    # DPR's inner-product-to-L2 transform (the default is hnswlib's inner-product space) agrees too
    retrieve(corpus, "--hnsw_index", "--hnsw_space", "l2", "--encoded_ctx_file", str(corpus / "emb"),
             "--out_file", tmp_path / "l2.json")
    for h, e in zip(json.load(open(tmp_path / "l2.json")), results):
        assert [float(c["score"]) for c in h["ctxs"]] == pytest.approx([float(c["score"]) for c in e["ctxs"]], rel=1e-5)


def test_bad_inputs_fail_clearly(corpus, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    proc = run_cli("dense_retriever.py", "--model_name_or_path", "tiny", "--ctx_file", corpus / "p.tsv", "--qa_file", empty,
                   "--encoded_ctx_file", str(corpus / "emb_*"), check=False)
    assert proc.returncode == 2 and f"{empty}: line 1: no questions (file is empty)" in proc.stderr
    # a ctx file that lacks the retrieved ids
    other = tmp_path / "other.tsv"
    other.write_text("id\ttext\ttitle\n999\tnothing\tNone\n")
    proc = run_cli("dense_retriever.py", "--model_name_or_path", "tiny", "--ctx_file", other, "--qa_file", corpus / "qa.csv",
                   "--encoded_ctx_file", str(corpus / "emb_*"), check=False)
    assert proc.returncode == 2 and "retrieved passage ids are not in the ctx file" in proc.stderr
    # a question encoder the shards were not encoded to pair with (MiniLM pools by mean + cosine on its own;
    # asked for the shards' cls + dot, the model differs): refused before a question is encoded
    proc = run_cli("dense_retriever.py", "--model_name_or_path", "tiny", "--que_model_path", "minilm", "--ctx_file",
                   corpus / "p.tsv", "--qa_file", corpus / "qa.csv", "--encoded_ctx_file", str(corpus / "emb_*"),
                   "--pooling", "cls", "--similarity", "dot", check=False)
    assert proc.returncode == 2 and "to be searched with the question encoder" in proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
    # a context encoder that did not make the shards: refused before anything is searched
    proc = run_cli("dense_retriever.py", "--model_name_or_path", "tiny", "--con_model_path", "minilm", "--ctx_file",
                   corpus / "p.tsv", "--qa_file", corpus / "qa.csv", "--encoded_ctx_file", str(corpus / "emb_*"),
                   check=False)
    assert proc.returncode == 2 and "not by the context encoder" in proc.stderr and "Traceback" not in proc.stderr
    # questions pooled or compared otherwise than the shards' passages
    proc = run_cli("dense_retriever.py", "--model_name_or_path", "tiny", "--ctx_file", corpus / "p.tsv", "--qa_file",
                   corpus / "qa.csv", "--encoded_ctx_file", str(corpus / "emb_*"), "--pooling", "mean", check=False)
    assert proc.returncode == 2 and "encoded with pooling cls, but the question encoder uses mean" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_default_ef_search():
    from dpr_paddle.index.factory import default_ef

    assert default_ef(100, 100) == 800  # the README's n_docs: 8 x 100
    assert default_ef(10, 10) == 256 and default_ef(50, 50) == 400
    assert default_ef(1000, 100) == 1000  # a hybrid's depth of 1000: ef never below k
    assert default_ef(100, 100, ef_search=300) == 300 and default_ef(100, 100, ef_search=50) == 100


def test_bad_paths_fail_in_one_line_before_any_model_loads(corpus, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    t0 = __import__("time").perf_counter()
    for flag in ("--out_file", "--trec_file", "--metrics_file"):
        proc = retrieve(corpus, "--encoded_ctx_file", str(corpus / "emb_*"), flag, blocker / "out.json", check=False)
        assert proc.returncode == 2 and f"{blocker / 'out.json'}: the output cannot be written there" in proc.stderr
        assert "Traceback" not in proc.stderr and "exported" not in proc.stderr
    proc = retrieve(corpus, "--encoded_ctx_file", str(corpus / "nothing_*"), check=False)
    assert proc.returncode == 2 and "no embedding shards match" in proc.stderr
    proc = run_cli("generate_dense_embedding.py", "--model_name_or_path", "tiny", "--ctx_file", corpus / "p.tsv",
                   "--out_file", blocker / "emb", check=False)
    assert proc.returncode == 2 and "the embedding shard cannot be written there" in proc.stderr
    proc = run_cli("generate_dense_embedding.py", "--model_name_or_path", "tiny", "--ctx_file", tmp_path / "none.tsv",
                   "--out_file", tmp_path / "emb", check=False)
    assert proc.returncode == 2 and "none.tsv: no such passages file" in proc.stderr
    assert __import__("time").perf_counter() - t0 < 60  # no model was loaded to find this out


def test_os_errors_read_as_one_line():
    from dpr_paddle.cli import one_line

    assert one_line(OSError(28, "No space left on device", "/data/emb_0")) == \
        "/data/emb_0: No space left on device; free some space or write elsewhere"
    assert one_line(OSError(13, "Permission denied", "/ro/x")).endswith("fix the permissions or write elsewhere")


def test_load_takes_the_commands_names_and_refuses_unknown_keywords(corpus):
    """Retriever.load also takes the flag names a DPR user knows from the commands (model_file, encoded_ctx_file,
    ctx_file, ...); both names at once, or a keyword it does not know, are refused in one line."""
    from dpr_paddle import Retriever
    from dpr_paddle.common.errors import DprError

    ours = Retriever.load("tiny", index=str(corpus / "emb"), passages=str(corpus / "p.tsv"), max_passage_length=48)
    theirs = Retriever.load(model_name_or_path="tiny", encoded_ctx_file=str(corpus / "emb"),
                            ctx_file=str(corpus / "p.tsv"), max_passage_length=48)
    assert ours.search(["What is known about it?"], k=5) == theirs.search(["What is known about it?"], k=5)
    with pytest.raises(DprError, match="model_file is the command's name for model: give one of them, not both"):
        Retriever.load("tiny", model_file="tiny", passages=str(corpus / "p.tsv"))
    with pytest.raises(DprError, match="unknown keyword.s. n_docs"):
        Retriever.load("tiny", index=str(corpus / "emb"), passages=str(corpus / "p.tsv"), n_docs=5)
