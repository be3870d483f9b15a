"""BM25 (bm25s), hybrid fusion and hard-negative mining, on real files with the real libraries."""
import json
import os

import numpy as np
import pytest

from conftest import run_cli, sample_head
from dpr_paddle.retrieval.bm25 import BM25Error, BM25Index
from dpr_paddle.data.readers import read_biencoder_records
from dpr_paddle.retrieval.evaluation import has_answer
from dpr_paddle.retrieval.fusion import rrf, weighted_sum
from dpr_paddle.retrieval.mining import MiningError, check_gold_in_corpus, mine

CORPUS = [("1", "Hamlet is a tragedy written by William Shakespeare around 1600.", "Hamlet"),
          ("2", "The Danube flows through ten countries into the Black Sea.", "Danube"),
          ("3", "Shakespeare also wrote Macbeth, a tragedy about a Scottish king.", "Macbeth"),
          ("4", "Paddle is a deep learning framework.", "PaddlePaddle")]


def write_tsv(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.write("id\ttext\ttitle\n" + "".join(f"{i}\t{t}\t{ti}\n" for i, t, ti in rows))
    return str(path)


def test_bm25_ranks_saves_reuses_and_refuses_another_corpus(tmp_path):
    ctx = write_tsv(tmp_path / "p.tsv", CORPUS)
    index = BM25Index.open(ctx, str(tmp_path / "idx"))
    scores, ids = index.search(["who wrote the tragedy hamlet", "which river flows into the black sea"], 3)
    assert ids[0][:2] == ["1", "3"] and ids[1][0] == "2"
    assert scores.shape == (2, 3) and np.all(np.diff(scores, axis=1) <= 0) and scores[0, 0] > scores[0, 1] > 0
    again = BM25Index.open(ctx, str(tmp_path / "idx"))  # loaded, not rebuilt
    assert again.search(["who wrote the tragedy hamlet"], 3)[1] == [ids[0]]
    other = write_tsv(tmp_path / "other.tsv", CORPUS[:3])
    with pytest.raises(BM25Error, match="built from .*p.tsv.*not from .*other.tsv"):
        BM25Index.open(other, str(tmp_path / "idx"))


def test_weighted_sum_is_pyserinis_normalised_hybrid():
    dense = (np.array([[0.9, 0.5, 0.1]], dtype=np.float32), [["a", "b", "c"]])
    sparse = (np.array([[10.0, 4.0]], dtype=np.float32), [["c", "d"]])
    scores, ids = weighted_sum(dense, sparse, alpha=1.0, k=4)
    # dense normalised: a .5, b 0, c -.5 (min -.5); sparse: c .5, d -.5 (min -.5)
    expected = {"a": 0.5 - 0.5, "b": 0.0 - 0.5, "c": -0.5 + 0.5, "d": -0.5 - 0.5}
    assert ids[0] == ["a", "c", "b", "d"]  # a and c tie at 0: the dense list's order decides
    np.testing.assert_allclose(scores[0], [expected[i] for i in ids[0]], atol=1e-6)
    assert weighted_sum(dense, sparse, alpha=10.0, k=1)[1] == [["c"]]


def test_rrf_sums_reciprocal_ranks():
    a = (np.zeros((1, 3), np.float32), [["x", "y", "z"]])
    b = (np.zeros((1, 2), np.float32), [["z", "x"]])
    scores, ids = rrf([a, b], k=3)
    assert ids == [["x", "z", "y"]]
    np.testing.assert_allclose(scores[0], [1 / 61 + 1 / 62, 1 / 63 + 1 / 61, 1 / 62], rtol=1e-6)


@pytest.fixture(scope="module")
def small(tmp_path_factory, sample_dir):
    """The sample's first 300 passages and the training records whose positive is among them."""
    d = tmp_path_factory.mktemp("sparse")
    ids = {line.split("\t")[0] for line in sample_head(sample_dir, d, 300)}
    with open(os.path.join(sample_dir, "train.json"), encoding="utf-8") as f:
        records = [r for r in json.load(f) if r["positive_ctxs"][0]["passage_id"] in ids][:40]
    (d / "train.json").write_text(json.dumps(records), encoding="utf-8")
    qa = "".join(f"{r['question']}\t{json.dumps(r['answers'])}\n" for r in records[:20])
    (d / "qa.csv").write_text(qa, encoding="utf-8")
    return d


def test_mined_negatives_answer_nothing_and_read_back(small, tmp_path):
    out = tmp_path / "mined.json"
    run_cli("mine_hard_negatives.py", "--train_data_path", small / "train.json", "--ctx_file", small / "p.tsv",
            "--output", out, "--bm25_index", tmp_path / "idx", "--rank_range", 0, 20, "--num_negatives", 5,
            "--batch_size", 16)
    records = read_biencoder_records(str(out))
    assert len(records) == 40
    assert sum(len(r.hard_negatives) for r in records) >= 0.9 * 40 * 5
    for r in records:
        gold = {p.id for p in r.positives}
        for n in r.hard_negatives:
            assert n.id not in gold and not has_answer(r.answers, n.text)
        assert len({n.id for n in r.hard_negatives}) == len(r.hard_negatives)
    # mined data trains through our own reader and dataset
    run_cli("train_dense_encoder.py", "--model_name_or_path", "tiny", "--train_data_path", out, "--batch_size", 8,
            "--max_steps", 1, "--epochs", 1, "--save_dir", tmp_path / "save", "--max_passage_length", 32)


def test_mining_resumes_without_loss_or_duplicates(small, tmp_path):
    records = read_biencoder_records(str(small / "train.json"))
    index = BM25Index.open(str(small / "p.tsv"), str(tmp_path / "idx"))
    job = {"test": 1}
    full = mine(records, index.search, str(small / "p.tsv"), str(tmp_path / "full.jsonl"), job, (0, 20), 4,
                batch_size=16)
    calls = []

    def dies_on_second_batch(questions, k):
        calls.append(len(questions))
        if len(calls) == 2 and len(questions) == 16:  # the first run dies in batch 1
            raise KeyboardInterrupt
        return index.search(questions, k)

    out = str(tmp_path / "resumed.jsonl")
    with pytest.raises(KeyboardInterrupt):
        mine(records, dies_on_second_batch, str(small / "p.tsv"), out, job, (0, 20), 4, batch_size=16)
    assert not os.path.exists(out) and sorted(os.listdir(out + ".partial")) == ["job.json", "part_000000.jsonl"]
    calls.clear()
    mine(records, dies_on_second_batch, str(small / "p.tsv"), out, job, (0, 20), 4, batch_size=16)
    assert calls == [16, 8]  # batch 0 was not searched again
    assert open(out).read() == open(full).read()
    assert not os.path.exists(out + ".partial")


def test_rank_range_starting_past_the_top(small, tmp_path):
    # --rank_range 3 20: the 3 best-ranked passages are never negatives (this used to raise a KeyError)
    records = read_biencoder_records(str(small / "train.json"))
    index = BM25Index.open(str(small / "p.tsv"), str(tmp_path / "idx"))
    out = mine(records, index.search, str(small / "p.tsv"), str(tmp_path / "m.jsonl"), {"t": 2}, (3, 20), 5,
               batch_size=16)
    mined = read_biencoder_records(out)
    top3 = index.search([r.question for r in records], 3)[1]
    assert sum(len(r.hard_negatives) for r in mined) > 0
    for r, best in zip(mined, top3):
        assert not {n.id for n in r.hard_negatives} & set(best)


def test_a_corpus_without_the_gold_passages_is_refused(small, tmp_path):
    records = read_biencoder_records(str(small / "train.json"))
    with pytest.raises(MiningError, match=r"train.json: record 0: gold passage_id .* is not in"):
        check_gold_in_corpus(records, {"nope"}, str(small / "train.json"), "other.tsv")
    other = write_tsv(tmp_path / "other.tsv", CORPUS)
    proc = run_cli("mine_hard_negatives.py", "--train_data_path", small / "train.json", "--ctx_file", other,
                   "--output", tmp_path / "m.json", "--bm25_index", tmp_path / "idx", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in proc.stderr and not os.path.exists(tmp_path / "m.json")


def test_bm25_and_hybrid_through_the_retriever(small, tmp_path):
    common = ["--ctx_file", small / "p.tsv", "--qa_file", small / "qa.csv", "--n_docs", 10,
              "--bm25_index", tmp_path / "idx"]
    run_cli("dense_retriever.py", "--bm25", "--out_file", tmp_path / "bm25.json", *common)
    bm25 = json.load(open(tmp_path / "bm25.json"))
    metrics = json.load(open(str(tmp_path / "bm25.json") + ".metrics.json"))
    assert metrics["mode"] == "bm25" and metrics["passages"] == 300 and len(bm25) == 20
    assert metrics["top_k_accuracy"]["5"] >= 0.9  # the sample's questions name their passage's words
    run_cli("generate_dense_embedding.py", "--model_name_or_path", "tiny", "--ctx_file", small / "p.tsv",
            "--out_file", tmp_path / "emb", "--max_passage_length", 48)
    for fusion in ("weighted", "rrf"):
        out = tmp_path / f"hybrid_{fusion}.json"
        run_cli("dense_retriever.py", "--hybrid", "--fusion", fusion, "--model_name_or_path", "tiny",
                "--encoded_ctx_file", tmp_path / "emb", "--out_file", out, "--trec_file", tmp_path / "run.trec", *common)
        results = json.load(open(out))
        m = json.load(open(str(out) + ".metrics.json"))
        assert m["mode"] == "hybrid" and m["fusion"]["method"] == fusion and len(results) == 20
        for r in results:
            scores = [float(c["score"]) for c in r["ctxs"]]
            assert len(scores) == 10 and scores == sorted(scores, reverse=True)
            assert len({c["id"] for c in r["ctxs"]}) == 10
    # a random tiny encoder adds noise; BM25 must still carry the hybrid well above chance
    assert m["top_k_accuracy"]["5"] >= 0.5
    assert open(tmp_path / "run.trec").readline().split()[5] == "dpr_paddle_hybrid"
    # mining with --retriever hybrid keeps exactly the hybrid run's top 10 that are neither gold nor answers
    mined = tmp_path / "hybrid_mined.json"
    mine_args = ["--train_data_path", small / "train.json", "--ctx_file", small / "p.tsv", "--output", mined,
                 "--bm25_index", tmp_path / "idx", "--rank_range", 0, 10, "--num_negatives", 10]
    run_cli("mine_hard_negatives.py", *mine_args, "--retriever", "hybrid", "--fusion", "rrf", "--model_name_or_path",
            "tiny", "--encoded_ctx_file", tmp_path / "emb")
    records = read_biencoder_records(str(mined))
    for r, ranked in zip(records, results):  # results: the rrf run above, over the same first 20 questions
        assert r.question == ranked["question"]
        gold = {p.id for p in r.positives}
        want = [c["id"] for c in ranked["ctxs"] if c["id"] not in gold and not has_answer(r.answers, c["text"])]
        assert [n.id for n in r.hard_negatives] == want
    proc = run_cli("mine_hard_negatives.py", *mine_args, "--retriever", "hybrid", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("error: --retriever hybrid needs --encoded_ctx_file (shards of "
                                                    "the corpus) and the model flags")


def test_dense_retrieval_without_shards_says_so(small, tmp_path):
    proc = run_cli("dense_retriever.py", "--ctx_file", small / "p.tsv", "--qa_file", small / "qa.csv",
                   "--model_name_or_path", "tiny", check=False)
    assert proc.returncode == 2 and "--encoded_ctx_file is needed" in proc.stderr and "Traceback" not in proc.stderr
