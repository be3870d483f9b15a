"""An exact gradient cache for contrastive losses (Gao et al., 2021), in Paddle.

Three steps, named as in GradCache:
1. `forward_no_grad`: encode every chunk without a graph, recording the RNG state before each;
2. `build_cache`: compute the loss over the full batch of (detached) representations and
   back-propagate to them, caching d loss / d representation;
3. `forward_backward`: re-encode each chunk with a graph under its recorded RNG state and
   back-propagate the cached gradient into the parameters.

Because dropout masks are replayed, the parameter gradients equal those of encoding the same
chunks with a graph and back-propagating the loss once. After the step the random stream is
where that reference would leave it. Nothing here knows about DPR.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import paddle


def _device_kind() -> Optional[str]:
    place = paddle.framework._current_expected_place_()
    if isinstance(place, paddle.CPUPlace):
        return None
    return paddle.device.get_device().split(":")[0]  # 'gpu', 'xpu', a custom device type


def capture_rng_state() -> Dict[str, Any]:
    """The CPU generator's state and, on an accelerator, every device generator's state."""
    state = {"cpu": paddle.get_rng_state("cpu")}
    kind = _device_kind()
    if kind is not None:
        state[kind] = paddle.get_rng_state(kind)
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Set the generators back to a state from `capture_rng_state`."""
    for device, value in state.items():
        paddle.set_rng_state(value, device)


class RandContext:
    """Replays the random stream captured at construction time inside a `with` block, then
    restores the stream that was current when the block was entered."""

    def __init__(self):
        self.state = capture_rng_state()
        self._outer = None

    def __enter__(self):
        self._outer = capture_rng_state()
        restore_rng_state(self.state)
        return self

    def __exit__(self, *exc):
        restore_rng_state(self._outer)
        self._outer = None
        return False


def forward_no_grad(encode: Callable[[Any], paddle.Tensor], chunks: Sequence[Any]):
    """Step 1: encode each chunk without a graph; returns ([chunk reps], [RandContext])."""
    reps, states = [], []
    with paddle.no_grad():
        for chunk in chunks:
            states.append(RandContext())
            reps.append(encode(chunk))
    return reps, states


def _scaled(loss, scale_loss):
    return loss if scale_loss is None else scale_loss(loss)


def build_cache(loss_fn: Callable[..., Any], reps_per_group: Sequence[List[paddle.Tensor]],
                scale_loss: Optional[Callable[[paddle.Tensor], paddle.Tensor]] = None):
    """Step 2: loss over all representations; returns (loss output, cached gradients per group/chunk).

    `loss_fn(*full_reps)` takes one concatenated [N, D] tensor per group (e.g. questions,
    passages) and returns the loss, or a tuple whose first item is the loss. `scale_loss`
    maps the loss to what is back-propagated (AMP's `GradScaler.scale`); the returned loss is
    unscaled.
    """
    leaves = []
    for chunks in reps_per_group:
        # float32 leaves: under AMP the loss and the cached gradients stay in float32; step 3
        # casts each chunk's gradient to its representation's dtype.
        full = paddle.concat([r.detach().astype("float32") for r in chunks], axis=0)
        full.stop_gradient = False
        leaves.append(full)
    out = loss_fn(*leaves)
    loss = out[0] if isinstance(out, (tuple, list)) else out
    _scaled(loss, scale_loss).backward()
    grads = []
    for chunks, leaf in zip(reps_per_group, leaves):
        sizes = [r.shape[0] for r in chunks]
        grads.append(list(paddle.split(leaf.grad, sizes, axis=0)))
    return out, grads


def forward_backward(encode: Callable[[Any], paddle.Tensor], chunks: Sequence[Any], states: Sequence[RandContext],
                     grads: Sequence[paddle.Tensor]) -> None:
    """Step 3: re-encode each chunk with a graph under its recorded RNG state and back-propagate
    its cached gradient. Gradients accumulate locally; a data-parallel caller synchronises them
    once after the step (distributed.World.all_reduce_gradients), so no per-chunk hook is needed."""
    for chunk, state, grad in zip(chunks, states, grads):
        with state:
            reps = encode(chunk)
        paddle.autograd.backward([reps], [grad.astype(reps.dtype)])


def cached_step(encoders: Sequence[Callable[[Any], paddle.Tensor]], chunks_per_group: Sequence[Sequence[Any]],
                loss_fn: Callable[..., Any], scale_loss: Optional[Callable] = None):
    """One gradient-cache step over several groups (e.g. question chunks, passage chunks).

    `encoders[g]` encodes one chunk of group g into [n, D]. Groups are encoded in order in
    step 1 (that order fixes which random numbers each chunk draws). Gradients accumulate into
    the parameters; the caller clears and applies them. Returns `loss_fn`'s output.
    """
    reps_per_group, states_per_group = [], []
    for encode, chunks in zip(encoders, chunks_per_group):
        reps, states = forward_no_grad(encode, chunks)
        reps_per_group.append(reps)
        states_per_group.append(states)
    out, grads = build_cache(loss_fn, reps_per_group, scale_loss)
    for g, (encode, chunks) in enumerate(zip(encoders, chunks_per_group)):
        forward_backward(encode, chunks, states_per_group[g], grads[g])
    return out


def graph_reference_step(encoders, chunks_per_group, loss_fn, scale_loss: Optional[Callable] = None):
    """The reference a cached step must equal: encode the same chunks in the same order *with*
    a graph, concatenate, compute the loss and back-propagate once. Memory grows with the batch."""
    fulls = []
    for encode, chunks in zip(encoders, chunks_per_group):
        fulls.append(paddle.concat([encode(c) for c in chunks], axis=0))
    out = loss_fn(*fulls)
    loss = out[0] if isinstance(out, (tuple, list)) else out
    _scaled(loss, scale_loss).backward()
    return out


def accumulated_step(encode: Callable[[Any], paddle.Tensor], chunks: Sequence[Any], loss_fn: Callable[..., Any],
                     scale_loss: Optional[Callable] = None):
    """One step for a loss that is a sum over chunks (a cross-encoder's groups, each whole in one
    chunk): encode each chunk with a graph, back-propagate its share `loss_fn(reps)` at once, free the
    graph. The spec is the same `graph_reference_step([encode], [chunks], loss_fn_over_all)`: with
    `loss_fn` dividing by the whole batch's count, the chunks' losses add up to the batch's, and the
    gradients with them. No cache is needed: no chunk's loss reads another chunk's representations.
    Returns (summed loss, summed second outputs) as floats/ints of `loss_fn`'s (loss, count)."""
    total, count = 0.0, 0
    for chunk in chunks:
        loss, n = loss_fn(encode(chunk))
        _scaled(loss, scale_loss).backward()
        total += float(loss)
        count += int(n)
    return total, count
