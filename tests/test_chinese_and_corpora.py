"""Chinese and any corpus: answer matching per script, BM25 analyzers, qrels metrics by pytrec_eval,
BEIR / MS MARCO / SQuAD-style inputs, and the whole pipeline on DRCD with a Chinese-vocabulary ERNIE."""
import json
import os

import pytest

from conftest import run_cli, shared_path
from dpr_paddle.data import DataFormatError, iter_passage_chunks, read_biencoder_records, read_qa
from dpr_paddle.retrieval.analyzers import cjk_terms, resolve, zh_terms
from dpr_paddle.retrieval.evaluation import has_answer
from dpr_paddle.retrieval.qrels import METRIC_KEYS, read_qrels


def convert(out, *args):
    run_cli("data/convert_squad.py", "--output_dir", out, *args)
    return out


@pytest.fixture(scope="module")
def drcd(tmp_path_factory):
    """DRCD dev's questions against the 2,000 pooled paragraphs of dev and test."""
    d = shared_path("data", "drcd")
    return convert(tmp_path_factory.mktemp("drcd"), "--eval", os.path.join(d, "DRCD_dev.json"), "--pool",
                   os.path.join(d, "DRCD_test.json"))


# --------------------------------------------------------------------------- answer matching

def test_auto_matching_gives_dprs_hits_on_english_data():
    """Every (answers, passage) pair of squad1_open's and nq_dev_tiny's records: auto == DPR's string match."""
    hits = 0
    for path in (shared_path("data", "squad1_open", "train.json"), shared_path("data", "nq_dev_tiny", "dev.json")):
        pairs = [(r.answers, p.text) for r in read_biencoder_records(path)
                 for p in r.positives + r.negatives + r.hard_negatives]
        assert len(pairs) > 100
        differ = [i for i, (a, t) in enumerate(pairs) if has_answer(a, t, "auto") != has_answer(a, t, "string")]
        assert differ == []
        hits += sum(has_answer(a, t, "auto") for a, t in pairs)
    assert hits > 1000  # the check saw hits, not only misses


def test_cjk_answers_match_by_character_and_mixed_text_by_script():
    text = "京滬高速鐵路全長1,318公里，其中364.6 公里位於江蘇。歐洲聯盟的 Ω-Force 隊"
    assert has_answer(["歐洲"], text) and has_answer(["歐洲"], text, "char")
    assert not has_answer(["歐洲"], text, "string")  # DPR keeps the clause 歐洲聯盟的 as one token
    assert has_answer(["364.6公里"], text)  # by characters, spaces ignored
    assert has_answer(["３６４.６公里"], text)  # full-width digits: NFKC
    assert has_answer(["ω-force"], text)  # no CJK: DPR's tokens (lower-cased)
    assert not has_answer(["ω-forc"], text)  # ... whole tokens only
    assert not has_answer(["美國"], text) and not has_answer([""], text) and not has_answer(["  "], text, "char")
    assert has_answer(["nope", "江蘇"], text)  # any answer


# --------------------------------------------------------------------------- analyzers

def test_analyzers_split_chinese_into_terms():
    assert cjk_terms("歐洲聯盟 EU-Members 2024") == ["歐洲", "洲聯", "聯盟", "eu", "members", "2024"]
    assert cjk_terms("梵", unigrams=True) == ["梵"]
    assert cjk_terms("梵語", unigrams=True) == ["梵語", "梵", "語"]
    assert {"中华", "人民", "共和", "共和国"} <= set(zh_terms("中华人民共和国成立"))
    assert resolve("auto", ["歐洲聯盟的總部", "in Brussels"]) == "cjk+uni"
    assert resolve("auto", ["The European Union", "在"]) == "en"


def test_bm25_auto_reads_drcd_and_meets_its_targets(drcd, tmp_path):
    """DRCD dev (3,524 questions, 2,000 paragraphs): BM25 `auto` top-1 >= 0.93, MRR@10 >= 0.94
    (docs/benchmarks.md section 8); the analyzer is recorded and another one is refused in one line."""
    out = tmp_path / "bm25.json"
    run_cli("dense_retriever.py", "--bm25", "--ctx_file", drcd / "passages.tsv", "--qa_file", drcd / "qa.csv",
            "--qrels", drcd / "qrels.txt", "--bm25_index", tmp_path / "idx", "--out_file", out,
            "--trec_file", tmp_path / "run.trec")
    m = json.load(open(str(out) + ".metrics.json"))
    assert m["bm25"]["analyzer"] == "cjk+uni" and m["match"] == "auto"
    assert m["top_k_accuracy"]["1"] >= 0.93 and m["mrr@10"] >= 0.94
    assert set(METRIC_KEYS) <= set(m) and all(0 <= m[k] <= 1 for k in METRIC_KEYS)
    # the TREC run is what trec_eval reads: pytrec_eval on the file gives the same numbers
    import pytrec_eval

    with open(tmp_path / "run.trec") as f:
        run = pytrec_eval.parse_run(f)
    with open(drcd / "qrels.txt") as f:
        qrels = pytrec_eval.parse_qrel(f)
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100", "map"}).evaluate(run)
    for key, name in (("ndcg@10", "ndcg_cut_10"), ("recall@100", "recall_100"), ("map", "map")):
        assert abs(sum(e[name] for e in ev.values()) / len(ev) - m[key]) < 1e-6
    proc = run_cli("dense_retriever.py", "--bm25", "--bm25_analyzer", "en", "--ctx_file", drcd / "passages.tsv",
                   "--qa_file", drcd / "qa.csv", "--bm25_index", tmp_path / "idx", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (f"error: {tmp_path / 'idx'}: this BM25 index was built with the "
                                                   "cjk+uni analyzer, not en; pass --bm25_analyzer cjk+uni, or another "
                                                   "--bm25_index, or delete it to rebuild")
    bad = run_cli("dense_retriever.py", "--bm25", "--bm25_analyzer", "klingon", "--ctx_file", drcd / "passages.tsv",
                  "--qa_file", drcd / "qa.csv", check=False)
    assert bad.returncode == 2 and "invalid choice: 'klingon'" in bad.stderr and "Traceback" not in bad.stderr


# --------------------------------------------------------------------------- qrels

def test_qrels_formats_read_alike_and_bad_labels_are_one_line(drcd, tmp_path):
    trec = read_qrels(str(drcd / "qrels.txt"))
    (tmp_path / "beir.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{p}\t{r}\n" for q, d in trec.items() for p, r in d.items()))
    (tmp_path / "two.tsv").write_text("".join(f"{q}\t{p}\n" for q, d in trec.items() for p in d))
    assert dict(read_qrels(str(tmp_path / "beir.tsv"))) == dict(trec) == dict(read_qrels(str(tmp_path / "two.tsv")))
    base = ["--bm25", "--ctx_file", drcd / "passages.tsv", "--qa_file", drcd / "qa.csv", "--bm25_index", tmp_path / "i"]
    lines = (drcd / "qrels.txt").read_text().splitlines()
    cases = {
        "unknown passage": (lines[:4] + ["5 0 no-such-passage 1"] + lines[5:],
                            "line 5: passage 'no-such-passage' is not in the corpus"),
        "unknown question": (lines + ["99999 0 1 1"], f"line {len(lines) + 1}: question '99999' is not in"),
        "question without qrels": (lines[1:], "question '1' has no judgement in"),
        "bad relevance": (lines[:2] + ["3 0 7 high"] + lines[3:], "line 3: relevance 'high' is not a number"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / "q.txt").write_text("\n".join(content) + "\n")
        proc = run_cli("dense_retriever.py", *base, "--qrels", tmp_path / "q.txt", check=False)
        assert proc.returncode == 2, name
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and message in last and "Traceback" not in proc.stderr, (name, last)


# --------------------------------------------------------------------------- BEIR, MS MARCO, mining from qrels

def test_beir_and_msmarco_inputs_give_the_same_run_as_dpr_formats(drcd, tmp_path):
    ids, texts, titles = [], [], []
    for chunk in iter_passage_chunks(str(drcd / "passages.tsv")):
        ids, texts, titles = ids + chunk[0], texts + chunk[1], titles + chunk[2]
    with open(tmp_path / "corpus.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"_id": i, "title": t, "text": x}, ensure_ascii=False) + "\n"
                     for i, x, t in zip(ids, texts, titles))
    qrels = read_qrels(str(drcd / "qrels.txt"))
    os.makedirs(tmp_path / "qrels")
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{p}\t{r}\n" for q, d in list(qrels.items())[:500] for p, r in d.items()))
    common = ["--bm25", "--n_docs", 20]
    run_cli("dense_retriever.py", *common, "--ctx_file", drcd / "passages.tsv", "--qa_file", drcd / "qa.csv",
            "--bm25_index", tmp_path / "a", "--trec_file", tmp_path / "dpr.trec", "--qrels", drcd / "qrels.txt")
    run_cli("dense_retriever.py", *common, "--ctx_file", tmp_path / "corpus.jsonl", "--qa_file",
            drcd / "queries.jsonl", "--qrels", tmp_path / "qrels" / "test.tsv", "--bm25_index", tmp_path / "b",
            "--trec_file", tmp_path / "beir.trec", "--out_file", tmp_path / "beir.json")
    dpr_lines = (tmp_path / "dpr.trec").read_text().splitlines()
    beir_lines = (tmp_path / "beir.trec").read_text().splitlines()
    assert beir_lines == dpr_lines[: len(beir_lines)] and len(beir_lines) == 500 * 20  # BEIR: judged queries only
    m = json.load(open(tmp_path / "beir.json.metrics.json"))
    assert m["questions"] == 500 and m["mrr@10"] > 0.9
    # MS MARCO layout: collection.tsv (no header, no titles) and queries.tsv
    (tmp_path / "collection.tsv").write_text("".join(f"{i}\t{x}\n" for i, x in zip(ids, texts)), encoding="utf-8")
    (tmp_path / "queries.tsv").write_text("".join(f"{q.qid}\t{q.question}\n" for q in read_qa(str(drcd / "qa.csv"))),
                                          encoding="utf-8")
    assert next(iter_passage_chunks(str(tmp_path / "collection.tsv")))[2][:2] == ["", ""]
    run_cli("dense_retriever.py", *common, "--ctx_file", tmp_path / "collection.tsv", "--qa_file",
            tmp_path / "queries.tsv", "--qrels", drcd / "qrels.txt", "--bm25_index", tmp_path / "c",
            "--out_file", tmp_path / "ms.json")
    ms = json.load(open(tmp_path / "ms.json.metrics.json"))
    assert "top_k_accuracy" not in ms and ms["mrr@10"] > 0.85  # no answers: gold metrics only
    # a BEIR corpus line without `_id` is one line naming file and line
    (tmp_path / "bad.jsonl").write_text('{"_id": "1", "text": "a"}\n{"title": "t", "text": "b"}\n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl: line 2: field '_id' is missing or empty"):
        list(iter_passage_chunks(str(tmp_path / "bad.jsonl")))
    (tmp_path / "dup.tsv").write_text("7\ta\n8\tb\n7\tc\n")
    with pytest.raises(DataFormatError, match=r"line 3: passage id '7' occurs twice, at lines 1 and 3"):
        list(iter_passage_chunks(str(tmp_path / "dup.tsv")))


def test_mining_from_qrels_makes_training_records(drcd, tmp_path):
    run_cli("mine_hard_negatives.py", "--qa_file", drcd / "queries.jsonl", "--qrels", drcd / "qrels.txt",
            "--ctx_file", drcd / "passages.tsv", "--output", tmp_path / "mined.json", "--num_negatives", 3,
            "--bm25_index", tmp_path / "idx")
    records = read_biencoder_records(str(tmp_path / "mined.json"))
    gold = read_qrels(str(drcd / "qrels.txt"))
    assert len(records) == 3524
    for i, r in enumerate(records[:200], start=1):
        assert [p.id for p in r.positives] == list(gold[str(i)])
        assert len(r.hard_negatives) == 3 and not {p.id for p in r.hard_negatives} & set(gold[str(i)])
        assert not any(has_answer(r.answers, p.text) for p in r.hard_negatives)


# --------------------------------------------------------------------------- the whole pipeline in Chinese

def drcd_texts():
    texts = []
    for name in ("DRCD_dev.json", "DRCD_test.json"):
        for article in json.load(open(shared_path("data", "drcd", name), encoding="utf-8"))["data"]:
            texts.append(article["title"])
            for p in article["paragraphs"]:
                texts += [p["context"]] + [q["question"] for q in p["qas"]]
    return texts


def test_fast_tokenizer_ids_equal_paddlenlp_for_a_chinese_ernie_vocabulary():
    from paddlenlp.transformers import AutoTokenizer

    from dpr_paddle.modeling.pretrained import tiny_ernie_zh_dir
    from dpr_paddle.modeling.tokenization import Tensorizer

    texts = drcd_texts()
    tok = AutoTokenizer.from_pretrained(tiny_ernie_zh_dir(texts))
    slow, fast = Tensorizer(tok, 32, 256, fast=False), Tensorizer(tok, 32, 256)
    assert fast.fast is not None and type(tok).__name__ == "ErnieTokenizer"
    pairs = [("", t) for t in texts]
    assert slow.encode_passages_ids(pairs) == fast.encode_passages_ids(pairs)
    ids = fast.encode_passages_ids([("梵文", "在歐洲，梵語的學術研究")])[0][0]
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "梵", "文", "[SEP]", "在", "歐", "洲", "，", "梵", "語", "的",
                                              "學", "術", "研", "究", "[SEP]"]


def drcd_training_set(out, hard_negatives):
    """(DRCD dev's eval set with 30 of DRCD test's questions as training records, a tiny ERNIE with a Chinese
    vocabulary made from DRCD's text)."""
    from dpr_paddle.modeling.pretrained import tiny_ernie_zh_dir

    d = shared_path("data", "drcd")
    data = convert(out, "--eval", os.path.join(d, "DRCD_dev.json"), "--train", os.path.join(d, "DRCD_test.json"),
                   "--limit", 30, "--hard_negatives", hard_negatives)
    return data, tiny_ernie_zh_dir(drcd_texts())


def test_tiny_chinese_ernie_through_train_encode_retrieve_and_qrels(tmp_path):
    data, model = drcd_training_set(tmp_path / "set", 1)
    run_cli("train_dense_encoder.py", "--model_name_or_path", model, "--train_data_path", data / "train.json",
            "--save_dir", tmp_path / "run", "--batch_size", 8, "--chunk_size", 4, "--max_steps", 3, "--epochs", 1,
            "--max_passage_length", 96)
    run_cli("generate_dense_embedding.py", "--model_file", tmp_path / "run" / "latest", "--ctx_file",
            data / "passages.tsv", "--out_file", tmp_path / "emb", "--batch_size", 16)
    base = ["--ctx_file", data / "passages.tsv", "--qa_file", data / "qa.csv", "--qrels", data / "qrels.txt",
            "--bm25_index", tmp_path / "bm25", "--n_docs", 20]
    dense = ["--model_file", tmp_path / "run" / "latest", "--encoded_ctx_file", tmp_path / "emb"]
    results = {}
    for name, flags in (("dense", dense), ("bm25", ["--bm25"]), ("hybrid", ["--hybrid", *dense])):
        run_cli("dense_retriever.py", *base, *flags, "--out_file", tmp_path / f"{name}.json")
        results[name] = json.load(open(tmp_path / f"{name}.json.metrics.json"))
    for name, m in results.items():
        assert m["questions"] > 50 and set(METRIC_KEYS) <= set(m), name
        assert all(0.0 <= m[k] <= 1.0 for k in METRIC_KEYS) and m["top_k_accuracy"]["20"] >= m["recall@20"] - 0.2
    assert results["bm25"]["bm25"]["analyzer"] == "cjk+uni" and results["bm25"]["mrr@10"] > 0.9
    assert results["hybrid"]["fusion"]["method"] == "weighted"


def test_tiny_chinese_ernie_reranker_trains_and_reranks_drcd(tmp_path):
    """A cross-encoder from a tiny Chinese-vocabulary ERNIE: trained on DRCD records, then reranking BM25's
    top 10 with the answers matched per character (auto) and the gold passages by qrels, in float32 and through
    ONNX Runtime's int8 graph."""
    data, model = drcd_training_set(tmp_path / "set", 2)
    run_cli("train_reranker.py", "--model_name_or_path", model, "--train_data_path", data / "train.json",
            "--save_dir", tmp_path / "rr", "--batch_size", 6, "--chunk_size", 2, "--group_size", 3, "--max_steps", 3,
            "--max_length", 128)
    assert json.load(open(tmp_path / "rr" / "latest" / "dpr_config.json"))["kind"] == "cross_encoder"
    out = run_cli("dense_retriever.py", "--bm25", "--ctx_file", data / "passages.tsv", "--qa_file", data / "qa.csv",
                  "--qrels", data / "qrels.txt", "--bm25_index", tmp_path / "bm25", "--n_docs", 20,
                  "--rerank_model", tmp_path / "rr" / "latest", "--rerank_depth", 10, "--out_file", tmp_path / "r.json")
    assert "| bm25, reranked |" in out.stdout
    m = json.load(open(tmp_path / "r.json.metrics.json"))
    assert m["match"] == "auto" and m["first_stage"]["system"] == "bm25" and m["questions"] > 50
    assert m["first_stage"]["top_k_accuracy"]["20"] == m["top_k_accuracy"]["20"]  # past the depth: the same list
    assert all(0.0 <= m[k] <= 1.0 for k in METRIC_KEYS) and m["first_stage"]["mrr@10"] > 0.9
    # the same lists through ONNX Runtime's int8 graph of the ERNIE reranker: opt-in, and recorded as quantized
    run_cli("dense_retriever.py", "--bm25", "--ctx_file", data / "passages.tsv", "--qa_file", data / "qa.csv",
            "--qrels", data / "qrels.txt", "--bm25_index", tmp_path / "bm25", "--n_docs", 20,
            "--rerank_model", tmp_path / "rr" / "latest", "--rerank_depth", 10, "--rerank_backend", "onnxruntime-int8",
            "--out_file", tmp_path / "r8.json")
    m8 = json.load(open(tmp_path / "r8.json.metrics.json"))
    assert m8["questions"] == m["questions"] and m8["top_k_accuracy"]["20"] == m["top_k_accuracy"]["20"]
    assert m8["rerank"]["backend"] == "onnxruntime-int8" and m8["rerank"]["quantization"] == "int8-dynamic"
    assert "quantization" not in m["rerank"] and all(0.0 <= m8[k] <= 1.0 for k in METRIC_KEYS)
