"""Self-attention of a converted BERT/ERNIE encoder as ONNX Runtime's fused `Attention` operator.

paddle2onnx writes each attention block as 20-odd nodes: three projections (MatMul, Add, Reshape,
Transpose each), q scaled by Mul and Add 0 (Paddle's `scale` op), q·kᵀ, the additive mask, Softmax,
·v, Transpose and Reshape. ONNX Runtime's own transformer optimiser does not recognise that pattern
(the scale op and the mask's arithmetic differ from what torch exports), so the CPU runs it op by op:
a [B, heads, S, S] mask addition and three transposes of [B, S, H] per layer, none of them GEMMs.
`com.microsoft.Attention` does the same work with one packed q/k/v GEMM and a per-head loop that
scales, masks and normalises in place (measured 1.03-1.13x for a whole MiniLM forward at 128-320 tokens
on an Intel Xeon, docs/benchmarks.md section 14).

The rewrite is structural: a block is fused only when every node of the pattern is found, and the
caller checks the fused model against Paddle Inference on a padded probe batch before using it
(towers.onnx_encoder), so a pattern that matched but meant something else (another mask value, say)
is never run.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np

from ..common.files import atomic_path

MASK_FILTER = -10000.0  # BERT's additive mask value, which PaddleNLP's encoders and ORT's Attention share


def fused_path(onnx_path: str) -> str:
    """Where the fused variant of a converted tower lives."""
    return onnx_path[: -len(".onnx")] + ".attention.onnx"


def _unfused_marker(onnx_path: str) -> str:
    return onnx_path[: -len(".onnx")] + ".attention.none"


def give_up(onnx_path: str) -> None:
    """Remove the fused variant of `onnx_path` (it failed its check) and remember that it has none."""
    if os.path.isfile(fused_path(onnx_path)):
        os.remove(fused_path(onnx_path))
    with atomic_path(_unfused_marker(onnx_path)) as tmp, open(tmp, "w", encoding="utf-8"):
        pass


def fuse_attention(onnx_path: str) -> Optional[str]:
    """`onnx_path` with every recognised attention block as one `Attention` node, written once beside it;
    None when no block matched, or an earlier fusion failed its check (`give_up`): the caller then runs the
    model as converted. Both outcomes are remembered beside it, so the 90 MB graph is read once."""
    import onnx

    path = fused_path(onnx_path)
    if os.path.isfile(path):
        return path
    if os.path.isfile(_unfused_marker(onnx_path)):
        return None
    model = onnx.load(onnx_path)
    if not _rewrite(model.graph):
        give_up(onnx_path)
        return None
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    with atomic_path(path) as tmp:
        onnx.save(model, tmp)
    return path


class _Graph:
    """Producer/consumer lookups over a graph whose Identity nodes have been bypassed."""

    def __init__(self, graph):
        from onnx import numpy_helper

        outputs = {o.name for o in graph.output}
        alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.output[0] not in outputs}

        def root(name):
            while name in alias:
                name = alias[name]
            return name

        nodes = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
        for n in nodes:
            for j, name in enumerate(n.input):
                n.input[j] = root(name)
        self.nodes, self.outputs = nodes, outputs
        self.weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.constants = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in nodes
                          if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
        self.producer = {o: n for n in nodes for o in n.output}
        self.consumers: Dict[str, list] = {}
        for n in nodes:
            for name in n.input:
                self.consumers.setdefault(name, []).append(n)

    def made_by(self, name: str, op: str):
        """The node of type `op` that produces `name`, else None."""
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op else None

    def only_reader(self, name: str, op: str):
        """The single node reading `name`, if it is of type `op`."""
        readers = self.consumers.get(name, [])
        return readers[0] if len(readers) == 1 and readers[0].op_type == op else None

    def scalar(self, name: str) -> Optional[float]:
        """The value of a one-element constant or initializer, else None."""
        value = self.weights.get(name, self.constants.get(name))
        return None if value is None or np.size(value) != 1 else float(np.asarray(value).ravel()[0])


def _perm(node) -> List[int]:
    """A Transpose's permutation ([] when it has none: it then reverses the axes, which no pattern here uses)."""
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), [])


def _projection(g: _Graph, name: str):
    """(input, weight, bias, heads, nodes) for `name` = Transpose(0,2,1,3)(Reshape(Add(MatMul(x, W), b)))."""
    tr = g.made_by(name, "Transpose")
    if tr is None or _perm(tr) != [0, 2, 1, 3]:
        return None
    rs = g.made_by(tr.input[0], "Reshape")
    add = rs and g.made_by(rs.input[0], "Add")
    mm = add and g.made_by(add.input[0], "MatMul")
    shape = rs and g.weights.get(rs.input[1], g.constants.get(rs.input[1]))
    if mm is None or mm.input[1] not in g.weights or add.input[1] not in g.weights or shape is None or len(shape) != 4:
        return None
    return mm.input[0], g.weights[mm.input[1]], g.weights[add.input[1]], int(shape[2]), [tr, rs, add, mm]


def _block(g: _Graph, softmax):
    """(x, W_qkv [H, 3H], b_qkv [3H], heads, scale, output name, nodes to remove) of the attention block around
    `softmax`, or None if any part of the pattern is missing."""
    masked = g.made_by(softmax.input[0], "Add")
    scores = masked and g.made_by(masked.input[0], "MatMul")
    k_t = scores and g.made_by(scores.input[1], "Transpose")
    q_zero = scores and g.made_by(scores.input[0], "Add")  # Paddle's scale op: q * s + 0
    q_mul = q_zero and g.made_by(q_zero.input[0], "Mul")
    if None in (masked, scores, k_t, q_mul) or _perm(k_t) != [0, 1, 3, 2] or g.scalar(q_zero.input[1]) != 0.0:
        return None
    scale = g.scalar(q_mul.input[1])
    mixed = g.only_reader(softmax.output[0], "MatMul")
    back = mixed and g.only_reader(mixed.output[0], "Transpose")
    merged = back and g.only_reader(back.output[0], "Reshape")
    if scale is None or merged is None or mixed.input[0] != softmax.output[0] or _perm(back) != [0, 2, 1, 3]:
        return None
    q, k, v = _projection(g, q_mul.input[0]), _projection(g, k_t.input[0]), _projection(g, mixed.input[1])
    if None in (q, k, v) or not q[0] == k[0] == v[0] or not q[3] == k[3] == v[3]:
        return None
    weight = np.concatenate([q[1], k[1], v[1]], axis=1).astype(np.float32)  # [H, 3H]
    bias = np.concatenate([q[2], k[2], v[2]]).astype(np.float32)  # [3H]
    nodes = q[4] + k[4] + v[4] + [k_t, q_zero, q_mul, scores, masked, softmax, mixed, back, merged]
    # every intermediate must be read only inside the block, or removing the block breaks its other readers
    inside = {id(n) for n in nodes}
    if any(id(r) not in inside for n in nodes if n is not merged for o in n.output for r in g.consumers.get(o, [])):
        return None
    return q[0], weight, bias, q[3], scale, merged.output[0], nodes


def _rewrite(graph) -> int:
    """Replace the attention blocks of `graph` in place; returns how many were fused."""
    from onnx import TensorProto, helper, numpy_helper

    g = _Graph(graph)
    if "attention_mask" not in {i.name for i in graph.input}:
        return 0
    mask = "attention_mask.int32"  # ORT's Attention takes the raw [B, S] 0/1 mask as int32 and adds MASK_FILTER
    fused, removed, placed = 0, set(), {}
    for softmax in [n for n in g.nodes if n.op_type == "Softmax"]:
        found = _block(g, softmax)
        if found is None:
            continue
        x, weight, bias, heads, scale, out, nodes = found
        w_name, b_name = f"attention_{fused}.qkv_weight", f"attention_{fused}.qkv_bias"
        graph.initializer.extend([numpy_helper.from_array(weight, w_name), numpy_helper.from_array(bias, b_name)])
        placed[id(nodes[-1])] = helper.make_node(  # where the block's last node was: its readers come after
            "Attention", [x, w_name, b_name, mask], [out], name=f"attention_{fused}", domain="com.microsoft",
            num_heads=heads, scale=scale, mask_filter_value=MASK_FILTER)
        removed.update(id(n) for n in nodes)
        fused += 1
    if not fused:
        return 0
    nodes = [helper.make_node("Cast", ["attention_mask"], [mask], to=TensorProto.INT32, name="attention_mask_int32")]
    for n in g.nodes:
        if id(n) in placed:
            nodes.append(placed[id(n)])
        elif id(n) not in removed:
            nodes.append(n)
    while True:  # drop what nothing reads any more: the additive mask's arithmetic
        read = {name for n in nodes for name in n.input} | g.outputs
        kept = [n for n in nodes if any(o in read for o in n.output)]
        if len(kept) == len(nodes):
            break
        nodes = kept
    del graph.node[:]
    graph.node.extend(nodes)
    read = {name for n in nodes for name in n.input}
    initializers = [i for i in graph.initializer if i.name in read]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    return fused
