"""Relevance labels (qrels) and the gold-passage metrics computed from them by pytrec_eval.

Read formats, told apart line by line:
- TREC: `qid 0 pid rel` (four whitespace-separated fields);
- BEIR: `query-id<TAB>corpus-id<TAB>score`, with its header line;
- two columns: `qid<TAB>pid` (relevance 1).

`gold_metrics` reports what BEIR, MS MARCO and DuReader-retrieval report: MRR@10, nDCG@10, MAP and
Recall@{1,5,20,100}, by pytrec_eval (trec_eval's code, as BEIR uses it), never by hand. A run is
handed over with scores that follow our ranking (n, n-1, ...), because trec_eval orders tied scores
by document id, not by the order a retriever returned them in.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Sequence

from ..common.errors import DprError
from ..common.files import open_text
from ..data.readers import DataFormatError, _check_exists, _file_errors, check_id

METRIC_KEYS = ("mrr@10", "ndcg@10", "map", "recall@1", "recall@5", "recall@20", "recall@100")
_MEASURES = {"recip_rank", "ndcg_cut.10", "map", "recall.1,5,20,100"}


class QrelsError(DprError, ValueError):
    """Relevance labels that do not fit the questions or the corpus."""


class Qrels(dict):
    """{qid: {pid: relevance}}, with the line each qid and pid was first read on (for errors)."""

    def __init__(self, path: str):
        super().__init__()
        self.path, self.qid_line, self.pid_line, self._pair_line = path, {}, {}, {}

    def add(self, qid: str, pid: str, rel: int, lineno: int) -> None:
        """One judgement; a passage judged twice for one query is refused (which grade would count?)."""
        first = self._pair_line.setdefault((qid, pid), lineno)
        if first != lineno:
            raise DataFormatError(self.path, f"line {lineno}", f"passage {pid!r} is judged again for query {qid!r} "
                                  f"(first at line {first}, relevance {self[qid][pid]}); give each pair once")
        self.setdefault(qid, {})[pid] = rel
        self.qid_line.setdefault(qid, lineno)
        self.pid_line.setdefault(pid, lineno)

    def with_relevant(self, qids: Sequence[str]) -> list:
        """The positions of `qids` with at least one passage judged relevant (> 0): the others have no
        right answer to rank, so MRR, nDCG, MAP and recall are not defined for them."""
        return [i for i, q in enumerate(qids) if any(rel > 0 for rel in self.get(q, {}).values())]


def _parse(path: str, lineno: int, line: str):
    """(qid, pid, relevance) of one line, or None for BEIR's header."""
    fields = line.split("\t") if "\t" in line else line.split()
    if len(fields) == 3 and lineno == 1 and fields[2].strip().lower() in ("score", "relevance", "rel", "label"):
        return None  # query-id corpus-id score
    if len(fields) == 4:
        qid, _, pid, rel = fields
    elif len(fields) == 3:
        qid, pid, rel = fields
    elif len(fields) == 2:
        (qid, pid), rel = fields, "1"
    else:
        raise DataFormatError(path, f"line {lineno}", f"{len(fields)} fields; qrels are 'qid 0 pid rel' (TREC), "
                              "'query-id<TAB>corpus-id<TAB>score' (BEIR) or 'qid<TAB>pid'")
    try:
        value = float(rel)
    except ValueError:
        raise DataFormatError(path, f"line {lineno}", f"relevance {rel.strip()!r} is not a number") from None
    if not math.isfinite(value) or value != int(value):  # trec_eval's grades are integers; 0.5 would become 0
        raise DataFormatError(path, f"line {lineno}", f"relevance {rel.strip()!r} is not a whole number (relevance "
                              "grades are integers: 0 not relevant, 1, 2, ... relevant)")
    if not qid.strip() or not pid.strip():
        raise DataFormatError(path, f"line {lineno}", "empty query or passage id")
    return (check_id(path, f"line {lineno}", "query id", qid.strip()),
            check_id(path, f"line {lineno}", "passage id", pid.strip()), int(value))


def read_qrels(path: str) -> Qrels:
    """Read a qrels file in any of the three formats (module doc)."""
    _check_exists(path)
    qrels = Qrels(path)
    layout = None  # (fields, line) of BEIR's header or the first judgement: one file, one format
    with _file_errors(path), open_text(path) as f:
        raw = ""
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip("\r\n")
            if not line.strip():
                continue
            fields = len(line.split("\t") if "\t" in line else line.split())
            layout = layout or (fields, lineno)
            if fields != layout[0]:  # a line cut in two would otherwise read as two 2-field judgements
                raise DataFormatError(path, f"line {lineno}", f"{fields} fields, where line {layout[1]} has "
                                      f"{layout[0]}: one qrels file holds one format")
            parsed = _parse(path, lineno, line)
            if parsed:
                qrels.add(*parsed, lineno)
        if raw and not raw.endswith("\n"):  # as every line-based reader here: a cut file is not read as whole
            raise DataFormatError(path, f"line {lineno}", "the last line ends without a newline: the file looks cut "
                                  "short (an interrupted download or copy?)")
    if not qrels:
        raise DataFormatError(path, "line 1", "no relevance judgements (file is empty)")
    return qrels


def check_qrels(qrels: Qrels, qids: Sequence[str], qa_file: str, corpus_ids) -> None:
    """Every question must have a judgement, and every judgement must name a known question and a
    passage of the corpus (`corpus_ids`: a set, or None to skip that check)."""
    known = set(qids)
    for qid, line in qrels.qid_line.items():
        if qid not in known:
            raise QrelsError(f"{qrels.path}: line {line}: question {qid!r} is not in {qa_file} (DPR's qa.csv is keyed "
                             "by line order, 1..N; BEIR and MS MARCO queries by their own ids)")
    missing = [q for q in qids if q not in qrels]
    if missing:
        raise QrelsError(f"{qa_file}: question {missing[0]!r} has no judgement in {qrels.path} ({len(missing)} "
                         "of the questions have none); give a qrels file that covers every question")
    if corpus_ids is not None:
        for pid, line in qrels.pid_line.items():
            if pid not in corpus_ids:
                raise QrelsError(f"{qrels.path}: line {line}: passage {pid!r} is not in the corpus: are these the "
                                 "qrels of another corpus?")


def gold_metrics(qrels: Qrels, qids: Sequence[str], ids: Iterable[Sequence[str]]) -> Dict[str, float]:
    """MRR@10, nDCG@10, MAP and Recall@{1,5,20,100} of ranked passage ids, averaged over questions."""
    import pytrec_eval

    run, top10 = {}, {}
    for qid, row in zip(qids, ids):
        n = len(row)
        run[qid] = {pid: float(n - r) for r, pid in enumerate(row)}
        top10[qid] = {pid: float(n - r) for r, pid in enumerate(row[:10])}
    judged = {q: qrels[q] for q in run}
    per_query = pytrec_eval.RelevanceEvaluator(judged, _MEASURES).evaluate(run)
    mrr = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(top10)
    names = {"ndcg@10": "ndcg_cut_10", "map": "map", "recall@1": "recall_1", "recall@5": "recall_5",
             "recall@20": "recall_20", "recall@100": "recall_100"}
    out = {"mrr@10": sum(m["recip_rank"] for m in mrr.values()) / len(mrr)}
    for key, name in names.items():
        out[key] = sum(m[name] for m in per_query.values()) / len(per_query)
    return {k: out[k] for k in METRIC_KEYS}


def format_gold_table(rows: Dict[str, Dict[str, float]]) -> str:
    """A markdown table of gold-passage metrics, one row per system."""
    head = "| system | " + " | ".join(k.replace("mrr", "MRR").replace("ndcg", "nDCG").replace("map", "MAP")
                                      .replace("recall", "R") for k in METRIC_KEYS) + " |"
    lines = [head, "|---|" + "---|" * len(METRIC_KEYS)]
    for name, m in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k in METRIC_KEYS) + " |")
    return "\n".join(lines)
