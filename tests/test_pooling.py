"""Pooling and similarity: what `auto` resolves to, and that mean pooling ignores padding."""
import json
import os

import numpy as np
import paddle
import pytest

from dpr_paddle.modeling.builder import encoder_recipe
from dpr_paddle.modeling.model import CONTEXT, BiEncoder, nll_loss, positive_indices
from dpr_paddle.modeling.pooling import RecipeError, native_recipe, resolve_recipe, sentence_transformers_recipe
from dpr_paddle.modeling.pretrained import load_encoder


def test_minilm_resolves_to_its_own_recipe_and_plain_bert_to_dprs():
    assert encoder_recipe("minilm") == {"pooling": "mean", "similarity": "cosine", "temperature": 0.05}
    assert encoder_recipe("tiny") == {"pooling": "cls", "similarity": "dot", "temperature": 1.0}
    assert encoder_recipe("ernie-3.0-medium-zh") == {"pooling": "cls", "similarity": "dot", "temperature": 1.0}
    # explicit choices win over the model's own; a temperature follows the chosen similarity
    assert encoder_recipe("minilm", "cls", "dot") == {"pooling": "cls", "similarity": "dot", "temperature": 1.0}
    assert encoder_recipe("minilm", similarity="dot")["temperature"] == 1.0
    assert encoder_recipe("tiny", temperature=0.1)["temperature"] == 0.1


def test_sentence_transformers_directory(tmp_path):
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert sentence_transformers_recipe(str(tmp_path)) == {"pooling": "cls", "similarity": "dot"}
    modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    assert sentence_transformers_recipe(str(tmp_path)) == {"pooling": "mean", "similarity": "cosine"}
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(RecipeError, match="pooling_mode_max_tokens"):
        sentence_transformers_recipe(str(tmp_path))


def test_a_checkpoints_config_is_its_recipe(tmp_path):
    (tmp_path / "dpr_config.json").write_text(json.dumps({"pooling": "mean", "similarity": "dot", "temperature": 0.5}))
    assert native_recipe(str(tmp_path)) == {"pooling": "mean", "similarity": "dot", "temperature": 0.5}
    assert resolve_recipe("auto", "auto", 0, native_recipe(str(tmp_path)))["temperature"] == 0.5
    # a checkpoint from before recipes were recorded was trained with DPR's cls + dot
    (tmp_path / "dpr_config.json").write_text(json.dumps({"pooling": "cls", "max_query_length": 32}))
    assert resolve_recipe("auto", "auto", 0, native_recipe(str(tmp_path))) == {
        "pooling": "cls", "similarity": "dot", "temperature": 1.0}


def test_unknown_names_are_refused_in_one_line():
    with pytest.raises(RecipeError, match="unknown pooling 'max'"):
        resolve_recipe("max", "auto", 0, {"pooling": "cls"})
    with pytest.raises(RecipeError, match="unknown similarity 'l2'"):
        resolve_recipe("auto", "l2", 0, {"pooling": "cls"})
    with pytest.raises(RecipeError, match="temperature"):
        resolve_recipe("auto", "auto", -1, {"pooling": "cls"})


@pytest.mark.parametrize("pooling", ["cls", "mean", "pooler"])
def test_vectors_do_not_depend_on_padding(tiny_dir, pooling):
    model = BiEncoder(load_encoder(tiny_dir)[0], pooling=pooling, normalize=True)
    model.eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 8000, (1, 9))
    alone = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": np.ones_like(ids)}
    padded = {k: np.concatenate([v, np.zeros((1, 7), dtype=v.dtype)], axis=1) for k, v in alone.items()}
    a = model(**{k: paddle.to_tensor(v) for k, v in alone.items()}, tower=CONTEXT).numpy()
    b = model(**{k: paddle.to_tensor(v) for k, v in padded.items()}, tower=CONTEXT).numpy()
    np.testing.assert_allclose(a, b, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)


def test_mean_pooling_is_the_masked_average(tiny_dir):
    model = BiEncoder(load_encoder(tiny_dir)[0], pooling="mean")
    model.eval()
    ids = paddle.to_tensor([[101, 2000, 3000, 102, 0, 0]])
    mask = paddle.to_tensor([[1, 1, 1, 1, 0, 0]])
    got = model(ids, paddle.zeros_like(ids), mask).numpy()
    states = model.question_model(ids, token_type_ids=paddle.zeros_like(ids), attention_mask=mask,
                                  return_dict=True).last_hidden_state.numpy()
    np.testing.assert_allclose(got, states[:, :4].mean(axis=1), atol=1e-6)


def test_temperature_divides_the_scores():
    q = paddle.to_tensor([[1.0, 0.0], [0.0, 1.0]])
    p = paddle.to_tensor([[0.6, 0.8], [0.8, 0.6]])
    pos = positive_indices(2, 1)
    loss_1, _ = nll_loss(q, p, pos)
    loss_20, _ = nll_loss(q * 20, p, pos)
    loss_tau, _ = nll_loss(q, p, pos, temperature=0.05)
    assert abs(float(loss_tau) - float(loss_20)) < 1e-6 and abs(float(loss_tau) - float(loss_1)) > 0.1


def test_converted_minilm_records_its_recipe():
    from dpr_paddle.modeling.pooling import RECIPE_FILE
    from dpr_paddle.modeling.pretrained import minilm_dir

    with open(os.path.join(minilm_dir(), RECIPE_FILE), encoding="utf-8") as f:
        assert json.load(f)["pooling"] == "mean"
