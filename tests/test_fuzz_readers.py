"""Fuzzing the readers: valid small files are cut, have bytes flipped, or get tabs, quotes and
newlines inserted (also inside gzip). Each mutated file must parse to as many rows as the original
or raise our one-line DataFormatError; nothing else may come out. Seeded, so a failure replays."""
import gzip
import json
import os
import random

import pytest

from dpr_paddle.data import DataFormatError, iter_passage_chunks, read_biencoder_records, read_qa

PASSAGES = ("id\ttext\ttitle\n"
            "1\tAaron is a prophet in the Hebrew Bible.\tAaron\n"
            "2\t\"He said \"\"hello\"\" twice\"\tQuotes\n"
            "3\tA passage without a title.\t\n"
            "4\tLa Niña and café, in UTF-8.\tÉté\n"
            "5\tThe last passage, complete.\tEnd\n")
QA = ("who was aaron\t[\"a prophet\"]\n"
      "what did he say twice\t['hello', \"hi\"]\n"
      "what is la niña\t[\"a climate pattern\"]\n")
RECORD = {"question": "who was aaron", "answers": ["a prophet"],
          "positive_ctxs": [{"title": "Aaron", "text": "Aaron is a prophet.", "passage_id": "1"}],
          "hard_negative_ctxs": [{"title": "Moses", "text": "Moses led them."}]}
RECORDS = [RECORD, {**RECORD, "question": "who is moses"}, {**RECORD, "question": "café?"}]


CORPUS = "".join(json.dumps({"_id": str(i), "title": t, "text": x}, ensure_ascii=False) + "\n" for i, (t, x) in
                 enumerate([("Aaron", "Aaron is a prophet."), ("", "No title \"quoted\"."), ("Été", "café, in UTF-8.")]))
QUERIES = "".join(json.dumps({"_id": f"q{i}", "text": x}, ensure_ascii=False) + "\n" for i, x in
                  enumerate(["who was aaron", "what is la niña", "café?"]))
COLLECTION = "1\tAaron is a prophet.\n2\tHe said \"hello\" twice\n3\tLa Niña and café\n"
QUERIES_TSV = "11\twho was aaron\n12\twhat did he say\n13\tla niña?\n"
QRELS_TREC = "1 0 d1 1\n1 0 d2 0\n2 0 d3 2\n3 0 d1 1\n"
QRELS_BEIR = "query-id\tcorpus-id\tscore\n1\td1\t1\n1\td2\t0\n2\td3\t2\n3\td1\t1\n"


def count_passages(path):
    return sum(len(ids) for ids, _, _ in iter_passage_chunks(path, chunksize=2))  # several chunks


def count_judgements(path):
    from dpr_paddle.retrieval.qrels import read_qrels

    return sum(len(v) for v in read_qrels(path).values())


READERS = {
    "passages.tsv": (PASSAGES, count_passages),
    "qa.csv": (QA, lambda p: len(read_qa(p))),
    "train.json": (json.dumps(RECORDS, indent=1, ensure_ascii=False), lambda p: len(read_biencoder_records(p))),
    "train.jsonl": ("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS),
                    lambda p: len(read_biencoder_records(p))),
    # BEIR and MS MARCO layouts, and relevance labels (round four): ids stay single-line, one format a file
    "corpus.jsonl": (CORPUS, count_passages),
    "queries.jsonl": (QUERIES, lambda p: len(read_qa(p))),
    "collection.tsv": (COLLECTION, count_passages),
    "queries.tsv": (QUERIES_TSV, lambda p: len(read_qa(p))),
    "qrels.txt": (QRELS_TREC, count_judgements),
    "qrels.tsv": (QRELS_BEIR, count_judgements),
}
INSERTS = [b"\t", b"\"", b"\n", b"\r\n", b"\xff", b"\xc3", b"\x00", b"{", b"]", b"\\"]


def mutate(data: bytes, rng: random.Random, gz: bool):
    """One random mutation of `data`; None when the result is itself a valid file (a plain file cut
    exactly at a line end is just a shorter file)."""
    kind = rng.choice(["cut", "flip", "insert"])
    if kind == "cut":
        at = rng.randrange(1, len(data))
        out = data[:at]
        if not gz and (out.endswith(b"\n") or data[at : at + 1] == b"\n"):
            return None  # cut at a line end: a valid shorter file
        return out
    at = rng.randrange(len(data))
    piece = rng.choice(INSERTS) if not gz else bytes([rng.randrange(256)])
    if kind == "flip":
        return data[:at] + piece[:1] + data[at + 1 :]
    return data[:at] + piece + data[at:]


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("name", sorted(READERS))
def test_mutated_files_parse_the_same_or_fail_in_one_line(tmp_path, name, gz):
    text, read = READERS[name]
    raw = text.encode("utf-8")
    path = tmp_path / (name + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
    expected = read(str(path))
    assert expected >= 3
    data = path.read_bytes()
    rng = random.Random(f"{name}-{gz}-{os.environ.get('FUZZ_SEED', '')}")
    cases = errors = 0
    while cases < int(os.environ.get("FUZZ_CASES", 150)):  # FUZZ_CASES=5000 for a longer hunt
        mutated = mutate(data, rng, gz)
        if mutated is None or mutated == data:
            continue
        cases += 1
        path.write_bytes(mutated)
        try:
            got = read(str(path))
        except DataFormatError as e:
            errors += 1
            assert "\n" not in str(e) and str(e).startswith(str(path)), str(e)
            continue
        except Exception as e:  # anything else is a bug: say which mutation found it
            pytest.fail(f"{name} case {cases}: {type(e).__name__}: {e}\n{mutated!r}")
        assert got == expected, f"{name} case {cases}: {got} rows instead of {expected}, no error\n{mutated!r}"
    assert errors > 30  # the mutations do break files; the test is not vacuous
