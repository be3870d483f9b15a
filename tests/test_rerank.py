"""The second stage: a cross-encoder trained in the bi-encoder's loop (exact chunked accumulation), the
reranker's kind kept apart from the bi-encoder's at every entry point, reranking through the one
Searcher (commands, Retriever, HTTP), denoised mining, and distillation's exactness."""
import json
import os

import httpx
import numpy as np
import paddle
import pytest

from conftest import sample_slice
from test_grad_cache import compare, grads, make_batch
from test_hostile import start_server
from test_round_four import ran, refused
from dpr_paddle import mine, retrieve, search, train, train_reranker
from dpr_paddle.modeling.cross_encoder import CrossEncoder, build_cross_encoder, listwise_loss
from dpr_paddle.modeling.model import set_dropout
from dpr_paddle.modeling.pretrained import load_encoder
from dpr_paddle.training.distributed import World
from dpr_paddle.training.rerank import rerank_step


def pair_batch(rng, groups, group_size, length=24):
    """A collated batch of `groups` groups of random pairs (ragged, two segments)."""
    return {"pairs": make_batch(rng, groups * group_size, length), "group_size": group_size}


def cross(name_or_dir, fast=False, seed=0):
    paddle.seed(seed)
    model, _, _ = build_cross_encoder(name_or_dir, trained=False)
    if fast:
        model.speed_up_training()
    return model


@pytest.fixture(scope="module")
def minilm_cross():
    return cross("minilm")


@pytest.mark.parametrize("groups,chunk", [(6, 1), (6, 2), (7, 3), (5, 4)])
def test_chunked_groups_dropout_off_equal_the_full_batch(minilm_cross, groups, chunk):
    model = minilm_cross
    model.eval()
    batch = pair_batch(np.random.default_rng(groups), groups, 4)
    ref_loss, ref_right = rerank_step(model, batch, 0, World())  # one chunk: the plain full-batch step
    ref = grads(model)
    loss, right = rerank_step(model, batch, chunk, World())
    got = grads(model)
    assert ref_loss > 0.1 and abs(loss - ref_loss) <= 1e-5 * ref_loss and right == ref_right
    assert compare(ref, got) <= 1e-5


@pytest.mark.parametrize("fast", [False, True], ids=["paddle_dropout", "fast_cpu"])
@pytest.mark.parametrize("groups,chunk,sort", [(6, 2, True), (7, 3, False), (5, 1, True)])
def test_chunked_groups_dropout_on_equal_the_graph_reference_bitwise(tiny_dir, groups, chunk, sort, fast):
    model = cross(tiny_dir, fast)
    set_dropout(model, 0.2)
    model.train()
    batch = pair_batch(np.random.default_rng(1), groups, 3)
    paddle.seed(7)
    ref_loss, _ = rerank_step(model, batch, chunk, World(), sort_chunks=sort, reference=True)
    after_ref = paddle.rand([8]).numpy()
    ref = grads(model)
    paddle.seed(7)
    loss, _ = rerank_step(model, batch, chunk, World(), sort_chunks=sort)
    after = paddle.rand([8]).numpy()
    got = grads(model)
    assert ref.keys() == got.keys() and len(ref) > 10
    assert all(np.array_equal(ref[k], got[k]) for k in ref)  # bit for bit
    assert np.array_equal(after_ref, after)  # the random stream goes on where the reference left it
    assert abs(loss - ref_loss) <= 1e-6 * abs(ref_loss)


def test_listwise_loss_is_the_groups_softmax_cross_entropy():
    s = paddle.to_tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    loss, right = listwise_loss(s, 2)
    want = -np.mean([np.log(np.exp(2) / np.exp([2, 1, 0]).sum()), np.log(1 / np.exp([0, 3, 1]).sum())])
    assert abs(float(loss) - want) < 1e-6 and int(right) == 1


# --------------------------------------------------------------------------- a trained tiny reranker


@pytest.fixture(scope="module")
def rr(tmp_path_factory, sample_dir):
    """A tiny reranker trained 4 steps on the sample (a reranker directory), 60 sample passages, 5 questions."""
    d = tmp_path_factory.mktemp("rerank")
    sample_slice(sample_dir, d)
    train_reranker.main([str(a) for a in (
        "--train_data_path", os.path.join(sample_dir, "train.json"), "--save_dir", d / "rr", "--model_name_or_path",
        "tiny", "--group_size", "3", "--batch_size", "4", "--chunk_size", "2", "--max_steps", "4", "--max_length",
        "64", "--log_steps", "0")])
    return d


def test_a_reranker_checkpoint_is_a_reranker_directory_and_resumes(capsys, caplog, rr, sample_dir):
    latest = os.path.realpath(rr / "rr" / "latest")
    cfg = json.load(open(os.path.join(latest, "dpr_config.json")))
    assert cfg["kind"] == "cross_encoder" and cfg["max_length"] == 64
    model, _, _ = build_cross_encoder(latest)
    assert isinstance(model, CrossEncoder)
    caplog.set_level("INFO")
    ran(capsys, train_reranker.main, "--train_data_path", os.path.join(sample_dir, "train.json"), "--save_dir", rr / "rr",
              "--model_name_or_path", "tiny", "--group_size", "3", "--batch_size", "4", "--chunk_size", "2",
              "--max_steps", "5", "--max_length", "64", "--log_steps", "0", "--resume", "auto")
    assert "resuming from" in caplog.text and os.path.isdir(rr / "rr" / "checkpoint-5")


def test_kinds_are_kept_apart_at_every_entry_point(capsys, rr, sample_dir):
    latest = str(rr / "rr" / "latest")
    p = str(rr / "p.tsv")
    # a reranker where a bi-encoder goes: encoding, retrieval, training, mining
    for main, argv in ((retrieve.main, ["--qa_file", rr / "qa.csv", "--ctx_file", p, "--encoded_ctx_file", "x_*",
                                        "--model_name_or_path", latest]),
                       (train.main, ["--train_data_path", os.path.join(sample_dir, "train.json"), "--save_dir",
                                     rr / "bi", "--model_name_or_path", latest, "--max_steps", "1"]),
                       (mine.main, ["--train_data_path", os.path.join(sample_dir, "train.json"), "--ctx_file", p,
                                    "--output", rr / "m.json", "--retriever", "dense", "--model_name_or_path", latest,
                                    "--encoded_ctx_file", "x_*"])):
        line = refused(capsys, main, *argv)
        assert "cross-encoder (reranker) directory" in line or "no embedding shards" in line, line
    from dpr_paddle.encoding.towers import load_tower
    from dpr_paddle.modeling.pretrained import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="cross-encoder"):
        load_tower("context", model_name_or_path=latest)
    # a bi-encoder (or a plain encoder) where a reranker goes
    for bad in ("tiny", str(rr)):
        line = refused(capsys, retrieve.main, "--bm25", "--qa_file", rr / "qa.csv", "--ctx_file", p,
                       "--rerank_model", bad)
        assert "reranker" in line, line


def test_rerank_in_the_batch_run_keeps_both_rows_and_scores(capsys, rr):
    p, latest = str(rr / "p.tsv"), str(rr / "rr" / "latest")
    out = ran(capsys, retrieve.main, "--bm25", "--qa_file", rr / "qa.csv", "--ctx_file", p, "--n_docs", "10",
              "--rerank_model", latest, "--rerank_depth", "5", "--out_file", rr / "r.json",
              "--bm25_index", rr / "bm25")
    assert "| bm25 |" in out and "| bm25, reranked |" in out
    res = json.load(open(rr / "r.json"))
    metrics = json.load(open(str(rr / "r.json") + ".metrics.json"))
    assert metrics["first_stage"]["system"] == "bm25" and metrics["rerank"]["depth"] == 5
    for r in res:
        scores = [float(c["score"]) for c in r["ctxs"]]
        assert scores == sorted(scores, reverse=True) and len(scores) == 10
        assert all("first_stage_score" in c for c in r["ctxs"])
        firsts = [float(c["first_stage_score"]) for c in r["ctxs"][5:]]
        assert firsts == sorted(firsts, reverse=True)  # past the depth: the first stage's order
    for depth, why in (("0", "must be >= 1"), ("11", "deeper than the first stage")):
        line = refused(capsys, retrieve.main, "--bm25", "--qa_file", rr / "qa.csv", "--ctx_file", p, "--n_docs", "10",
                       "--rerank_model", latest, "--rerank_depth", depth, "--bm25_index", rr / "bm25")
        assert why in line, line


def test_rerank_through_retriever_search_and_http(rr):
    from dpr_paddle import Retriever

    latest = str(rr / "rr" / "latest")
    r = Retriever.load(passages=str(rr / "p.tsv"), mode="bm25", rerank_model=latest, rerank_depth=5,
                       bm25_index=str(rr / "bm25"))
    assert r.modes == ["bm25", "rerank"]
    q = ["Who founded the city?"]
    first = r.search(q, k=5)[0]
    again = r.search(q, k=5, mode="rerank")[0]
    assert {h["id"] for h in first} == {h["id"] for h in again}  # depth 5 of k 5: the same passages, reordered
    assert all("first_stage_score" in h for h in again)
    by_id = {h["id"]: h["score"] for h in first}
    assert all(abs(h["first_stage_score"] - by_id[h["id"]]) < 1e-5 for h in again)
    # the same through the server
    proc, base = start_server("--bm25", "--ctx_file", rr / "p.tsv", "--rerank_model", latest, "--rerank_depth", "5",
                              "--bm25_index", rr / "bm25")
    assert base, proc.stdout.read()[-3000:]
    try:
        health = httpx.get(base + "/health").json()
        assert "rerank" in health["modes"] and health["rerank"]["depth"] == 5
        got = httpx.post(base + "/search", json={"queries": q, "k": 5, "mode": "rerank"}).json()["results"][0]
        assert [h["id"] for h in got] == [h["id"] for h in again]
        assert np.allclose([h["score"] for h in got], [h["score"] for h in again], atol=1e-4)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_onnx_reranker_agrees_with_paddle_and_nan_is_refused(rr, tmp_path):
    from dpr_paddle.retrieval.rerank import Reranker, RerankError

    latest = os.path.realpath(rr / "rr" / "latest")
    pairs = (["who founded it?", "when was it built?"], [("Rome", "It was founded by Romulus."), ("", "In 1990.")])
    onnx = Reranker.load(latest, "onnxruntime").score(*pairs)
    dygraph = Reranker.load(latest, "dygraph").score(*pairs)
    assert np.allclose(onnx, dygraph, atol=1e-4)
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(latest, broken)
    head = dict(np.load(broken / "rerank_head.npz"))
    head["bias"] = np.full_like(head["bias"], np.nan)
    np.savez(broken / "rerank_head.npz", **head)
    with pytest.raises(RerankError, match="non-finite"):
        Reranker.load(str(broken), "dygraph").score(*pairs)


def test_reranker_backends_bf16_and_int8_opt_in_at_every_entry_point(capsys, rr, sample_dir):
    """--rerank_backend inference-bf16 reranks in bfloat16 where the CPU has it (scores close to float32's,
    recorded as quantized) and is refused in one line elsewhere; onnxruntime-int8 reranks with int8 weights,
    recorded as quantized (another teacher), through the command, Retriever.load and mining alike; names that
    are no backend are refused in one line; a tower in int8 leaves the reranker in float32."""
    from dpr_paddle.common.options import InvalidValue
    from dpr_paddle.modeling import bf16_cpu
    from dpr_paddle.retrieval.rerank import Reranker
    from dpr_paddle.retrieval.teacher import Denoiser
    from dpr_paddle.serving.api import Retriever

    latest = os.path.realpath(rr / "rr" / "latest")
    p, sample_train = str(rr / "p.tsv"), os.path.join(sample_dir, "train.json")
    pairs = (["who founded it?", "when was it built?", "where is it?"],
             [("Rome", "It was founded by Romulus."), ("", "In 1990."), ("Paris", "The city is in France " * 9)])
    fp32 = Reranker.load(latest, "inference")
    assert "quantization" not in fp32.info
    if bf16_cpu.hardware():
        bf16 = Reranker.load(latest, "inference-bf16")
        assert bf16.info["quantization"] == "bf16" and bf16.info["backend"] == "inference-bf16"
        assert np.allclose(bf16.score(*pairs), fp32.score(*pairs), atol=0.05, rtol=0.05)
        assert Denoiser(bf16).fingerprint == Denoiser(fp32).fingerprint + "-bf16"  # another teacher
        out = ran(capsys, retrieve.main, "--bm25", "--qa_file", rr / "qa.csv", "--ctx_file", p, "--n_docs", "10",
                  "--rerank_model", latest, "--rerank_depth", "5", "--rerank_backend", "inference-bf16",
                  "--out_file", rr / "bf16.json", "--bm25_index", rr / "bm25")
        assert "| bm25, reranked |" in out
        assert json.load(open(str(rr / "bf16.json") + ".metrics.json"))["rerank"]["quantization"] == "bf16"
    else:
        line = refused(capsys, retrieve.main, "--bm25", "--qa_file", rr / "qa.csv", "--ctx_file", p,
                       "--rerank_model", latest, "--rerank_backend", "inference-bf16")
        assert "needs a CPU with AVX512-BF16 or AMX" in line
    # int8 (opt-in, measured in docs/benchmarks.md section 12): scores near float32's, recorded, another teacher
    int8 = Reranker.load(latest, "onnxruntime-int8")
    assert int8.info["quantization"] == "int8-dynamic" and int8.info["backend"] == "onnxruntime-int8"
    got, want = int8.score(*pairs), fp32.score(*pairs)
    assert np.abs(got - want).max() <= 0.1 * np.abs(want).max() and not np.array_equal(got, want)
    assert Denoiser(int8).fingerprint == Denoiser(fp32).fingerprint + "-int8-dynamic"
    out = ran(capsys, retrieve.main, "--bm25", "--qa_file", rr / "qa.csv", "--ctx_file", p, "--n_docs", "10",
              "--rerank_model", latest, "--rerank_depth", "5", "--rerank_backend", "onnxruntime-int8",
              "--out_file", rr / "rr8.json", "--bm25_index", rr / "bm25")
    assert "| bm25, reranked |" in out
    assert json.load(open(str(rr / "rr8.json") + ".metrics.json"))["rerank"]["quantization"] == "int8-dynamic"
    api = Retriever.load(mode="bm25", passages=p, rerank_model=latest, rerank_backend="onnxruntime-int8",
                         bm25_index=str(rr / "bm25"))
    assert api.search(["who founded it?"], k=3, mode="rerank")[0][0]["first_stage_score"] is not None
    train6 = rr / "train6_int8.json"
    train6.write_text(json.dumps(json.load(open(sample_train, encoding="utf-8"))[:6]), encoding="utf-8")
    ran(capsys, mine.main, "--train_data_path", train6, "--ctx_file",
        os.path.join(sample_dir, "passages.tsv"), "--output", rr / "m8.json", "--retriever", "bm25", "--rank_range",
        "0", "10", "--num_negatives", "2", "--denoise_model", latest, "--rerank_backend", "onnxruntime-int8")
    assert all(r["teacher"].endswith("-int8-dynamic") for r in json.load(open(rr / "m8.json", encoding="utf-8")))
    # names that are no backend: refused by the command's flag, by Retriever.load and by Reranker.load
    def bad_choice(main, *argv):
        with pytest.raises(SystemExit) as stop:
            main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and "Traceback" not in err
        return err.strip().splitlines()[-1]

    assert "invalid choice: 'onnx'" in bad_choice(
        retrieve.main, "--bm25", "--qa_file", rr / "qa.csv", "--ctx_file", p, "--rerank_model", latest,
        "--rerank_backend", "onnx")
    with pytest.raises(InvalidValue, match="rerank_backend 'onnx': one of auto, onnxruntime, onnxruntime-int8"):
        Retriever.load(mode="bm25", passages=p, rerank_model=latest, rerank_backend="onnx")
    with pytest.raises(InvalidValue, match="backend 'onnx': one of auto"):
        Retriever.load(model="tiny", passages=p, backend="onnx")
    with pytest.raises(InvalidValue, match="backend 'onnx': one of auto"):  # the loader every way in goes through
        Reranker.load(latest, "onnx")
    assert "invalid choice: 'onnx'" in bad_choice(
        mine.main, "--train_data_path", sample_train, "--ctx_file", p, "--output", rr / "m9.json", "--denoise_model",
        latest, "--rerank_backend", "onnx")
    # a tower in int8 does not drag the reranker along: it reranks in float32 (auto)
    out = ran(capsys, retrieve.main, "--bm25", "--qa_file", rr / "qa.csv", "--ctx_file", p, "--n_docs", "10",
              "--rerank_model", latest, "--rerank_depth", "5", "--backend", "onnxruntime-int8",
              "--out_file", rr / "i8.json", "--bm25_index", rr / "bm25")
    assert "quantization" not in json.load(open(str(rr / "i8.json") + ".metrics.json"))["rerank"]


def test_rerank_max_length_overrides_the_trained_one_everywhere_and_is_bounded(capsys, rr, sample_dir):
    """--rerank_max_length reads longer (or shorter) pairs than the reranker was trained at, as CrossEncoder's
    max_length does: through the command (recorded in the metrics), Retriever.load, Reranker.load and scoring
    (another teacher); past the position embeddings, or below 4, it is refused in one line."""
    from dpr_paddle.common.errors import DprError
    from dpr_paddle.common.options import InvalidValue
    from dpr_paddle.retrieval.rerank import Reranker
    from dpr_paddle.retrieval.teacher import Denoiser
    from dpr_paddle.serving.api import Retriever

    latest = os.path.realpath(rr / "rr" / "latest")
    p = str(rr / "p.tsv")
    own, longer = Reranker.load(latest, "inference"), Reranker.load(latest, "inference", max_length=128)
    assert own.info["max_length"] == 64 and longer.info["max_length"] == 128
    assert longer.info["trained_max_length"] == 64 and Denoiser(longer).fingerprint.endswith("-L128")
    long_pair = (["what is it?"], [("T", "word " * 200)])
    assert len(longer.tensorizer.encode_pairs_ids(*long_pair, 128)[0][0]) == 128
    assert own.score(*long_pair) != longer.score(*long_pair)  # the tail past 64 tokens is read
    with pytest.raises(DprError, match="--rerank_max_length 600 is longer than the reranker .* stop at 512"):
        Reranker.load(latest, "inference", max_length=600)
    with pytest.raises(InvalidValue, match="rerank_max_length must be >= 4"):
        Retriever.load(mode="bm25", passages=p, rerank_model=latest, rerank_max_length=2)
    ran(capsys, retrieve.main, "--bm25", "--qa_file", rr / "qa.csv", "--ctx_file", p, "--n_docs", "10",
        "--rerank_model", latest, "--rerank_depth", "5", "--rerank_max_length", "96", "--out_file", rr / "l96.json",
        "--bm25_index", rr / "bm25")
    assert json.load(open(str(rr / "l96.json") + ".metrics.json"))["rerank"]["max_length"] == 96
    line = refused(capsys, retrieve.main, "--bm25", "--qa_file", rr / "qa.csv", "--ctx_file", p,
                   "--rerank_model", latest, "--rerank_max_length", "600")
    assert "stop at 512" in line


def test_group_size_below_two_is_refused(capsys, rr, sample_dir):
    line = refused(capsys, train_reranker.main, "--train_data_path", os.path.join(sample_dir, "train.json"),
                   "--save_dir", rr / "g1", "--model_name_or_path", "tiny", "--group_size", "1")
    assert "--group_size" in line and ">= 2" in line


# --------------------------------------------------------------------------- teacher scores, denoising, distillation


def scored_file(rr, sample_dir, capsys, margin=None, n=12):
    records = json.load(open(os.path.join(sample_dir, "train.json"), encoding="utf-8"))[:n]
    src = rr / f"train{n}.json"
    src.write_text(json.dumps(records), encoding="utf-8")
    out = rr / f"scored{n}_{margin}.json"
    from dpr_paddle import score_records

    ran(capsys, score_records.main, "--train_data_path", src, "--rerank_model", rr / "rr" / "latest", "--output", out,
        "--batch_size", "5", *(["--denoise_margin", margin] if margin is not None else []))
    return records, json.load(open(out, encoding="utf-8")), out


def test_score_records_writes_every_teacher_score_and_denoises(capsys, rr, sample_dir):
    records, scored, _ = scored_file(rr, sample_dir, capsys)
    assert len(scored) == len(records) and len({r["teacher"] for r in scored}) == 1
    for before, after in zip(records, scored):
        assert len(after["hard_negative_ctxs"]) == len(before["hard_negative_ctxs"])  # no margin: nothing dropped
        assert all(np.isfinite(c["teacher_score"]) for c in after["positive_ctxs"] + after["hard_negative_ctxs"])
    _, everything_dropped, _ = scored_file(rr, sample_dir, capsys, margin="1e6")
    assert all(not r["hard_negative_ctxs"] for r in everything_dropped)
    # mining with the same teacher: candidates scored, a false-negative margin applied before the cut
    out = rr / "mined.json"
    ran(capsys, mine.main, "--train_data_path", rr / "train12.json", "--ctx_file", os.path.join(sample_dir, "passages.tsv"),
        "--output", out, "--retriever", "bm25", "--rank_range", "0", "10", "--num_negatives", "3",
        "--denoise_model", rr / "rr" / "latest", "--denoise_margin", "0", "--batch_size", "5")
    mined = json.load(open(out, encoding="utf-8"))
    for r in mined:
        best = max(c["teacher_score"] for c in r["positive_ctxs"])
        assert r["teacher"] and all(c["teacher_score"] < best for c in r["hard_negative_ctxs"])


def test_distillation_refuses_records_it_cannot_trust(capsys, rr, sample_dir):
    _, scored, _ = scored_file(rr, sample_dir, capsys)
    cases = {}
    partial = json.loads(json.dumps(scored))
    del partial[3]["hard_negative_ctxs"][0]["teacher_score"]
    cases["has no teacher_score"] = partial
    mixed = json.loads(json.dumps(scored))
    mixed[5]["teacher"] = "0123456789abcdef"
    cases["different teachers"] = mixed
    unscored = json.load(open(os.path.join(sample_dir, "train.json"), encoding="utf-8"))[:12]
    cases["carries no teacher"] = unscored
    nan = json.loads(json.dumps(scored))
    nan[2]["positive_ctxs"][0]["teacher_score"] = float("nan")
    cases["expected a finite number"] = nan
    for why, records in cases.items():
        path = rr / "bad_teacher.json"
        path.write_text(json.dumps(records), encoding="utf-8")
        line = refused(capsys, train.main, "--train_data_path", path, "--save_dir", rr / "distil_bad",
                       "--model_name_or_path", "tiny", "--distill_weight", "1", "--max_steps", "1",
                       "--batch_size", "4", "--overwrite_save_dir")
        assert why in line and "bad_teacher.json" in line, (why, line)


def test_distillation_trains_end_to_end(capsys, caplog, rr, sample_dir):
    _, _, path = scored_file(rr, sample_dir, capsys)
    caplog.set_level("INFO")
    ran(capsys, train.main, "--train_data_path", path, "--save_dir", rr / "distil", "--model_name_or_path", "tiny",
        "--distill_weight", "0.5", "--distill_temperature", "2", "--max_steps", "2", "--batch_size", "4",
        "--chunk_size", "2", "--max_passage_length", "48", "--log_steps", "1")
    assert "distillation weight 0.5" in caplog.text and os.path.isdir(rr / "distil" / "checkpoint-2")


RECIPES = [("cls", "dot"), ("mean", "cosine"), ("pooler", "dot"), ("mean", "dot"), ("cls", "cosine")]


def distill_batch(seed, n_q, hard):
    """Random token rows with copies of question 0's positive elsewhere in the batch: question 1's first hard
    negative and question 2's positive (the in-batch copies the loss leaves out of a softmax)."""
    from test_grad_cache import make_batch as mk

    rng = np.random.default_rng(seed)
    n = 1 + hard
    context, keys = mk(rng, n_q * n, 20), np.arange(n_q * n)
    for row in (n + 1, 2 * n):
        for k in context:
            context[k][row] = context[k][0]
        keys[row] = keys[0]
    return {"question": mk(rng, n_q, 10), "context": context, "passages_per_question": n, "passage_keys": keys,
            "teacher": rng.normal(0, 2, (n_q, n)).astype("float32")}


@pytest.mark.parametrize("pooling,similarity", RECIPES)
def test_distillation_and_masked_copies_keep_the_gradient_cache_exact(tiny_dir, pooling, similarity):
    from dpr_paddle.modeling.model import BiEncoder
    from dpr_paddle.modeling.pooling import DEFAULT_TAU
    from dpr_paddle.training.step import train_step

    tau = DEFAULT_TAU[similarity]
    paddle.seed(0)
    model = BiEncoder(load_encoder("minilm")[0], load_encoder("minilm")[0], pooling=pooling,
                      normalize=similarity == "cosine")
    batch = distill_batch(1, 6, 2)
    model.eval()  # dropout off: the cached step equals the plain full-batch step, for each loss
    for distill in (None, (0.7, 2.0)):
        ref_loss, _ = train_step(model, batch, 0, 0, World(), temperature=tau, distill=distill)
        ref = grads(model)
        loss, _ = train_step(model, batch, 2, 5, World(), temperature=tau, distill=distill)
        got = grads(model)
        assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss) and compare(ref, got) <= 1e-5
    plain, _ = train_step(model, batch, 0, 0, World(), temperature=tau)
    grads(model)
    assert ref_loss > plain  # the KL term is in the loss
    unmasked, _ = train_step(model, batch, 0, 0, World(), temperature=tau, mask_copies=False)
    grads(model)
    assert unmasked > plain  # the copies were in the softmax, and are not now
    # dropout on: bit for bit against the same chunks encoded with a graph
    tiny = BiEncoder(load_encoder(tiny_dir)[0], load_encoder(tiny_dir)[0], pooling=pooling,
                     normalize=similarity == "cosine")
    tiny.train()
    for distill in (None, (0.7, 2.0)):
        paddle.seed(3)
        ref_loss, _ = train_step(tiny, batch, 2, 5, World(), temperature=tau, distill=distill, reference=True)
        ref = grads(tiny)
        paddle.seed(3)
        loss, _ = train_step(tiny, batch, 2, 5, World(), temperature=tau, distill=distill)
        got = grads(tiny)
        assert loss == ref_loss and all(np.array_equal(ref[k], got[k]) for k in ref)


def test_search_command_answers_reranked(capsys, rr):
    out = ran(capsys, search.main, "--bm25", "--ctx_file", rr / "p.tsv", "--bm25_index", rr / "bm25", "--rerank_model",
              rr / "rr" / "latest", "--rerank_depth", "5", "-k", "3", "Who founded the city?")
    assert "1st stage" in out and len([x for x in out.splitlines() if x.strip()[:1].isdigit()]) == 3


def test_search_page_shows_a_reranked_column(rr):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from test_serving import chrome

    proc, base = start_server("--bm25", "--ctx_file", rr / "p.tsv", "--rerank_model", rr / "rr" / "latest",
                              "--rerank_depth", "5", "--bm25_index", rr / "bm25")
    assert base, proc.stdout.read()[-3000:]
    driver = chrome()
    try:
        driver.get(base + "/")
        wait = WebDriverWait(driver, 60)
        driver.find_element(By.ID, "q").send_keys("Who founded the city?")
        k = driver.find_element(By.ID, "k")
        k.clear()
        k.send_keys("5")
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-searched") == "1")
        cols = {c.get_attribute("data-mode"): c for c in driver.find_elements(By.CSS_SELECTOR, ".col")}
        assert list(cols) == ["bm25", "rerank"]
        assert cols["rerank"].find_element(By.CSS_SELECTOR, "h2 span").text == "BM25, reranked"
        want = httpx.post(base + "/search", json={"queries": ["Who founded the city?"], "k": 5, "mode": "rerank"})
        assert [li.get_attribute("data-id") for li in cols["rerank"].find_elements(By.CSS_SELECTOR, "li[data-id]")] == \
            [h["id"] for h in want.json()["results"][0]]
        assert len(cols["rerank"].find_elements(By.CSS_SELECTOR, "li .first")) == 5  # the first stage's score beside
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(timeout=30)


def test_reranker_resume_mid_epoch_equals_an_uninterrupted_run(capsys, rr, sample_dir):
    common = ["--train_data_path", os.path.join(sample_dir, "train.json"), "--model_name_or_path", "tiny",
              "--group_size", "3", "--batch_size", "4", "--chunk_size", "2", "--max_length", "64", "--log_steps", "0",
              "--max_steps", "4", "--epochs", "1"]
    ran(capsys, train_reranker.main, *common, "--save_dir", rr / "whole")
    ran(capsys, train_reranker.main, *common, "--save_dir", rr / "halves", "--save_steps", "2")
    import shutil

    shutil.rmtree(rr / "halves" / "checkpoint-4")
    os.remove(rr / "halves" / "latest")
    ran(capsys, train_reranker.main, *common, "--save_dir", rr / "halves", "--resume", "auto")

    def params(run):
        state = paddle.load(str(rr / run / "checkpoint-4" / "model_state.pdparams"))
        head = np.load(rr / run / "checkpoint-4" / "rerank_head.npz")
        return {**{k: v.numpy() for k, v in state.items()}, "head": head["weight"]}

    a, b = params("whole"), params("halves")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_rerank_alpha_interpolates_with_the_first_stage(rr):
    from dpr_paddle.retrieval.rerank import Reranker

    r = Reranker(lambda arrays: np.arange(arrays["input_ids"].shape[0], dtype=np.float32)[::-1].copy(), None,
                 {"model": "m", "max_length": 32}, batch_size=8)
    r.score = lambda qs, ps, progress=False: np.array([0.0, 1.0, 2.0], dtype=np.float32)  # the cross-encoder's
    texts = {i: ("t", "") for i in "abcd"}
    first = np.array([[9.0, 5.0, 4.9, 1.0]])
    s, ids, f = r.rerank(["q"], [list("abcd")], first, texts, depth=3)
    assert ids == [list("cbad")] and list(f[0]) == [4.9, 5.0, 9.0, 1.0]
    s, ids, f = r.rerank(["q"], [list("abcd")], first, texts, depth=3, alpha=3.0)
    assert ids == [list("acbd")]  # 0 + 3*1 = 3 beats 1 + 0 and 0.5 + 3*0.02
    assert s[0, 0] > s[0, 1] > s[0, 2] > s[0, 3]


def test_a_reranker_whose_tokenizer_cannot_be_loaded_is_one_line(capsys, rr, tmp_path):
    import shutil

    broken = tmp_path / "no_vocab"
    shutil.copytree(os.path.realpath(rr / "rr" / "latest"), broken)
    os.remove(broken / "vocab.txt")
    line = refused(capsys, retrieve.main, "--bm25", "--qa_file", rr / "qa.csv", "--ctx_file", rr / "p.tsv",
                   "--rerank_model", broken, "--bm25_index", rr / "bm25")
    assert str(broken) in line, line
    head_gone = tmp_path / "no_head"
    shutil.copytree(os.path.realpath(rr / "rr" / "latest"), head_gone)
    os.remove(head_gone / "rerank_head.npz")
    line = refused(capsys, retrieve.main, "--bm25", "--qa_file", rr / "qa.csv", "--ctx_file", rr / "p.tsv",
                   "--rerank_model", head_gone, "--bm25_index", rr / "bm25")
    assert "rerank_head.npz" in line, line


def test_an_ensemble_of_rerankers_goes_wherever_a_reranker_does(capsys, rr, sample_dir, tmp_path):
    """An ensemble directory scores the mean of its members' scores through the command, Retriever.load and
    teacher scoring (a teacher of its own); it is refused as a bi-encoder or a start for training, and a member
    retrained, removed or itself an ensemble is one line."""
    import shutil

    from dpr_paddle import Retriever, ensemble_rerankers, score_records
    from dpr_paddle.retrieval.rerank import Reranker

    train_reranker.main([str(a) for a in (
        "--train_data_path", os.path.join(sample_dir, "train.json"), "--save_dir", tmp_path / "rr2", "--model_name_or_path",
        "tiny", "--group_size", "3", "--batch_size", "4", "--chunk_size", "2", "--max_steps", "2", "--max_length",
        "48", "--log_steps", "0", "--seed", "5")])
    a = tmp_path / "a"
    shutil.copytree(os.path.realpath(rr / "rr" / "latest"), a)
    b, ens, p = os.path.realpath(tmp_path / "rr2" / "latest"), tmp_path / "ens", str(rr / "p.tsv")
    assert "the mean of 2 rerankers" in ran(capsys, ensemble_rerankers.main, "--members", a, b, "--output_dir", ens)
    pairs = (["who wrote it?", "where is it?"], [("T", "it was written by someone"), ("U", "a place far away")])
    for backend in ("dygraph", "onnxruntime"):
        want = (Reranker.load(str(a), backend).score(*pairs) + Reranker.load(b, backend).score(*pairs)) / 2
        got = Reranker.load(str(ens), backend)
        assert np.allclose(got.score(*pairs), want, rtol=1e-6, atol=1e-6)
        assert got.info["members"] == [str(a), b] and got.info["model_fingerprint"].startswith("ensemble-")
    # the command (its metrics name the members), the API, teacher scores
    ran(capsys, retrieve.main, "--bm25", "--qa_file", rr / "qa.csv", "--ctx_file", p, "--n_docs", "10",
        "--rerank_model", ens, "--rerank_depth", "5", "--out_file", tmp_path / "r.json", "--bm25_index", rr / "bm25")
    metrics = json.load(open(str(tmp_path / "r.json") + ".metrics.json"))
    assert metrics["rerank"]["members"] == [str(a), b]
    r = Retriever.load(mode="bm25", passages=p, bm25_index=str(rr / "bm25"), rerank_model=str(ens),
                       store=str(tmp_path / "s.sqlite"))
    hits = r.search(["who wrote it?"], k=5, mode="rerank")[0]
    assert len(hits) == 5 and all("first_stage_score" in h for h in hits)
    records = json.load(open(os.path.join(sample_dir, "train.json"), encoding="utf-8"))[:4]
    (tmp_path / "t.json").write_text(json.dumps(records), encoding="utf-8")
    ran(capsys, score_records.main, "--train_data_path", tmp_path / "t.json", "--rerank_model", ens, "--output",
        tmp_path / "scored.json")
    assert json.load(open(tmp_path / "scored.json"))[0]["teacher"].startswith("ensemble-")
    # refused in one line
    line = refused(capsys, train.main, "--train_data_path", os.path.join(sample_dir, "train.json"), "--save_dir",
                   tmp_path / "bi", "--model_name_or_path", ens, "--max_steps", "1")
    assert "cross-encoder (reranker) directory" in line, line
    line = refused(capsys, train_reranker.main, "--train_data_path", os.path.join(sample_dir, "train.json"),
                   "--save_dir", tmp_path / "rr3", "--model_name_or_path", ens, "--max_steps", "1")
    assert "start from one of its members" in line, line
    for members, why in (([a], "two or more"), ([a, a], "two or more"), ([a, ens], "an ensemble itself"),
                         ([a, "tiny"], "no such directory")):
        line = refused(capsys, ensemble_rerankers.main, "--members", *members, "--output_dir", tmp_path / "e2")
        assert why in line, line
    assert "is not an ensemble" in refused(capsys, ensemble_rerankers.main, "--members", a, b, "--output_dir", b)
    with np.load(a / "rerank_head.npz") as z:  # a member retrained in place
        np.savez(a / "rerank_head.npz", weight=z["weight"], bias=z["bias"] + 1)
    line = refused(capsys, retrieve.main, "--bm25", "--qa_file", rr / "qa.csv", "--ctx_file", p, "--rerank_model", ens,
                   "--bm25_index", rr / "bm25")
    assert "is not the model the ensemble was made of" in line, line
    shutil.rmtree(a)
    line = refused(capsys, retrieve.main, "--bm25", "--qa_file", rr / "qa.csv", "--ctx_file", p, "--rerank_model", ens,
                   "--bm25_index", rr / "bm25")
    assert f"its member {a}: no such directory" in line, line
