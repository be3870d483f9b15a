"""What every command shares: process set-up (logging, CPU defaults, quiet imports) and turning
expected errors into one clear line."""
from __future__ import annotations

import sys

from .common.runtime import prepare_process, quiet_paddlenlp, quiet_warnings, setup_logging


def expected_errors() -> tuple:
    """Error types whose message is meant for the user: printed as one line, no traceback."""
    from .common.errors import DprError

    return (DprError, OSError)


def one_line(e: BaseException) -> str:
    """The message of an expected error; an OSError names its path and what to do."""
    if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and e.filename:
        hint = {28: "free some space or write elsewhere", 13: "fix the permissions or write elsewhere",
                30: "the file system is read-only: write elsewhere", 20: "a parent of this path is a file"}
        return f"{e.filename}: {e.strerror or e}; {hint.get(e.errno, 'check the path')}"
    return str(e)


def run_main(body, needs_paddle: bool = True, threads=None) -> None:
    """Run a command's body; an expected error exits with status 2 and `error: <message>`. `threads`:
    OpenMP threads when the user set none (default one per core)."""
    setup_logging()
    quiet_warnings()
    try:
        prepare_process(needs_paddle, threads)  # CPU defaults before paddle's first import, where the user set none
        if needs_paddle:
            quiet_paddlenlp()
        body()
    except Exception as e:  # noqa: BLE001 - filtered just below
        if isinstance(e, expected_errors()):
            print(f"error: {one_line(e)}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
