"""ONNX Runtime for a tower already exported for Paddle Inference: convert once, check, run.

The Paddle export (`inference.export_static`) is converted with paddle2onnx and cached beside it.
A conversion is used only after it has reproduced Paddle Inference's vectors on a probe batch
(max abs difference ≤ PROBE_TOLERANCE); otherwise the caller falls back to Paddle Inference.
`int8` quantises the weights of every MatMul to int8 per output channel (ONNX Runtime's dynamic
quantisation: activations are quantised per batch at run time). That changes the vectors
(cosine ~0.995 to float32 for MiniLM), so int8 shards are a job of their own (index/shards.py).
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from typing import Callable, Dict, Iterator, Optional, Sequence

import numpy as np

from ..common.errors import DprError
from ..common.files import atomic_path
from ..common.runtime import cpu_threads

logger = logging.getLogger(__name__)

OPSET = 17
PROBE_TOLERANCE = 1e-4


class OnnxUnavailable(DprError):
    """ONNX Runtime cannot run this tower (package missing, conversion failed or not faithful)."""


def available() -> bool:
    """Whether paddle2onnx and onnxruntime are installed."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("paddle2onnx", "onnxruntime"))


@contextlib.contextmanager
def _quiet_fds() -> Iterator[list]:
    """Silence what C++ code prints on stdout/stderr (paddle2onnx's progress lines); the text is
    handed back in the yielded list, for an error message."""
    saved = [os.dup(1), os.dup(2)]
    captured: list = []
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield captured
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            captured.append(sink.read().decode("utf-8", "replace"))


@contextlib.contextmanager
def _root_logging_off() -> Iterator[None]:
    """ONNX Runtime's quantiser logs a line per tensor through the root logger, and a warning to
    pre-process the model (shape inference for image models; nothing to do for an encoder)."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def convert(prefix: str) -> str:
    """`prefix`.json/.pdiparams (a Paddle export) as `prefix`.onnx, converted once; returns its path."""
    path = prefix + ".onnx"
    if os.path.isfile(path):
        return path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its imports warn about build tools (ccache, setuptools)
        import paddle2onnx
        import polygraphy.config
    # paddle2onnx folds the graph's constants with polygraphy and turns on polygraphy's pip-install of what
    # that needs (POLYGRAPHY_AUTOINSTALL_DEPS=1) before it imports it. The requirements pin those packages;
    # where one is missing, the folding is skipped (the graph stays correct) instead of installing packages
    # into the user's environment mid-run. polygraphy reads the switch into its config once, at import: here.
    polygraphy.config.AUTOINSTALL_DEPS = False
    with atomic_path(path) as tmp, _quiet_fds() as log:
        try:
            # enable_optimize=False: paddle2onnx's C++ optimiser; ONNX Runtime optimises the graph when it loads it
            paddle2onnx.export(prefix + ".json", prefix + ".pdiparams", tmp, opset_version=OPSET,
                               enable_optimize=False, enable_onnx_checker=True)
        except Exception as e:  # noqa: BLE001 (paddle2onnx raises bare Exceptions and RuntimeErrors)
            raise OnnxUnavailable(f"paddle2onnx could not convert {prefix}.json: {e}") from None
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise OnnxUnavailable(f"paddle2onnx wrote nothing for {prefix}.json: {''.join(log)[-300:]}")
    logger.info("converted the encoder for ONNX Runtime: %s", path)
    return path


def quantize_int8(onnx_path: str) -> str:
    """The int8 variant of a converted tower (MatMul weights per output channel), made once."""
    path = onnx_path[: -len(".onnx")] + ".int8.onnx"
    if os.path.isfile(path):
        return path
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:  # its quant_utils import ml_dtypes, which requirements.txt pins
        raise OnnxUnavailable(f"int8 needs ONNX Runtime's quantiser, which could not be imported ({e}): "
                              f"pip install -r requirements.txt") from None

    with atomic_path(path) as tmp, _root_logging_off():
        # the embedding tables stay float32 (quantising them costs accuracy and saves no time), and
        # only MatMuls with a constant weight are quantised: per-batch int8 attention scores lose too much
        quantize_dynamic(onnx_path, tmp, weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"], extra_options={"MatMulConstBOnly": True})
    logger.info("quantised the encoder to int8 for ONNX Runtime: %s", path)
    return path


# ONNX Runtime fusions that make a float32 encoder slower on CPU: its SkipLayerNormalization and BiasGelu kernels
# ran 7-10 % of a MiniLM forward slower than the Add + LayerNormalization and Add + Gelu they replace (measured
# on an Intel Xeon at 32-256 tokens, docs/benchmarks.md section 14; vectors within 3e-7). An int8 graph keeps
# them: there the change moves the vectors by up to 0.03 through the activations' quantisation, and its shards
# must stay reproducible.
SLOWER_FUSIONS = ["SkipLayerNormFusion", "BiasGeluFusion"]


def session(path: str, threads: Optional[int] = None,
            disabled: Optional[Sequence[str]] = None) -> Callable[[Dict[str, np.ndarray]], np.ndarray]:
    """encode(arrays) -> [B, D] float32 with an ONNX Runtime CPU session of `path`, without the ORT fusions
    `disabled` (default: SLOWER_FUSIONS for a float32 graph, none for int8)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cpu_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its warnings name graph nodes, nothing a user can act on
    if disabled is None:
        disabled = [] if path.endswith(".int8.onnx") else SLOWER_FUSIONS
    sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(disabled))
    names = [i.name for i in sess.get_inputs()]

    def encode(arrays: Dict[str, np.ndarray]) -> np.ndarray:
        return sess.run(None, {n: np.ascontiguousarray(arrays[n], dtype=np.int64) for n in names})[0].astype(
            np.float32)  # [B, D]

    return encode


def probe_arrays(vocab_size: int, seed: int = 0) -> Dict[str, np.ndarray]:
    """A padded batch of 3 random sequences of lengths 7, 19 and 32, for checking a conversion."""
    rng = np.random.default_rng(seed)
    lengths = (7, 19, 32)
    ids = np.zeros((len(lengths), max(lengths)), dtype=np.int64)  # [3, 32]
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(1000, min(vocab_size, 20000), n)
        mask[row, :n] = 1
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": mask}


def check_faithful(onnx_encode, reference_encode, arrays: Dict[str, np.ndarray], path: str) -> None:
    """Refuse a conversion whose vectors differ from the reference's by more than PROBE_TOLERANCE."""
    diff = float(np.abs(onnx_encode(arrays) - reference_encode(arrays)).max())
    if not diff <= PROBE_TOLERANCE:
        raise OnnxUnavailable(f"{path} differs from Paddle Inference by {diff:.2g} on a probe batch")
