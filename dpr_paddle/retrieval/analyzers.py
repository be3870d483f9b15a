"""BM25 analyzers: how a passage or a question becomes terms, per language.

- `en`: lower-cased runs of two or more word characters (`\\b\\w\\w+\\b`), English stopwords removed,
  no stemming: bm25s' default and DPR's/pyserini's English baseline. Python's `\\w` matches CJK
  characters too, so on Chinese a whole clause becomes one term and BM25 finds almost nothing
  (DRCD: top-1 0.011).
- `cjk`: Lucene's CJKAnalyzer idea. Text is NFKC-normalised (full-width letters and digits become
  ASCII) and lower-cased; each run of CJK characters (Han, kana, Hangul) gives its overlapping
  character bigrams, a run of one character gives that character; the rest goes through `en`.
- `cjk+uni`: `cjk` plus every CJK character as a unigram term.
- `zh`: Chinese words by jieba (search mode: long words also give their dictionary sub-words);
  Latin runs inside the text go through `en`.
- `auto`: reads a sample of the corpus (its first 2,000 passages); when at least 20 % of its letters
  are CJK it picks the analyzer measured best on Chinese (`AUTO_CJK`, docs/benchmarks.md §8),
  else `en`.

Questions go through the analyzer the index was built with (it is recorded in its meta.json).
"""
from __future__ import annotations

import logging
import re
import threading
import unicodedata
from typing import Callable, Iterable, List

from ..common.errors import DprError

ANALYZERS = ("auto", "en", "cjk", "cjk+uni", "zh")
AUTO_CJK = "cjk+uni"  # best on DRCD dev against 2,000 paragraphs: docs/benchmarks.md section 8
AUTO_SAMPLE = 2000
AUTO_CJK_SHARE = 0.2

# Han (with extension A and the compatibility block), kana, Hangul syllables and jamo; extensions
# B-F of Han lie past the BMP.
_CJK_CLASS = ("\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
              "\U00020000-\U0002ebef")
CJK_RUN = re.compile(f"[{_CJK_CLASS}]+")
_EN_TERM = re.compile(r"(?u)\b\w\w+\b")


class AnalyzerError(DprError, ValueError):
    """An unknown analyzer name."""


def en_terms(text: str) -> List[str]:
    """bm25s' default split: runs of two or more word characters (the text is already lower-cased)."""
    return _EN_TERM.findall(text)


def _split_runs(text: str):
    """(is_cjk, piece) in order: CJK runs and the text between them."""
    pos = 0
    for m in CJK_RUN.finditer(text):
        if m.start() > pos:
            yield False, text[pos : m.start()]
        yield True, m.group()
        pos = m.end()
    if pos < len(text):
        yield False, text[pos:]


def cjk_terms(text: str, unigrams: bool = False) -> List[str]:
    """Overlapping CJK bigrams (a lone character as itself; with `unigrams` every character too),
    and `en` terms for what lies between CJK runs."""
    out = []
    for is_cjk, piece in _split_runs(unicodedata.normalize("NFKC", text).lower()):
        if not is_cjk:
            out += en_terms(piece)
            continue
        out += [piece] if len(piece) == 1 else [piece[i : i + 2] for i in range(len(piece) - 1)]
        if unigrams and len(piece) > 1:
            out += list(piece)
    return out


def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)  # its dictionary-loading lines say nothing a user can act on
    return jieba


_JIEBA_LOCK = threading.Lock()


def zh_terms(text: str) -> List[str]:
    """jieba's search-mode words of the CJK runs, `en` terms for the rest. One thread cuts at a time: jieba is not
    thread-safe (two threads cutting at once gave some texts another's words), and it holds the GIL anyway."""
    out = []
    jieba = _jieba()
    with _JIEBA_LOCK:
        for is_cjk, piece in _split_runs(unicodedata.normalize("NFKC", text).lower()):
            out += [w for w in jieba.cut_for_search(piece) if w.strip()] if is_cjk else en_terms(piece)
    return out


def splitter(name: str) -> Callable[[str], List[str]]:
    """The text -> terms function of a resolved analyzer (not `auto`)."""
    if name == "en":
        return en_terms
    if name == "cjk":
        return cjk_terms
    if name == "cjk+uni":
        return lambda text: cjk_terms(text, unigrams=True)
    if name == "zh":
        return zh_terms
    raise AnalyzerError(f"--bm25_analyzer {name!r}: one of {', '.join(ANALYZERS)}")


def check_name(name: str) -> str:
    """`name` if it is an analyzer, else one line naming the choices."""
    if name not in ANALYZERS:
        raise AnalyzerError(f"--bm25_analyzer {name!r}: one of {', '.join(ANALYZERS)}")
    return name


def cjk_share(texts: Iterable[str]) -> float:
    """The fraction of letters in `texts` that are CJK."""
    cjk = letters = 0
    for text in texts:
        cjk += sum(len(m) for m in CJK_RUN.findall(text))
        letters += sum(1 for ch in text if ch.isalpha())
    return cjk / letters if letters else 0.0


def resolve(name: str, sample: Iterable[str]) -> str:
    """`name`, or for `auto` the analyzer that the sample's script calls for."""
    check_name(name)
    if name != "auto":
        return name
    return AUTO_CJK if cjk_share(sample) >= AUTO_CJK_SHARE else "en"
