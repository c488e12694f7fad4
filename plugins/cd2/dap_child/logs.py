"""Logging of the child process: plain lines on stderr, which the hook relays into the task log."""

from __future__ import annotations

import logging
import sys


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s", force=True
    )
    # Its INFO level is every DDL statement, comments included: too much for a task log.
    logging.getLogger("pysqlsync").setLevel(logging.WARNING)
