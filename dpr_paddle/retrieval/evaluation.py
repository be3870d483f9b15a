"""Answer matching for every script, and top-k retrieval accuracy (no paddle import).

`has_answer(answers, text, match)`, with `match`:
- `string` follows DPR (`dpr/data/qa_validation.py`): text and answers are NFD-normalised, split
  by the SimpleTokenizer regex (runs of letters/digits/marks, or any single non-space character),
  lower-cased, and an answer matches when its token sequence occurs contiguously in the passage's
  token sequence. A run of CJK characters is one token there, so a Chinese answer inside a longer
  clause never matches (DRCD: 0.147 top-1 for a run that is right 94 % of the time).
- `char` is the per-character view of Chinese reading-comprehension scorers (CMRC 2018): text and
  answer are NFKC-normalised (full-width letters and digits become ASCII), lower-cased and stripped
  of whitespace, and the answer matches when its characters occur contiguously in the passage.
- `auto` (the default) decides per answer: one that holds a CJK character (Han, kana, Hangul) is
  matched by `char`, any other exactly as `string` (so English results are DPR's, hit for hit).
  `364.6公里` is matched by characters, `ω-force` by DPR's tokens.
- In text that holds Han characters, `auto` matches an answer without CJK after splitting every Han
  character off as a token of its own, as BERT's basic tokenizer does (`split_han`), and with NFKC
  on both sides as the per-character path has: DPR's tokenizer glues CJK letters to Latin letters
  and digits, so "L2" was never found in "编号L2，为", nor "2010" in "成立於２０１０年". Text
  without Han characters is tokenized exactly as DPR does, and `string` is DPR's everywhere.
- `regex` (CuratedTREC) compiles the answer as a case-insensitive regular expression; an invalid
  pattern matches nothing.

One deliberate difference: an answer with no tokens (empty or whitespace) never matches.
DPR's loop compares an empty list against every empty slice and so counts it as a hit.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Dict, Iterable, List, Sequence

import regex

# DPR's SimpleTokenizer: ALPHA_NUM | NON_WS.
_TOKEN_RE = regex.compile(
    r"([\p{L}\p{N}\p{M}]+)|([^\p{Z}\p{C}])",
    flags=regex.IGNORECASE | regex.UNICODE | regex.MULTILINE,
)

DEFAULT_TOP_K = (1, 5, 20, 50, 100)
MATCHES = ("auto", "string", "regex", "char")
_CJK = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]")
_SPACE = regex.compile(r"\s+")


def normalize(text: str) -> str:
    """NFD-normalise `text` as DPR does before matching."""
    return unicodedata.normalize("NFD", text)


def tokenize_words(text: str) -> List[str]:
    """Lower-cased SimpleTokenizer tokens of `text` (already normalised)."""
    return [m.group().lower() for m in _TOKEN_RE.finditer(text)]


def _regex_match(text: str, pattern: str) -> bool:
    try:
        compiled = re.compile(pattern, flags=re.IGNORECASE | re.UNICODE | re.MULTILINE)
    except re.error:
        return False  # DPR: an answer that is not a valid regex matches nothing
    return compiled.search(text) is not None


def char_normalize(text: str) -> str:
    """NFKC, lower-cased, without whitespace: what `char` matching compares."""
    return _SPACE.sub("", unicodedata.normalize("NFKC", text).lower())


_HAN = regex.compile(r"\p{Han}")


def split_han(text: str) -> str:
    """`text` with a space on each side of every Han character, as BERT's basic tokenizer does before it
    splits words: in Chinese text, DPR's letter runs would glue "编号L2" into one token, so the answer
    "L2" inside it would never match. Text without Han characters is returned as it is (English
    matches exactly as DPR)."""
    return _HAN.sub(r" \g<0> ", text) if _HAN.search(text) else text


def _string_match(answer: str, words: List[str], cjk_text: bool = False) -> bool:
    ans = tokenize_words(normalize(unicodedata.normalize("NFKC", answer) if cjk_text else answer))
    if not ans:
        return False
    n, first = len(ans), ans[0]
    return any(words[i] == first and words[i : i + n] == ans for i in range(len(words) - n + 1))


def has_answer(answers: Sequence[str], text: str, match: str = "auto") -> bool:
    """True if any of `answers` occurs in `text` under `match` (auto | string | regex | char; module doc)."""
    if match not in MATCHES:
        raise ValueError(f"match must be one of {', '.join(MATCHES)}, not {match!r}")
    if text is None:
        return False
    if match == "regex":
        text = normalize(text)
        return any(_regex_match(text, normalize(a)) for a in answers)
    by_char = [a for a in answers if match == "char" or (match == "auto" and _CJK.search(a))]
    if by_char:
        flat = char_normalize(text)
        if any(a and a in flat for a in map(char_normalize, by_char)):
            return True
    rest = [a for a in answers if a not in by_char]
    if not rest:
        return False
    # `auto` in text with Han: Han split off, and NFKC on both sides (full-width "２０１０" is "2010", as the
    # per-character path reads it); `string`, and any text without Han, stay DPR's, token for token
    cjk_text = match == "auto" and _HAN.search(text) is not None
    text = normalize(split_han(unicodedata.normalize("NFKC", text)) if cjk_text else text)
    return any(_string_match(a, tokenize_words(text), cjk_text) for a in rest)


def top_k_accuracy(hits: Iterable[Sequence[bool]], ks: Sequence[int] = DEFAULT_TOP_K) -> Dict[int, float]:
    """Fraction of questions with an answer among their first k passages, for each k.

    `hits[i][j]` says whether the j-th retrieved passage of question i has the answer. A
    question with fewer than k passages counts as a miss beyond what it has (DPR's rule).
    """
    hits = [list(h) for h in hits]
    if not hits:
        raise ValueError("top_k_accuracy: no questions")
    out = {}
    for k in ks:
        found = sum(1 for h in hits if any(h[:k]))
        out[int(k)] = found / len(hits)
    return out


def format_top_k_table(rows: Dict[str, Dict[int, float]], ks: Sequence[int] = DEFAULT_TOP_K) -> str:
    """A markdown table with one row per system and one column per k."""
    head = "| system | " + " | ".join(f"top-{k}" for k in ks) + " |"
    sep = "|---|" + "---|" * len(ks)
    lines = [head, sep]
    for name, acc in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{acc.get(k, float('nan')):.3f}" for k in ks) + " |")
    return "\n".join(lines)
