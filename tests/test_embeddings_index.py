"""Sharded embeddings, exact and hnsw search, and their error messages."""
import json
import os
import shutil

import numpy as np
import pytest

from conftest import run_cli
from dpr_paddle.data import iter_passages
from dpr_paddle.index.hnsw import HNSWIndex
from dpr_paddle.index.exact import ExactIndex, merge_topk, recall_at_k
from dpr_paddle.index.shards import EmbeddingError, Shard, load_shards, shard_range


@pytest.mark.parametrize("n", [0, 1, 7, 10, 11, 100, 2067])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 8, 16])
def test_shard_ranges_cover_corpus_once(n, k):
    ranges = []
    for i in range(k):
        try:
            ranges.append(shard_range(n, i, k))
        except EmbeddingError as e:  # an empty shard is refused, naming the --num_shards that would do
            assert "would hold no passage" in str(e) and not ranges[i:]
            assert len(ranges) == (-(-n // -(-n // k)) if n else 0)
    rows = [r for a, b in ranges for r in range(a, b)]
    assert rows == list(range(n))  # nothing dropped, nothing repeated, in order
    sizes = [b - a for a, b in ranges]
    assert max(sizes, default=0) - min(s for s in sizes if s) <= max(1, -(-n // k)) if n else True


def test_shard_range_rejects_bad_ids():
    with pytest.raises(EmbeddingError, match="--shard_id"):
        shard_range(10, 3, 3)
    with pytest.raises(EmbeddingError, match="--num_shards"):
        shard_range(10, 0, 0)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, sample_dir):
    d = tmp_path_factory.mktemp("corpus")
    with open(os.path.join(sample_dir, "passages.tsv"), encoding="utf-8") as f:
        lines = f.readlines()[:104]  # header + 103 passages: shards of 35, 35, 33
    (d / "p.tsv").write_text("".join(lines), encoding="utf-8")
    return str(d / "p.tsv")


def embed(ctx, out, *extra, check=True):
    return run_cli("generate_dense_embedding.py", "--model_name_or_path", "tiny", "--ctx_file", ctx, "--out_file", out,
                   "--max_passage_length", "48", "--batch_size", "16", "--read_chunk", "20", *extra, check=check)


def test_shards_union_equals_whole_corpus(small_corpus, tmp_path):
    embed(small_corpus, tmp_path / "whole")
    for i in range(3):
        embed(small_corpus, tmp_path / "part", "--shard_id", i, "--num_shards", 3)
    whole = load_shards(str(tmp_path / "whole_*"))
    parts = load_shards(str(tmp_path / "part_*"))
    assert [len(s.ids) for s in parts] == [35, 35, 33]
    corpus_ids = [p.id for p in iter_passages(small_corpus)]
    assert whole[0].ids == corpus_ids == [i for s in parts for i in s.ids]
    stacked = np.concatenate([s.vectors for s in parts])
    np.testing.assert_allclose(stacked, whole[0].vectors, atol=1e-5)
    meta = parts[2].meta
    assert (meta["shard_id"], meta["num_shards"], meta["start"], meta["end"], meta["count"], meta["dim"]) == (2, 3, 70, 103, 33, 32)
    # length-sorted batching changes only the batching, not the vectors or their order
    embed(small_corpus, tmp_path / "unsorted", "--no-sort_by_length")
    np.testing.assert_allclose(load_shards(str(tmp_path / "unsorted_*"))[0].vectors, whole[0].vectors, atol=1e-5)
    # auto (ONNX Runtime or Paddle Inference, the faster here), Paddle Inference and eager dygraph give the same vectors
    for backend in ("inference", "dygraph"):
        embed(small_corpus, tmp_path / backend, "--backend", backend)
        other = load_shards(str(tmp_path / backend))[0]
        assert other.meta["backend"] == backend and "quantization" not in other.meta
        np.testing.assert_allclose(other.vectors, whole[0].vectors, atol=1e-5)
    assert whole[0].meta["backend"] in ("onnxruntime", "inference")


def test_complete_shard_is_skipped_and_interrupted_one_resumes(small_corpus, tmp_path):
    out = tmp_path / "e"
    embed(small_corpus, out, "--shard_id", 0, "--num_shards", 1)
    final = tmp_path / "e_0"
    mtime = (final / "vectors.npy").stat().st_mtime_ns
    proc = embed(small_corpus, out, "--shard_id", 0, "--num_shards", 1)
    assert "is complete; skipped" in proc.stderr and (final / "vectors.npy").stat().st_mtime_ns == mtime
    reference = np.load(final / "vectors.npy")

    # Simulate a run killed after 2 of its 6 blocks: a .partial dir with those blocks and no final dir.
    partial = tmp_path / "e_0.partial"
    embed(small_corpus, tmp_path / "scratch", "--shard_id", 0, "--num_shards", 1)
    shutil.move(str(final), str(tmp_path / "old"))
    partial.mkdir()
    job = json.load(open(tmp_path / "old" / "meta.json"))
    job = {k: v for k, v in job.items() if k not in ("dim", "count")}
    job["block"] = 20
    (partial / "job.json").write_text(json.dumps(job))
    marker = np.full((20, 32), 7.0, dtype=np.float32)  # recognisable: must be kept, not recomputed
    ids = [p.id for p in iter_passages(small_corpus)]
    for b in range(2):
        np.save(partial / f"block_{b:06d}.npy", marker)
        (partial / f"block_{b:06d}.ids").write_text("".join(i + "\n" for i in ids[b * 20 : (b + 1) * 20]))
    embed(small_corpus, out, "--shard_id", 0, "--num_shards", 1)
    got = np.load(final / "vectors.npy")
    assert (got[:40] == 7.0).all()  # the finished blocks were kept
    np.testing.assert_allclose(got[40:], reference[40:], atol=1e-5)  # the rest was computed
    assert not partial.exists()
    assert (final / "ids.txt").read_text().splitlines() == ids
    # --overwrite redoes a complete shard
    embed(small_corpus, out, "--shard_id", 0, "--num_shards", 1, "--overwrite")
    np.testing.assert_allclose(np.load(final / "vectors.npy"), reference, atol=1e-5)


def fake_shards(tmp_path, vectors, num_shards, fingerprint="abc", dim=None):
    n = len(vectors)
    for i in range(num_shards):
        a, b = shard_range(n, i, num_shards)
        d = tmp_path / f"fake_{i}"
        d.mkdir(parents=True)
        np.save(d / "vectors.npy", vectors[a:b])
        (d / "ids.txt").write_text("".join(f"p{j}\n" for j in range(a, b)))
        meta = {"dim": dim or vectors.shape[1], "count": b - a, "shard_id": i, "num_shards": num_shards,
                "model_fingerprint": fingerprint}
        (d / "meta.json").write_text(json.dumps(meta))
    return str(tmp_path / "fake_*")


def test_sharded_exact_search_equals_single_index(tmp_path):
    rng = np.random.default_rng(0)
    vecs = (rng.standard_normal((3001, 24)) * rng.uniform(0.5, 2.0, (3001, 1))).astype(np.float32)
    queries = rng.standard_normal((50, 24)).astype(np.float32)
    single = ExactIndex([Shard("x", {"dim": 24}, vecs, [f"p{j}" for j in range(len(vecs))])])
    sharded = ExactIndex(load_shards(fake_shards(tmp_path, vecs, 4)))
    s1, r1 = single.search(queries, 100)
    s2, r2 = sharded.search(queries, 100)
    assert np.array_equal(r1, r2)  # the same passages in the same order
    np.testing.assert_allclose(s1, s2, rtol=1e-6)  # BLAS blocking differs with the shard shape: last-ULP differences
    brute = queries @ vecs.T
    assert np.array_equal(r1[:, 0], brute.argmax(1))
    np.testing.assert_allclose(s1, -np.sort(-brute, axis=1)[:, :100], rtol=1e-6)
    assert [sharded.row_id(int(r)) for r in r2[0][:3]] == [f"p{int(r)}" for r in r1[0][:3]]


def test_merge_topk_keeps_best():
    a = (np.array([[5.0, 1.0]]), np.array([[10, 11]]))
    b = (np.array([[3.0, 2.0]]), np.array([[20, 21]]))
    s, r = merge_topk([a, b], 3)
    assert s.tolist() == [[5.0, 3.0, 2.0]] and r.tolist() == [[10, 20, 21]]


@pytest.mark.parametrize("space", ["l2", "auto"])
def test_hnsw_mips_recall_and_reload(tmp_path, space):
    # "l2" is DPR's transform, "ip" hnswlib's inner-product space. Encoder outputs are clustered
    # (topics) with norms that vary, unlike isotropic noise, on which every graph index does badly.
    # M 32, ef_construction 200 (the defaults before M 48 / 400), ef_search = max(8 * n_docs, 256) = 800.
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((40, 32)) * 2
    vecs = (centers[rng.integers(0, 40, 4000)] + rng.standard_normal((4000, 32)) * 0.6) * rng.uniform(0.5, 2.0, (4000, 1))
    vecs = vecs.astype(np.float32)
    queries = (centers[rng.integers(0, 40, 200)] + rng.standard_normal((200, 32)) * 0.6).astype(np.float32)
    exact = ExactIndex(load_shards(fake_shards(tmp_path, vecs, 3)))
    hnsw = HNSWIndex(exact, m=32, ef_construction=200, space=space).build()
    s_h, r_h = hnsw.search(queries, 100, ef=800)
    s_e, r_e = exact.search(queries, 100)
    rec = recall_at_k(r_h, r_e, ks=(1, 20, 100))
    assert rec[1] >= 0.99 and rec[100] >= 0.99, rec
    # scores are exact inner products of the returned passages, best first
    np.testing.assert_allclose(s_h, np.einsum("nd,nkd->nk", queries, vecs[r_h]), rtol=1e-5)
    assert (np.diff(s_h, axis=1) <= 0).all()
    path = str(tmp_path / "index.hnsw")
    hnsw.save(path)
    again = HNSWIndex(exact, m=32, ef_construction=200, space=space)
    assert again.load(path)
    assert np.array_equal(again.search(queries, 100, ef=800)[1], r_h)
    assert not HNSWIndex(exact, m=16, ef_construction=200, space=space).load(path)  # other parameters: rebuild
    assert again.space == "l2"  # auto: these norms spread 7.4x, so DPR's transform
    assert not HNSWIndex(exact, m=32, ef_construction=200, space="ip").load(path)
    with pytest.raises(ValueError, match="space"):
        HNSWIndex(exact, space="cosine")


def test_with_norms_spread_7x_the_l2_transform_beats_the_ip_space(tmp_path):
    # docs/benchmarks.md §3 says: at 7.4x norm spread DPR's transform finds what "ip" misses (why
    # `auto` switches to l2 above 2x). The same vectors as the test above.
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((40, 32)) * 2
    vecs = (centers[rng.integers(0, 40, 4000)] + rng.standard_normal((4000, 32)) * 0.6) * rng.uniform(0.5, 2.0, (4000, 1))
    vecs = vecs.astype(np.float32)
    queries = (centers[rng.integers(0, 40, 200)] + rng.standard_normal((200, 32)) * 0.6).astype(np.float32)
    norms = np.linalg.norm(vecs, axis=1)
    assert 7.0 < norms.max() / norms.min() < 8.0
    exact = ExactIndex(load_shards(fake_shards(tmp_path, vecs, 3)))
    truth = exact.search(queries, 100)[1]
    rec = {space: recall_at_k(HNSWIndex(exact, m=32, ef_construction=200, space=space).build()
                              .search(queries, 100, ef=800)[1], truth, ks=(100,))[100] for space in ("ip", "l2")}
    assert rec["l2"] >= 0.999 and rec["ip"] <= 0.98 and rec["l2"] > rec["ip"], rec  # measured 1.000 / 0.965


def test_hnsw_auto_space_follows_norm_spread(tmp_path):
    # narrow norms (real encoders: 1.15-1.38x) -> hnswlib's inner-product space; wide -> DPR's transform.
    rng = np.random.default_rng(2)
    unit = rng.standard_normal((3000, 16)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    for (low, high), want in (((0.9, 1.3), "ip"), ((0.5, 2.0), "l2")):
        vecs = (unit * rng.uniform(low, high, (3000, 1))).astype(np.float32)
        exact = ExactIndex(load_shards(fake_shards(tmp_path / want, vecs, 2)))
        hnsw = HNSWIndex(exact).build()
        assert hnsw.space == want
        queries = rng.standard_normal((50, 16)).astype(np.float32)
        rec = recall_at_k(hnsw.search(queries, 10, ef=200)[1], exact.search(queries, 10)[1], ks=(10,))
        assert rec[10] >= 0.99, (want, rec)


def test_shard_errors(tmp_path):
    vecs = np.ones((10, 4), dtype=np.float32)
    with pytest.raises(EmbeddingError, match="no embedding shards match"):
        load_shards(str(tmp_path / "nothing_*"))
    pattern = fake_shards(tmp_path / "a", vecs, 3)
    shutil.rmtree(tmp_path / "a" / "fake_1")
    with pytest.raises(EmbeddingError, match=r"missing \[1\]"):
        load_shards(pattern)
    pattern = fake_shards(tmp_path / "b", vecs, 2)
    meta = json.load(open(tmp_path / "b" / "fake_1" / "meta.json"))
    meta["model_fingerprint"] = "other"
    (tmp_path / "b" / "fake_1" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(EmbeddingError, match="disagree on model_fingerprint"):
        load_shards(pattern)
    pattern = fake_shards(tmp_path / "c", vecs, 2)
    os.remove(tmp_path / "c" / "fake_0" / "meta.json")
    with pytest.raises(EmbeddingError, match="incomplete shard"):
        load_shards(pattern)


def test_a_complete_shard_of_another_job_is_refused_not_reused(small_corpus, tmp_path):
    out = tmp_path / "e"
    embed(small_corpus, out)
    before = np.load(tmp_path / "e_0" / "vectors.npy")
    for extra, says in ((["--pooling", "mean"], "pooling 'cls' there, 'mean' now"),
                        (["--max_passage_length", "40"], "max_length 48 there, 40 now"),
                        (["--fp16"], "dtype 'float32' there, 'float16' now")):
        proc = embed(small_corpus, out, *extra, check=False)
        assert proc.returncode == 2 and says in proc.stderr and "--overwrite" in proc.stderr, proc.stderr[-500:]
        assert "Traceback" not in proc.stderr
    # the same corpus edited in place (another size) is another job too
    edited = tmp_path / "edited.tsv"
    edited.write_text(open(small_corpus).read().replace("\t", "\t ", 1), encoding="utf-8")
    np.testing.assert_array_equal(np.load(tmp_path / "e_0" / "vectors.npy"), before)  # nothing was touched
    proc = embed(str(edited), out, check=False)
    assert proc.returncode == 2 and "ctx_file" in proc.stderr
    # --overwrite is the way to re-encode
    proc = embed(small_corpus, out, "--overwrite")
    assert proc.returncode == 0


def test_a_length_given_wins_over_the_checkpoints_and_one_left_out_is_the_checkpoints(tmp_path, tiny_dir, sample_dir,
                                                                                       caplog):
    """A checkpoint trained at 48 tokens encodes at 48 when no length is given (DPR's rule), and at the length
    given when one is (sentence-transformers' max_seq_length), saying so in one log line; the shards record the
    length used, so the two are different jobs."""
    import logging

    from conftest import sample_head
    from dpr_paddle import encode
    from dpr_paddle.encoding.towers import load_tower
    from dpr_paddle.modeling.builder import encoder_recipe, model_config
    from dpr_paddle.modeling.model import CONTEXT, QUESTION

    ckpt = tmp_path / "ckpt"
    for tower in ("question_encoder", "context_encoder"):
        shutil.copytree(tiny_dir, ckpt / tower)
    (ckpt / "dpr_config.json").write_text(json.dumps(model_config(16, 48, 0, False, encoder_recipe("tiny"))))
    _, tensorizer, info = load_tower(CONTEXT, model_file=str(ckpt))
    assert (tensorizer.max_passage_length, info["max_length"]) == (48, 48)
    with caplog.at_level(logging.INFO, logger="dpr_paddle.encoding.towers"):
        _, tensorizer, info = load_tower(CONTEXT, model_file=str(ckpt), max_passage_length=64)
    assert (tensorizer.max_passage_length, info["max_length"]) == (64, 64)
    assert [r.getMessage() for r in caplog.records if "as given" in r.getMessage()] == [
        "context tower: max_passage_length 64 as given; the checkpoint was trained at 48 (dpr_config.json)"]
    assert load_tower(QUESTION, model_file=str(ckpt))[1].max_query_length == 16
    sample_head(sample_dir, str(tmp_path), 8)
    for given, expected in ((None, 48), (64, 64)):
        out = tmp_path / f"emb{expected}"
        encode.main(["--model_file", str(ckpt), "--ctx_file", str(tmp_path / "p.tsv"), "--out_file", str(out),
                     "--backend", "dygraph"] + (["--max_passage_length", str(given)] if given else []))
        [shard] = load_shards(str(out) + "_*")
        assert shard.meta["max_length"] == expected
