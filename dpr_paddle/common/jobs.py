"""Resumable jobs: a work directory `OUTPUT.partial/` whose `job.json` says what is being made.

Encoding (a shard's blocks) and mining (batches of records) write finished pieces into it
atomically; a re-run of the same job keeps them and does only what is missing, and a directory
left by another job (other inputs or settings) is cleared first, so pieces of two jobs never mix.
"""
from __future__ import annotations

import json
import logging
import os
import shutil

from .files import write_json_atomic

logger = logging.getLogger(__name__)

JOB_FILE = "job.json"


def _read_job(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):  # missing, empty or cut: not this job
        return None


def open_job_dir(partial: str, job: dict, fresh: bool = False) -> str:
    """Make `partial` the work directory of `job` and return it: one that holds another job's pieces
    (or any pieces, with `fresh`) is removed first; a new one gets job.json."""
    if os.path.isdir(partial) and (fresh or _read_job(os.path.join(partial, JOB_FILE)) != job):
        logger.info("%s belongs to another job; starting it over", partial)
        shutil.rmtree(partial)
    if not os.path.isdir(partial):
        os.makedirs(partial)
        write_json_atomic(os.path.join(partial, JOB_FILE), job)
    return partial
