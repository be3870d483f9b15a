"""The fast tokenizer (HF `tokenizers`) gives PaddleNLP's ids exactly: on every passage and question
of SQuAD-open, on strings built to trip it, for BERT and ERNIE; truncation matches PaddleNLP's
loop; `--verify` reports it; the next block is tokenized while the current one encodes."""
import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import ROOT, sample_head, shared_path
from dpr_paddle.data import iter_passages, read_qa
from dpr_paddle.modeling.pretrained import load_encoder
from dpr_paddle.modeling.tokenization import Tensorizer, longest_first


def both(name, max_q=32, max_p=256):
    tokenizer = load_encoder(name)[1]
    slow, fast = Tensorizer(tokenizer, max_q, max_p, fast=False), Tensorizer(tokenizer, max_q, max_p)
    assert fast.fast is not None
    return slow, fast


@pytest.mark.parametrize("name", ["minilm", "tiny-ernie"])
def test_fast_ids_equal_paddlenlp_on_all_of_squad_open(name):
    slow, fast = both(name)
    pairs = [(p.title, p.text) for p in iter_passages(shared_path("data", "squad1_open", "passages.tsv"))]
    assert len(pairs) == 2067
    assert fast.encode_passages_ids(pairs) == slow.encode_passages_ids(pairs)
    questions = [q.question for q in read_qa(shared_path("data", "squad1_open", "qa_eval.csv"))]
    questions += [r["question"] for r in json.load(open(shared_path("data", "squad1_open", "train.json")))]
    assert fast.encode_questions_ids(questions) == slow.encode_questions_ids(questions)


TRICKY = [
    "Price: 5€ (©2020), 30°C, x² + y² = z², №7, ŋ Ʊ µ Ø º 〇 → ™ ± ∑ ∞",  # symbols PaddleNLP splits, HF's BERT does not
    "Café naïve RÉSUMÉ Ångström İstanbul ǅ ﬁ ß Σίσυφος",  # accents, ligatures, case
    "中文字符与 English 混合；日本語のカタカナ、한국어, 丽 (U+F900-style ideographs: 豈更車)",
    "zero\u200bwidth\u00adsoft\u2028line\u2029para\x0bvt\x85nel\ufeffbom\x00nul\ufffd",
    "a literal [SEP] and [CLS] and [MASK] inside the text, and [sep] lowercase",
    "x" * 150 + " " + "supercalifragilisticexpialidocious" * 3,  # words over 100 characters are [UNK]
    "tabs\tand\nnewlines\r\n   many   spaces  ",
    "emoji 😀🎉 and math 𝔸𝔹 and arrows ⇒⇔",
    "", " ", "???", "'quoted' \"double\" `back` — dash – en-dash … ellipsis",
]


@pytest.mark.parametrize("name", ["minilm", "tiny-ernie"])
def test_fast_ids_equal_paddlenlp_on_tricky_strings(name):
    slow, fast = both(name, max_q=16, max_p=24)  # short: truncation on both sides of the pair
    assert fast.encode_questions_ids(TRICKY) == slow.encode_questions_ids(TRICKY)
    pairs = [(a, b) for a in TRICKY for b in TRICKY[::3]]
    assert fast.encode_passages_ids(pairs) == slow.encode_passages_ids(pairs)


def test_longest_first_equals_paddlenlps_token_by_token_loop():
    def loop(n1, n2, limit):
        for _ in range(max(n1 + n2 - limit, 0)):
            if n1 > n2:
                n1 -= 1
            else:
                n2 -= 1
        return n1, n2

    for n1 in range(14):
        for n2 in range(14):
            for limit in range(1, 20):
                assert longest_first(n1, n2, limit) == loop(n1, n2, limit), (n1, n2, limit)


def test_fallback_and_switch_off(monkeypatch, caplog):
    tokenizer = load_encoder("tiny")[1]
    monkeypatch.setenv("DPR_PADDLE_FAST_TOKENIZER", "0")
    assert Tensorizer(tokenizer).fast is None
    monkeypatch.delenv("DPR_PADDLE_FAST_TOKENIZER")
    tokenizer.truncation_side = "left"  # a setting the fast path does not reproduce: PaddleNLP's, logged
    caplog.set_level("INFO")
    assert Tensorizer(tokenizer).fast is None
    assert any("truncates on the left" in r.message for r in caplog.records)


def test_verify_command(sample_dir, tmp_path):
    sample_head(sample_dir, tmp_path, 300)
    proc = subprocess.run([sys.executable, "-m", "dpr_paddle.tokenization", "--verify", str(tmp_path / "p.tsv"),
                           "--model_name_or_path", "tiny", "--limit", "200", "--max_length", "64"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["passages"] == 200 and last["differ"] == 0 and last["fast_per_s"] > 0 and last["slow_per_s"] > 0


def test_the_next_block_is_tokenized_while_the_current_one_encodes(sample_dir, tmp_path):
    from dpr_paddle.encoding.writer import generate_shard
    from dpr_paddle.encoding.towers import load_tower
    from dpr_paddle.modeling.model import CONTEXT
    from dpr_paddle.index.shards import load_shards

    sample_head(sample_dir, tmp_path, 120)
    encode, tensorizer, info = load_tower(CONTEXT, model_name_or_path="tiny", backend="dygraph")
    events = []

    class Recording(Tensorizer):  # the real tensorizer, with a log of who tokenized what, when
        def encode_passages_ids(self, passages):
            events.append(("tokenize", passages[0][1][:20], threading.current_thread().name, time.perf_counter()))
            return super().encode_passages_ids(passages)

    recording = Recording(tensorizer.tokenizer, tensorizer.max_query_length, tensorizer.max_passage_length)

    def slow_encode(batch):
        events.append(("encode", None, threading.current_thread().name, time.perf_counter()))
        time.sleep(0.05)  # a device busy long enough for the tokenizer to run beside it
        return encode(batch)

    outs = {}
    for background in (False, True):
        events.clear()
        outs[background] = generate_shard(slow_encode, recording, str(tmp_path / "p.tsv"),
                                          str(tmp_path / f"emb_{background}"), 0, 1, info, batch_size=16, block=40,
                                          prefetch=background)
        tokenize = [e for e in events if e[0] == "tokenize"]
        assert len(tokenize) == 3  # 120 passages in blocks of 40
        if background:
            assert all(e[2].startswith("tokenize") for e in tokenize)
            first_encode = next(e[3] for e in events if e[0] == "encode")
            assert tokenize[1][3] < first_encode + 0.5  # block 1 was being tokenized while block 0 encoded
            # block 1's tokenization began before block 0's last batch was encoded
            encodes = [e[3] for e in events if e[0] == "encode"]
            assert tokenize[1][3] < encodes[2]
        else:
            assert all(e[2] == "MainThread" for e in tokenize)
    a, b = (load_shards(outs[k])[0] for k in (False, True))
    assert a.ids == b.ids and np.array_equal(a.vectors, b.vectors)  # the same shard either way
