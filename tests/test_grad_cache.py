"""The gradient cache is exact: dropout off it equals the plain full-batch step; dropout on it
equals, bit for bit, the same chunks encoded with a graph; the random stream ends where the
reference leaves it."""
import numpy as np
import paddle
import pytest

from dpr_paddle.training.grad_cache import RandContext, cached_step, graph_reference_step
from dpr_paddle.training.step import numpy_chunks as split_chunks  # the chunker training uses
from dpr_paddle.modeling.model import CONTEXT, QUESTION, BiEncoder, nll_loss, positive_indices
from dpr_paddle.modeling.pooling import DEFAULT_TAU, POOLINGS, SIMILARITIES
from dpr_paddle.modeling.pretrained import load_encoder


def make_batch(rng, n, length, ragged=True):
    ids = rng.integers(1000, 8000, (n, length))
    ids[:, 0] = 101
    mask = np.ones((n, length), dtype="int64")
    if ragged:  # some rows padded, so attention masks matter
        for i in range(0, n, 3):
            mask[i, length // 2 + i % 3 :] = 0
    ids[mask == 0] = 0
    types = np.zeros_like(ids)
    types[:, length // 3 :] = 1
    types[mask == 0] = 0
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}  # as the collator makes them


@pytest.fixture(scope="module")
def minilm():
    return BiEncoder(load_encoder("minilm")[0], load_encoder("minilm")[0])


RECIPES = [(p, s) for p in POOLINGS for s in SIMILARITIES]


def setup(name_or_model, batch, hard=1, q_len=10, p_len=20, seed=0, pooling="cls", similarity="dot", fast=False):
    paddle.seed(seed)
    if isinstance(name_or_model, str):
        model = BiEncoder(load_encoder(name_or_model)[0], load_encoder(name_or_model)[0])
        if fast:  # fast_cpu's kernels, as training installs them
            model.speed_up_training()
    else:
        model = name_or_model
        model.clear_gradients()
    model.pooling, model.normalize = pooling, similarity == "cosine"
    tau = DEFAULT_TAU[similarity]
    rng = np.random.default_rng(seed)
    q = make_batch(rng, batch, q_len)
    p = make_batch(rng, batch * (1 + hard), p_len)
    pos = positive_indices(batch, 1 + hard)
    encoders = [lambda c: model(**c, tower=QUESTION), lambda c: model(**c, tower=CONTEXT)]
    return model, q, p, encoders, lambda qr, pr: nll_loss(qr, pr, pos, tau)


def grads(model):
    out = {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None}
    model.clear_gradients()
    return out


def compare(a, b):
    assert a.keys() == b.keys() and len(a) > 10
    scale = max(np.abs(v).max() for v in a.values())
    return max(np.abs(a[k] - b[k]).max() for k in a) / scale


@pytest.mark.parametrize("batch,q_chunk,p_chunk", [(8, 8, 16), (8, 2, 4), (8, 3, 5), (7, 4, 3), (6, 1, 12)])
def test_dropout_off_equals_full_batch(minilm, batch, q_chunk, p_chunk):
    # A trained encoder: a random-init one is so ill-conditioned (tiny LayerNorm variances) that
    # two float32 runs of the *plain* step differ from float64 by 6e-5 of the gradient scale.
    model, q, p, encs, loss_fn = setup(minilm, batch)
    model.eval()
    ref_loss, _ = graph_reference_step(encs, [split_chunks(q, 0), split_chunks(p, 0)], loss_fn)  # the plain step
    ref = grads(model)
    loss, _ = cached_step(encs, [split_chunks(q, q_chunk), split_chunks(p, p_chunk)], loss_fn)
    got = grads(model)
    assert abs(float(loss) - float(ref_loss)) <= 1e-5 * float(ref_loss)
    assert float(ref_loss) > 0.1  # a real loss, not a degenerate one
    assert compare(ref, got) <= 1e-5  # measured: <= 2.3e-6


@pytest.mark.parametrize("fast", [False, True], ids=["paddle_dropout", "fast_cpu"])
@pytest.mark.parametrize("batch,q_chunk,p_chunk", [(8, 2, 4), (7, 3, 5), (6, 1, 12), (6, 6, 2)])
def test_dropout_on_equals_chunked_graph_reference_bitwise(tiny_dir, batch, q_chunk, p_chunk, fast):
    model, q, p, encs, loss_fn = setup(tiny_dir, batch, fast=fast)
    model.train()
    chunks = [split_chunks(q, q_chunk), split_chunks(p, p_chunk)]
    paddle.seed(7)
    ref_loss, _ = graph_reference_step(encs, chunks, loss_fn)
    after_ref = paddle.rand([16]).numpy()
    ref = grads(model)
    paddle.seed(7)
    loss, _ = cached_step(encs, chunks, loss_fn)
    after = paddle.rand([16]).numpy()
    got = grads(model)
    assert float(loss) == float(ref_loss)
    for k in ref:
        assert np.array_equal(ref[k], got[k]), k  # bit for bit
    assert np.array_equal(after_ref, after)  # the random stream continues where the reference left it
    # and dropout really was on: a step with other masks gives other gradients
    paddle.seed(8)
    cached_step(encs, chunks, loss_fn)
    assert compare(ref, grads(model)) > 1e-3


@pytest.mark.parametrize("pooling,similarity", RECIPES)
def test_every_recipe_dropout_off_equals_full_batch(minilm, pooling, similarity):
    model, q, p, encs, loss_fn = setup(minilm, 8, pooling=pooling, similarity=similarity)
    model.eval()
    ref_loss, _ = graph_reference_step(encs, [split_chunks(q, 0), split_chunks(p, 0)], loss_fn)
    ref = grads(model)
    loss, _ = cached_step(encs, [split_chunks(q, 3), split_chunks(p, 5)], loss_fn)
    got = grads(model)
    assert abs(float(loss) - float(ref_loss)) <= 1e-5 * float(ref_loss)
    assert float(ref_loss) > 0.1
    assert compare(ref, got) <= 1e-5


def dropout_on_steps(model, encs, chunks, loss_fn, seed):
    """(reference loss, reference grads, cached loss, cached grads) of one dropout-on step each,
    both from the same random state."""
    model.train()
    paddle.seed(seed)
    ref_loss, _ = graph_reference_step(encs, chunks, loss_fn)
    ref = grads(model)
    paddle.seed(seed)
    loss, _ = cached_step(encs, chunks, loss_fn)
    return ref_loss, ref, loss, grads(model)


@pytest.mark.parametrize("fast", [False, True], ids=["paddle_dropout", "fast_cpu"])
@pytest.mark.parametrize("pooling,similarity", RECIPES)
def test_every_recipe_dropout_on_bitwise(tiny_dir, pooling, similarity, fast):
    model, q, p, encs, loss_fn = setup(tiny_dir, 6, pooling=pooling, similarity=similarity, fast=fast)
    chunks = [split_chunks(q, 4), split_chunks(p, 5)]
    ref_loss, ref, loss, got = dropout_on_steps(model, encs, chunks, loss_fn, seed=5)
    assert float(loss) == float(ref_loss)
    assert all(np.array_equal(ref[k], got[k]) for k in ref)
    paddle.seed(6)  # dropout was really on: other masks, other gradients
    cached_step(encs, chunks, loss_fn)
    assert compare(ref, grads(model)) > 1e-3


@pytest.mark.parametrize("fast", [False, True], ids=["paddle_dropout", "fast_cpu"])
def test_dropout_on_minilm_bitwise(fast):
    model = BiEncoder(load_encoder("minilm")[0], load_encoder("minilm")[0])
    if fast:
        model.speed_up_training()
    model, q, p, encs, loss_fn = setup(model, batch=4, q_len=8, p_len=16)
    _, ref, _, got = dropout_on_steps(model, encs, [split_chunks(q, 2), split_chunks(p, 3)], loss_fn, seed=11)
    assert max(np.abs(ref[k] - got[k]).max() for k in ref) == 0.0


def test_rand_context_replays_and_restores():
    paddle.seed(3)
    ctx = RandContext()
    first = paddle.rand([5]).numpy()
    outer_next = paddle.rand([5]).numpy()
    paddle.seed(3)
    ctx2 = RandContext()
    paddle.rand([5])
    with ctx2:
        replay = paddle.rand([5]).numpy()
    assert np.array_equal(replay, first)
    assert np.array_equal(paddle.rand([5]).numpy(), outer_next)  # outer stream untouched
    assert ctx.state is not None


def test_scale_loss_scales_gradients(tiny_dir):
    model, q, p, encs, loss_fn = setup(tiny_dir, 4)
    model.eval()
    cached_step(encs, [split_chunks(q, 2), split_chunks(p, 3)], loss_fn)
    ref = grads(model)
    cached_step(encs, [split_chunks(q, 2), split_chunks(p, 3)], loss_fn, scale_loss=lambda x: x * 1024.0)
    got = grads(model)
    # powers of two scale exactly; unscaling (as GradScaler.unscale_ does) recovers the gradients
    for k in ref:
        np.testing.assert_array_equal(got[k] / 1024.0, ref[k])


def test_chunks_cover_the_batch_and_trim_padding_per_chunk():
    rng = np.random.default_rng(0)
    batch = make_batch(rng, 7, 12)
    chunks = split_chunks(batch, 3)
    assert [c["input_ids"].shape[0] for c in chunks] == [3, 3, 1]
    for i, c in enumerate(chunks):  # each chunk is padded only to its own longest row
        rows = batch["attention_mask"][3 * i : 3 * i + 3]
        assert c["input_ids"].shape[1] == rows.sum(axis=1).max()
        np.testing.assert_array_equal(c["input_ids"].numpy(), batch["input_ids"][3 * i : 3 * i + 3, : c["input_ids"].shape[1]])
    assert len(split_chunks(batch, 0)) == 1  # 0: no chunking


def test_cached_gradients_are_float32_for_half_precision_reps():
    # What AMP hands build_cache: float16 representations. The loss and the cache stay float32.
    from dpr_paddle.training.grad_cache import build_cache

    rng = np.random.default_rng(0)
    q = [paddle.to_tensor(rng.standard_normal((2, 8)).astype("float16")) for _ in range(2)]
    p = [paddle.to_tensor(rng.standard_normal((4, 8)).astype("float16")) for _ in range(2)]
    (loss, _), grads = build_cache(lambda qr, pr: nll_loss(qr, pr, positive_indices(4, 2)), [q, p])
    assert loss.dtype == paddle.float32
    assert [g.dtype for group in grads for g in group] == [paddle.float32] * 4
    assert [g.shape for g in grads[1]] == [[4, 8], [4, 8]]


# --------------------------------------------------------------------------- length-sorted chunks

def sorted_setup(model, q, p, loss_fn, q_chunk, p_chunk):
    """Chunks of rows sorted by length (as train_step makes them) and the loss that puts the
    representations back in batch order."""
    from dpr_paddle.training.step import in_batch_order, length_order

    qo, po = length_order(q, q_chunk), length_order(p, p_chunk)
    chunks = [split_chunks(q, q_chunk, qo), split_chunks(p, p_chunk, po)]
    return chunks, lambda qr, pr: loss_fn(in_batch_order(qr, qo), in_batch_order(pr, po))


@pytest.mark.parametrize("pooling,similarity,batch,q_chunk,p_chunk",
                         [(p, s, 8, 3, 5) for p, s in RECIPES] + [("cls", "dot", 7, 2, 4)])
def test_length_sorted_chunks_dropout_off_equal_full_batch(minilm, pooling, similarity, batch, q_chunk, p_chunk):
    model, q, p, encs, loss_fn = setup(minilm, batch, pooling=pooling, similarity=similarity)
    model.eval()
    ref_loss, _ = graph_reference_step(encs, [split_chunks(q, 0), split_chunks(p, 0)], loss_fn)  # the plain step
    ref = grads(model)
    chunks, sorted_loss = sorted_setup(model, q, p, loss_fn, q_chunk, p_chunk)
    loss, _ = cached_step(encs, chunks, sorted_loss)
    assert abs(float(loss) - float(ref_loss)) <= 1e-5 * float(ref_loss)
    assert compare(ref, grads(model)) <= 1e-5


@pytest.mark.parametrize("fast", [False, True], ids=["paddle_dropout", "fast_cpu"])
@pytest.mark.parametrize("pooling,similarity", RECIPES)
def test_length_sorted_chunks_dropout_on_bitwise(tiny_dir, pooling, similarity, fast):
    from dpr_paddle.modeling import fused_cpu

    model, q, p, encs, loss_fn = setup(tiny_dir, 7, pooling=pooling, similarity=similarity, fast=fast)
    chunks, sorted_loss = sorted_setup(model, q, p, loss_fn, 3, 4)
    before = fused_cpu.counts["fused_layers"]
    ref_loss, ref, loss, got = dropout_on_steps(model, encs, chunks, sorted_loss, seed=9)
    assert float(loss) == float(ref_loss)
    assert all(np.array_equal(ref[k], got[k]) for k in ref)
    if fast and fused_cpu.ops() is not None:  # the fused kernels (fused_cpu.py) really ran, with dropout on
        assert fused_cpu.counts["fused_layers"] > before


def test_length_sorted_chunks_pad_less():
    from dpr_paddle.training.step import length_order

    rng = np.random.default_rng(0)
    mask = np.zeros((16, 40), dtype="int64")
    for i, n in enumerate(rng.integers(5, 41, 16)):
        mask[i, :n] = 1
    arrays = {"input_ids": mask.copy(), "token_type_ids": mask * 0, "attention_mask": mask}
    order = length_order(arrays, 4)
    assert sorted(order) == list(range(16)) and length_order(arrays, 16) is None and length_order(arrays, 0) is None

    def padded(chunks):
        return sum(c["input_ids"].shape[0] * c["input_ids"].shape[1] for c in chunks)

    plain, by_length = padded(split_chunks(arrays, 4)), padded(split_chunks(arrays, 4, order))
    assert mask.sum() <= by_length < plain


def test_copies_of_a_positive_leave_its_softmax():
    """A passage that is question i's positive, standing elsewhere in the batch (another question's positive
    or negative), is not i's negative: the loss equals the loss over the batch without that column."""
    from dpr_paddle.data.collator import passage_keys
    from dpr_paddle.modeling.model import positive_copies

    rng = np.random.default_rng(0)
    passages = [("t", "a"), ("t", "b"), ("t", "c"), ("t", "a"), ("u", "a"), ("t", "b")]  # 2 questions x 3
    keys = passage_keys(passages)
    assert keys[0] == keys[3] and keys[0] != keys[4] != keys[1]  # the title is part of a passage
    pos = np.array([0, 3])
    copies = positive_copies(keys, pos)  # [2, 6]
    assert copies.tolist() == [[False, False, False, True, False, False], [True, False, False, False, False, False]]
    q, p = rng.normal(size=(2, 8)).astype("float32"), rng.normal(size=(6, 8)).astype("float32")
    loss, _ = nll_loss(paddle.to_tensor(q), paddle.to_tensor(p), paddle.to_tensor(pos), 0.5, paddle.to_tensor(copies))
    want = 0.0
    for i in range(2):
        s = (q[i] @ p.T / 0.5)[~copies[i]].astype("float64")
        want -= (s[list(np.flatnonzero(~copies[i])).index(pos[i])] - np.log(np.exp(s).sum())) / 2
    assert abs(float(loss) - want) < 1e-5
