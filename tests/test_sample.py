"""The built-in sample: deterministic, in DPR's formats, with answers where they should be."""
import hashlib
import os
import subprocess
import sys

from conftest import ROOT
from dpr_paddle.data import BiEncoderDataset, count_passages, iter_passages, read_biencoder_records, read_qa
from dpr_paddle.retrieval.evaluation import has_answer


def digest(d):
    return {f: hashlib.md5(open(os.path.join(d, f), "rb").read()).hexdigest() for f in sorted(os.listdir(d))}


def test_sample_is_deterministic(sample_dir, tmp_path):
    subprocess.run([sys.executable, os.path.join(ROOT, "data", "make_sample.py"), "--output_dir", str(tmp_path)],
                   check=True, capture_output=True)
    assert digest(sample_dir) == digest(str(tmp_path))


def test_sample_sizes_and_answers(sample_dir):
    passages = {p.id: p for p in iter_passages(os.path.join(sample_dir, "passages.tsv"))}
    assert len(passages) >= 2000
    words = sum(len(p.text.split()) for p in passages.values()) / len(passages)
    assert 80 <= words <= 120
    train = read_biencoder_records(os.path.join(sample_dir, "train.json"))
    dev = read_biencoder_records(os.path.join(sample_dir, "dev.json"))
    qa = read_qa(os.path.join(sample_dir, "qa_test.csv"))
    assert len(train) >= 1000 and len(dev) >= 100 and len(qa) >= 200
    assert count_passages(os.path.join(sample_dir, "passages.tsv")) == len(passages)
    for rec in train[:200]:
        gold = rec.positives[0]
        assert passages[gold.id].text == gold.text
        assert has_answer(rec.answers, gold.text)
        assert rec.hard_negatives and not any(has_answer(rec.answers, n.text) for n in rec.hard_negatives)
        # hard negatives are the same kind of passage: they share most of the gold's words
        gold_words = set(gold.text.lower().split())
        overlap = max(len(gold_words & set(n.text.lower().split())) / len(gold_words) for n in rec.hard_negatives)
        assert overlap > 0.5
    # every held-out answer is in exactly one passage of the corpus
    for item in qa[:60]:
        assert sum(has_answer(item.answers, p.text) for p in passages.values()) == 1
    # held-out questions are about entities never seen in training
    train_titles = {r.positives[0].title for r in train}
    qa_titles = {p.title for p in passages.values() for item in qa[:60] if has_answer(item.answers, p.text)}
    assert not train_titles & qa_titles


def test_dataset_examples_deterministic_per_epoch(sample_dir):
    train = read_biencoder_records(os.path.join(sample_dir, "train.json"))
    ds = BiEncoderDataset(train, hard_negatives=2, seed=3)
    a, b = ds.example(5, epoch=1), ds.example(5, epoch=1)
    assert a == b and len(a.passages) == 3
    assert a.passages[0] == (train[5].positives[0].title, train[5].positives[0].text)
    assert any(ds.example(5, epoch=e).passages[1:] != a.passages[1:] for e in range(2, 8))  # reshuffled per epoch


def test_a_record_without_negatives_never_gets_its_own_positive_as_one():
    """The stand-in negative of a record with none is the next record's positive that is another passage."""
    from dpr_paddle.data import BiEncoderRecord, Passage

    a, b = Passage(title="T", text="the answer"), Passage(title="T", text="another paragraph")
    records = [BiEncoderRecord("q0", [], [a]), BiEncoderRecord("q1", [], [a]), BiEncoderRecord("q2", [], [b])]
    ds = BiEncoderDataset(records, hard_negatives=2, seed=0)
    assert ds.example(0).passages == [("T", "the answer")] + [("T", "another paragraph")] * 2
    assert ds.example(2).passages[1] == ("T", "the answer")
