"""DPR's answer matching and top-k retrieval accuracy (no paddle import).

`has_answer` follows DPR (`dpr/data/qa_validation.py`): text and answers are NFD-normalised,
split by the SimpleTokenizer regex (runs of letters/digits/marks, or any single
non-space character), lower-cased, and an answer matches when its token sequence occurs
contiguously in the passage's token sequence. `match="regex"` (CuratedTREC) compiles the
answer as a case-insensitive regular expression; an invalid pattern matches nothing.

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


def has_answer(answers: Sequence[str], text: str, match: str = "string") -> bool:
    """True if any of `answers` occurs in `text` under DPR's `string` or `regex` matching."""
    if text is None:
        return False
    text = normalize(text)
    if match == "regex":
        return any(_regex_match(text, normalize(a)) for a in answers)
    if match != "string":
        raise ValueError(f"match must be 'string' or 'regex', not {match!r}")
    words = tokenize_words(text)
    for answer in answers:
        ans = tokenize_words(normalize(answer))
        if not ans:
            continue
        n = len(ans)
        first = ans[0]
        for i in range(len(words) - n + 1):
            if words[i] == first and words[i : i + n] == ans:
                return True
    return False


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
