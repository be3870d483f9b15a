"""Readers for DPR's formats: good files, and bad ones with errors naming file, line and field."""
import csv
import gzip
import json
import logging

import pytest

from conftest import shared_path
from dpr_paddle.data import DataFormatError, count_passages, iter_passage_chunks, iter_passages, read_biencoder_records, read_qa

REC = {"question": "q?", "answers": ["a"], "positive_ctxs": [{"title": "T", "text": "a text", "passage_id": "1"}],
       "negative_ctxs": [], "hard_negative_ctxs": [{"title": "U", "text": "other"}]}


def write(path, text, gz=False):
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def test_biencoder_json_jsonl_gz(tmp_path, caplog):
    no_pos = dict(REC, positive_ctxs=[])
    records = [REC, no_pos, REC]
    for name, text, gz in [("a.json", json.dumps(records), False), ("a.json.gz", json.dumps(records), True),
                           ("a.jsonl", "\n".join(json.dumps(r) for r in records) + "\n", False)]:
        with caplog.at_level(logging.INFO):
            out = read_biencoder_records(write(tmp_path / name, text, gz))
        assert len(out) == 2
        assert out[0].positives[0].title == "T" and out[0].positives[0].id == "1"
        assert out[0].hard_negatives[0].text == "other"
        assert "skipped 1 of 3 records with no positive" in caplog.text


def test_real_dpr_nq_records():
    out = read_biencoder_records(shared_path("data", "nq_dev_tiny", "dev.json"))
    assert len(out) == 10
    assert all(r.positives and r.hard_negatives for r in out)


@pytest.mark.parametrize("name,text,where,what", [
    ("bad.json", '[{"question": "q",\n "answers": [}]', "line 2", "invalid JSON"),
    ("empty.json", "", "line 1", "empty"),
    ("obj.json", '{"question": "q"}', "line 1", "expected a JSON list"),
    ("noq.json", json.dumps([REC, {k: v for k, v in REC.items() if k != "question"}]), "record 1", "'question'"),
    ("nopos.json", json.dumps([{k: v for k, v in REC.items() if k != "positive_ctxs"}]), "record 0", "positive_ctxs"),
    ("notext.json", json.dumps([dict(REC, positive_ctxs=[{"title": "T"}])]), "record 0", "'text'"),
    ("bad.jsonl", json.dumps(REC) + "\n{oops\n", "line 2", "invalid JSON"),
    ("ans.jsonl", json.dumps(dict(REC, answers="a")) + "\n", "line 1", "'answers'"),
])
def test_biencoder_errors(tmp_path, name, text, where, what):
    path = write(tmp_path / name, text)
    with pytest.raises(DataFormatError) as e:
        read_biencoder_records(path)
    assert e.value.path == path and e.value.where == where and what in e.value.what
    assert str(e.value).startswith(path)


def test_passages_quoting_gz_and_streaming(tmp_path):
    rows = [["1", 'He said "hi"\tthere', "A"], ["2", "plain", ""], ["3", "NA", "null"]]
    text = "id\ttext\ttitle\n"
    for r in rows:
        import io

        buf = io.StringIO()
        csv.writer(buf, delimiter="\t", lineterminator="\n").writerow(r)
        text += buf.getvalue()
    for name, gz in (("p.tsv", False), ("p.tsv.gz", True)):
        path = write(tmp_path / name, text, gz)
        got = [(p.id, p.text, p.title) for p in iter_passages(path, chunksize=2)]
        assert got == [tuple(r) for r in rows]
        assert count_passages(path) == 3


def test_passages_match_csv_module_on_real_data():
    path = shared_path("data", "squad1_open", "passages.tsv")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        next(reader)
        expected = [(r[0], r[1], r[2]) for r in reader]
    got = [(p.id, p.text, p.title) for p in iter_passages(path, chunksize=500)]
    assert got == expected and len(got) == 2067


@pytest.mark.parametrize("text,where,what", [
    ("", "line 1", "empty"),
    ("id\ttext\n1\tx\n", "line 1", "lacks column"),
    ("id\ttext\ttitle\n1\tx\tT\n2\ty\tT\textra\n", "line 3", "wrong number of columns"),
    ("id\ttext\ttitle\n1\tx\tT\n2\n", "line 3", "missing or empty field 'text'"),
    ("id\ttext\ttitle\n1\tx\tT\n\ty\tT\n", "line 3", "missing or empty field 'id'"),
])
def test_passage_errors(tmp_path, text, where, what):
    path = write(tmp_path / "bad.tsv", text)
    with pytest.raises(DataFormatError) as e:
        list(iter_passages(path))
    assert e.value.where == where and what in e.value.what, str(e.value)


def test_qa_file(tmp_path):
    path = write(tmp_path / "qa.csv", 'who?\t["A", "B"]\nwhat?\t[\'it\\\'s\']\n"quoted ""q"""\t["x"]\n')
    qa = read_qa(path)
    assert [(q.question, q.answers) for q in qa] == [("who?", ["A", "B"]), ("what?", ["it's"]), ('quoted "q"', ["x"])]
    real = read_qa(shared_path("data", "squad1_open", "qa_eval.csv"))
    assert len(real) == 1500 and real[0].answers == ["Newton"]


@pytest.mark.parametrize("text,where,what", [
    ("", "line 1", "empty"),
    ("q\n", "line 1", "expected 2"),
    ('q1\t["a"]\nq2\t["a"]\textra\n', "line 2", "expected 2"),
    ('q\t[unquoted]\n', "line 1", "not a list literal"),
    ('q\t__import__("os").system("echo hacked")\n', "line 1", "not a list literal"),  # never evaluated
    ("q\t'just a string'\n", "line 1", "not a list of strings"),
    ('q\t[1, 2]\n', "line 1", "not a list of strings"),
    ('\t["a"]\n', "line 1", "field 'question' has nothing to search"),
    ('\u200b\u00a0\t["a"]\n', "line 1", "field 'question' has nothing to search"),
])
def test_qa_errors(tmp_path, text, where, what):
    path = write(tmp_path / "qa.csv", text)
    with pytest.raises(DataFormatError) as e:
        read_qa(path)
    assert e.value.where == where and what in e.value.what, str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_qa(str(tmp_path / "nope.csv"))


def test_an_empty_title_reads_as_empty_a_missing_one_is_an_error(tmp_path):
    # issue 13: a row with fewer fields than the header is an error (it is how a cut file looks);
    # an explicitly empty title (`id<TAB>text<TAB>`) stays allowed. Until then "1<TAB>x" read as
    # an empty title.
    path = write(tmp_path / "p.tsv", "id\ttext\ttitle\n2\ty\t\n")
    assert [(p.id, p.text, p.title) for p in iter_passages(path)] == [("2", "y", "")]
    with pytest.raises(DataFormatError, match="line 2: 2 fields, the header has 3"):
        list(iter_passages(write(tmp_path / "q.tsv", "id\ttext\ttitle\n1\tx\n2\ty\t\n")))


def test_a_byte_order_mark_is_dropped_everywhere(tmp_path):
    bom = "\ufeff"
    qa = read_qa(write(tmp_path / "q.csv", bom + 'who wrote it?\t["x"]\n'))
    assert qa[0].question == "who wrote it?"
    assert [p.id for p in iter_passages(write(tmp_path / "p.tsv", bom + "id\ttext\ttitle\n7\thello\tT\n"))] == ["7"]
    for name, text in (("r.json", json.dumps([REC])), ("r.jsonl", json.dumps(REC) + "\n")):
        assert read_biencoder_records(write(tmp_path / name, bom + text))[0].question == "q?"
    gz = read_qa(write(tmp_path / "q.csv.gz", bom + 'who?\t["x"]\n', gz=True))
    assert gz[0].question == "who?"


def test_json_errors_read_well(tmp_path):
    with pytest.raises(DataFormatError, match=r"line 1: invalid JSON: Unterminated string starting at \(column 2\)"):
        read_biencoder_records(write(tmp_path / "bad.json", '["abc'))


@pytest.mark.parametrize("kind", ["passages", "qa", "biencoder"])
def test_broken_bytes_and_cut_gzip_give_one_line(tmp_path, kind):
    good = {"passages": "id\ttext\ttitle\n" + "".join(f"{i}\tsome text {i}\tT{i}\n" for i in range(1, 400)),
            "qa": "".join(f'question {i}?\t["a{i}"]\n' for i in range(400)),
            "biencoder": "\n".join(json.dumps(dict(REC, question=f"q{i}?")) for i in range(400)) + "\n"}[kind]
    name = {"passages": "p.tsv", "qa": "q.csv", "biencoder": "r.jsonl"}[kind]
    read = {"passages": lambda p: list(iter_passages(p)), "qa": read_qa, "biencoder": read_biencoder_records}[kind]
    data = good.encode("utf-8")
    for line_no in (1, 300):  # a bad byte near the start and far into the file: the right line
        at = sum(len(line) + 1 for line in good.split("\n")[: line_no - 1]) + 2
        path = tmp_path / f"bad{line_no}_{name}"
        path.write_bytes(data[:at] + b"\xff" + data[at + 1 :])
        with pytest.raises(DataFormatError, match=rf"line {line_no}: byte 3 of the line is not UTF-8"):
            read(str(path))
    cut = tmp_path / (name + ".gz")
    cut.write_bytes(gzip.compress(data)[:-40])
    with pytest.raises(DataFormatError, match="truncated or corrupt gzip"):
        read(str(cut))


def test_a_cut_last_line_or_a_short_row_is_an_error(tmp_path):
    ok = "id\ttext\ttitle\n1\tfirst text\tT1\n2\tan explicitly empty title\t\n"
    assert [p.title for p in iter_passages(write(tmp_path / "ok.tsv", ok))] == ["T1", ""]
    with pytest.raises(DataFormatError, match=r"line 4: the last line ends without a newline"):
        list(iter_passages(write(tmp_path / "cut.tsv", ok + "3\ttext\tTit")))  # cut inside the title
    with pytest.raises(DataFormatError, match=r"line 4: 2 fields, the header has 3"):
        list(iter_passages(write(tmp_path / "cut2.tsv", ok + "3\ttext cut mi")))  # cut inside the text
    with pytest.raises(DataFormatError, match=r"line 3: 2 fields, the header has 3"):
        list(iter_passages(write(tmp_path / "short.tsv", "id\ttext\ttitle\n1\ta\tA\n2\tb\n3\tc\tC\n")))
    gz = write(tmp_path / "cut.tsv.gz", ok + "3\ttext\tTit", gz=True)
    with pytest.raises(DataFormatError, match=r"line 4: the last line ends without a newline"):
        list(iter_passages(gz))
    # many rows, no titles at all: every row is checked and passes
    many = "id\ttext\ttitle\n" + "".join(f"{i}\ttext {i}\t\n" for i in range(2500))
    assert sum(len(ids) for ids, _, _ in iter_passage_chunks(write(tmp_path / "many.tsv", many), 1000)) == 2500


def test_a_repeated_id_names_both_lines_within_and_across_chunks(tmp_path):
    rows = "id\ttext\ttitle\n" + "".join(f"{i}\ttext {i}\tT\n" for i in range(1, 2500))
    for extra, chunk in (("17\tagain\tT\n", 100_000), ("17\tagain\tT\n", 1000)):  # same chunk; other chunks
        path = write(tmp_path / "dup.tsv", rows + extra)
        with pytest.raises(DataFormatError, match=r"line 2501: passage id '17' occurs twice, at lines 18 and 2501"):
            list(iter_passage_chunks(path, chunk))
    # a lone \r inside texts: the re-read that names the lines numbers rows as the reader does
    carriage = "id\ttext\ttitle\n" + "".join(f"{i}\ttext\r{i}\tT\n" for i in range(1, 2500))
    with pytest.raises(DataFormatError, match=r"line 2501: passage id '17' occurs twice, at lines 18 and 2501"):
        list(iter_passage_chunks(write(tmp_path / "cr.tsv", carriage + "17\tagain\tT\n"), 1000))
    path = write(tmp_path / "dup.tsv.gz", rows + "17\tagain\tT\n", gz=True)
    with pytest.raises(DataFormatError, match=r"at lines 18 and 2501"):
        list(iter_passage_chunks(path, 1000))


def test_a_stray_quote_is_named_by_line_and_never_swallows_rows(tmp_path):
    ok = "id\ttext\ttitle\n1\ta\tA\n"
    with pytest.raises(DataFormatError, match=r"line 3: a quoted field opens here and never closes"):
        list(iter_passages(write(tmp_path / "cut.tsv", ok + "2\t\"cut inside quotes")))
    swallow = ok + "2\t\"opens\tB\n3\tc\tC\n4\tclo\"ses\tD\n5\te\tE\n"  # rows 3-4 would vanish
    with pytest.raises(DataFormatError, match=r"line 3: field 'text' runs over several lines"):
        list(iter_passages(write(tmp_path / "swallow.tsv", swallow)))
    qa = "q1\t['a']\n\"q2\t['b']\nq3\t['c']\nq4\"\t['d']\nq5\t['e']\n"
    with pytest.raises(DataFormatError, match=r"line 2: a quoted field runs from here to line 4"):
        read_qa(write(tmp_path / "qa.csv", qa))


def test_crlf_and_a_lone_carriage_return(tmp_path):
    crlf = "id\ttext\ttitle\r\n1\ta\tA\r\n2\tb\t\r\n"
    got = [(p.id, p.text, p.title) for p in iter_passages(write(tmp_path / "crlf.tsv", crlf))]
    assert got == [("1", "a", "A"), ("2", "b", "")]
    lone = "id\ttext\ttitle\n1\tone\rtext\tA\n2\tb\tB\n"  # a \r inside a text does not end the row
    assert [p.text for p in iter_passages(write(tmp_path / "lone.tsv", lone))] == ["one\rtext", "b"]
