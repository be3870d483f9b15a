"""What a user can see in a piece of text: the one rule for "nothing to search" (the API, HTTP, the
commands, the readers of questions and the page's own check all ask `searchable`) and for ids that
must stay on one line (`id_problem`, asked by every reader that reads an id)."""
from __future__ import annotations

import unicodedata
from typing import Optional

# Unicode's Default_Ignorable_Code_Point ranges (DerivedCoreProperties.txt): characters a renderer shows
# as nothing (zero-width spaces and joiners, bidi controls, variation selectors, fillers), plus U+2800,
# the blank Braille pattern, which is a symbol that draws nothing.
_IGNORABLE = ((0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
              (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x2800, 0x2800),
              (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8),
              (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF))


def invisible(ch: str) -> bool:
    """Whether the character `ch` shows nothing: white space, a control or format character, an
    unassigned or private-use code point, a surrogate, or a default-ignorable one."""
    if ch.isspace() or unicodedata.category(ch)[0] in "CZ":
        return True
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _IGNORABLE)


def searchable(text: str) -> bool:
    """Whether `text` holds something a user could have meant to search: at least one visible letter,
    digit, mark, punctuation or symbol (a question of spaces and zero-width characters is not)."""
    return any(not invisible(ch) for ch in text)


NOTHING_TO_SEARCH = "has nothing to search (it is empty, or only spaces and invisible characters)"


def id_problem(value: str) -> Optional[str]:
    """What makes `value` unusable as a passage or query id, or None. Ids are written one a line (ids.txt)
    and as one whitespace-separated field (TREC runs and qrels), so they hold no white space and no
    control or format character."""
    if not value:
        return "is empty"
    for ch in value:
        if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Zs"):
            return (f"holds {unicodedata.name(ch, 'the control character')} (U+{ord(ch):04X}); ids are written one a "
                    "line and as one field of TREC files, so they hold no white space or control character")
    return None
