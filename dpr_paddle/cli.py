"""What the three CLIs share: logging setup and turning expected errors into one clear line."""
from __future__ import annotations

import sys
import warnings

from .utils import setup_logging


def expected_errors() -> tuple:
    """Error types whose message is meant for the user: printed as one line, no traceback."""
    from .errors import DprError

    return (DprError, FileNotFoundError)


def run_main(body) -> None:
    """Run a CLI body; an expected error exits with status 2 and `error: <message>`."""
    setup_logging()
    # Paddle warns about a missing ccache and setuptools on import; neither concerns a user.
    warnings.filterwarnings("ignore", message="No ccache found")
    warnings.filterwarnings("ignore", message="Setuptools is replacing distutils")
    # PaddleNLP says this about every truncated (title, text) pair; truncation is what we asked for.
    warnings.filterwarnings("ignore", message="Be aware, overflowing tokens are not returned")
    try:
        from paddlenlp.utils.log import logger as paddlenlp_logger

        paddlenlp_logger.set_level("WARNING")  # its INFO lines (weights saved/loaded) drown ours
    except ImportError:
        pass
    try:
        body()
    except Exception as e:  # noqa: BLE001 - filtered just below
        if isinstance(e, expected_errors()):
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
