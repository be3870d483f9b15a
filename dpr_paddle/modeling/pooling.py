"""How an encoder's token states become one vector, and how two vectors are compared.

A *recipe* is {pooling, similarity, temperature}:
- pooling `cls` (DPR: the [CLS] state), `mean` (sentence-transformers: the average of the
  non-padding token states) or `pooler` (BERT's tanh pooler over [CLS]);
- similarity `dot` (DPR) or `cosine` (vectors are L2-normalised inside the model, so stored
  passage vectors are unit length and every index searches them by inner product);
- temperature tau: training scores are similarity / tau. sentence-transformers' MNRL uses a
  scale of 20 with cosine, i.e. tau = 0.05; DPR's dot product uses tau = 1.

`auto` means "what the encoder was trained with": a dpr_paddle checkpoint's dpr_config.json,
a sentence-transformers directory's modules.json + 1_Pooling/config.json (all-MiniLM-L6-v2:
mean pooling, then Normalize, i.e. cosine), else DPR's cls + dot for plain BERT/ERNIE.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Optional

from ..common.errors import DprError

logger = logging.getLogger(__name__)

POOLINGS = ("cls", "mean", "pooler")
SIMILARITIES = ("dot", "cosine")
DEFAULT_TAU = {"dot": 1.0, "cosine": 0.05}
DPR_RECIPE = {"pooling": "cls", "similarity": "dot"}
RECIPE_FILE = "dpr_recipe.json"  # written beside a converted sentence-transformers encoder


class RecipeError(DprError, ValueError):
    """An unknown pooling or similarity name."""


def pool(last_hidden_state, attention_mask, pooler_output, pooling: str):
    """[B, L, H] token states -> [B, H] by `pooling`; padding (mask 0) never counts.

    Mean pooling divides by the number of real tokens, so a sequence's vector does not depend
    on how much padding its batch added.
    """
    import paddle

    if pooling == "cls":
        return last_hidden_state[:, 0]  # [B, H]
    if pooling == "pooler":
        return pooler_output  # [B, H]
    if attention_mask is None:
        return last_hidden_state.mean(axis=1)
    mask = attention_mask.astype(last_hidden_state.dtype).unsqueeze(-1)  # [B, L, 1]
    summed = (last_hidden_state * mask).sum(axis=1)  # [B, H]
    return summed / paddle.clip(mask.sum(axis=1), min=1e-9)  # [B, H] / [B, 1]


def sentence_transformers_recipe(directory: str) -> Optional[dict]:
    """{pooling, similarity} from a sentence-transformers directory, or None if it is not one."""
    modules_file = os.path.join(directory, "modules.json")
    if not os.path.isfile(modules_file):
        return None
    with open(modules_file, encoding="utf-8") as f:
        modules = json.load(f)
    types = [m.get("type", "") for m in modules]
    recipe = {"pooling": "cls", "similarity": "cosine" if any(t.endswith(".Normalize") for t in types) else "dot"}
    for m in modules:
        if m.get("type", "").endswith(".Pooling"):
            with open(os.path.join(directory, m.get("path", ""), "config.json"), encoding="utf-8") as f:
                cfg = json.load(f)
            if cfg.get("pooling_mode_mean_tokens"):
                recipe["pooling"] = "mean"
            elif not cfg.get("pooling_mode_cls_token"):
                modes = sorted(k for k, v in cfg.items() if k.startswith("pooling_mode") and v)
                raise RecipeError(f"{directory}: pooling {modes} is not supported (cls or mean)")
    return recipe


def native_recipe(model_dir: Optional[str]) -> dict:
    """The recipe an encoder directory was trained with: our recipe file or dpr_config.json, else DPR's."""
    if model_dir and os.path.isdir(model_dir):
        for name in (RECIPE_FILE, "dpr_config.json"):
            path = os.path.join(model_dir, name)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    cfg = json.load(f)
                if "pooling" in cfg:
                    return {"pooling": cfg["pooling"], "similarity": cfg.get("similarity", "dot"),
                            **({"temperature": cfg["temperature"]} if "temperature" in cfg else {})}
        found = sentence_transformers_recipe(model_dir)
        if found:
            return found
        if model_dir not in _UNKNOWN_LOGGED:
            _UNKNOWN_LOGGED.add(model_dir)
            logger.info("%s carries no recipe (no %s, dpr_config.json or sentence-transformers modules.json): auto "
                        "takes DPR's cls pooling and dot product; pass --pooling/--similarity if it was trained "
                        "otherwise", model_dir, RECIPE_FILE)
    return dict(DPR_RECIPE)


_UNKNOWN_LOGGED: set = set()


def resolve_recipe(pooling: str, similarity: str, temperature: float, native: dict) -> dict:
    """Fill each `auto` (temperature 0) from `native`; returns {pooling, similarity, temperature}."""
    pooling = native["pooling"] if pooling in (None, "auto") else pooling
    similarity = native.get("similarity", "dot") if similarity in (None, "auto") else similarity
    if pooling not in POOLINGS:
        raise RecipeError(f"unknown pooling {pooling!r}: choose one of {', '.join(POOLINGS)} or auto")
    if similarity not in SIMILARITIES:
        raise RecipeError(f"unknown similarity {similarity!r}: choose one of {', '.join(SIMILARITIES)} or auto")
    if not temperature:
        same = native.get("similarity", "dot") == similarity and "temperature" in native
        temperature = native["temperature"] if same else DEFAULT_TAU[similarity]
    if temperature <= 0:
        raise RecipeError(f"--temperature must be > 0, got {temperature}")
    return {"pooling": pooling, "similarity": similarity, "temperature": float(temperature)}
