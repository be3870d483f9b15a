"""fast_cpu changes the speed of CPU training, not what is computed: patched and unpatched
encoders agree bit for bit without dropout, and the numpy-drawn dropout is a correct,
seed-reproducible upscale_in_train dropout."""
import numpy as np
import paddle
import pytest

from dpr_paddle.modeling import fast_cpu
from dpr_paddle.modeling.model import set_dropout
from dpr_paddle.modeling.pretrained import load_encoder


def inputs(seed=0, n=5, length=24):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 8000, (n, length))
    ids[:, 0] = 101
    mask = np.ones_like(ids)
    mask[1, 10:] = 0
    mask[3, 17:] = 0
    ids[mask == 0] = 0
    return paddle.to_tensor(ids), paddle.zeros_like(paddle.to_tensor(ids)), paddle.to_tensor(mask)


def cls_and_grads(encoder, ids, types, mask):
    encoder.clear_gradients()
    out = encoder(ids, token_type_ids=types, attention_mask=mask, return_dict=True).last_hidden_state[:, 0]
    (out * paddle.arange(out.shape[1], dtype=out.dtype)).sum().backward()
    grads = {n: p.grad.numpy().copy() for n, p in encoder.named_parameters() if p.grad is not None}
    return out.numpy(), grads


@pytest.mark.parametrize("mode", ["eval", "train_without_dropout"])
def test_patched_encoder_equals_paddle_bitwise(tiny_dir, mode):
    plain, _ = load_encoder(tiny_dir)
    fast = fast_cpu.speed_up(load_encoder(tiny_dir)[0])
    for enc in (plain, fast):
        if mode == "eval":
            enc.eval()
        else:
            enc.train()
            set_dropout(enc, 0.0)
    x = inputs()
    out_a, grads_a = cls_and_grads(plain, *x)
    out_b, grads_b = cls_and_grads(fast, *x)
    assert np.array_equal(out_a, out_b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for k in grads_a:
        assert np.array_equal(grads_a[k], grads_b[k]), k


def test_speed_up_swaps_every_dropout_and_attention_once(tiny_dir):
    enc = fast_cpu.speed_up(fast_cpu.speed_up(load_encoder(tiny_dir)[0]))
    layers = enc.sublayers()
    assert not [l for l in layers if type(l) is paddle.nn.Dropout]
    attn = [l for l in layers if isinstance(l, paddle.nn.MultiHeadAttention)]
    assert attn and all(l.forward.__func__ is fast_cpu._attention_forward for l in attn)
    set_dropout(enc, 0.25)  # still found by set_dropout
    assert {l.p for l in layers if isinstance(l, fast_cpu.Dropout)} == {0.25}


def test_attention_dropout_is_applied(tiny_dir):
    enc = fast_cpu.speed_up(load_encoder(tiny_dir)[0])
    enc.train()
    set_dropout(enc, 0.0)
    x = inputs()
    base, _ = cls_and_grads(enc, *x)
    for layer in enc.sublayers():
        if isinstance(layer, paddle.nn.MultiHeadAttention):
            layer.dropout = 0.3  # attention probabilities only
    paddle.seed(5)
    a, _ = cls_and_grads(enc, *x)
    paddle.seed(5)
    b, _ = cls_and_grads(enc, *x)
    assert np.array_equal(a, b)  # masks follow paddle.seed
    assert np.abs(a - base).max() > 1e-3


def test_dropout_statistics_scale_gradient_and_seed():
    x = paddle.ones([1000, 1000])
    x.stop_gradient = False
    paddle.seed(1)
    y = fast_cpu.dropout(x, 0.1)
    kept = y.numpy() > 0
    assert abs(kept.mean() - 0.9) < 0.002  # 1e6 Bernoulli(0.9) draws: sd 3e-4
    assert np.allclose(y.numpy()[kept], 1 / 0.9)
    y.sum().backward()
    assert np.array_equal(x.grad.numpy(), y.numpy())  # d/dx (x * mask / 0.9) with x = 1
    paddle.seed(1)
    assert np.array_equal(fast_cpu.dropout(paddle.ones([1000, 1000]), 0.1).numpy(), y.numpy())
    assert not np.array_equal(fast_cpu.dropout(paddle.ones([1000, 1000]), 0.1).numpy(), y.numpy())
    z = paddle.ones([4, 4])
    assert fast_cpu.dropout(z, 0.1, training=False) is z and fast_cpu.dropout(z, 0.0) is z
