"""`option`: a dataclass field that carries its command-line help, so a spec's fields, defaults and
help live in the module that owns them and the commands (flags.py) make argparse flags from them."""
from __future__ import annotations

from dataclasses import field
from typing import Sequence


def option(default, help: str, aliases: Sequence[str] = (), **kw):
    """A dataclass field with `help`, extra flag spellings (`aliases`) and argparse keywords in its metadata."""
    return field(default=default, metadata={"help": help, "aliases": tuple(aliases), **kw})
