"""The one base class of every error whose message is meant for the user (cli.py prints it as one line)."""


class DprError(Exception):
    """An expected failure: bad input, a missing file, settings that cannot work; the message says what to do."""
