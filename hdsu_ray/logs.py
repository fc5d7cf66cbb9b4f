"""Logging and stage timings.

Every module logs to its own ``logging.getLogger(__name__)``. :func:`configure` sends the package's
records to standard output as bare lines: the driver's terminal, ``ray job logs`` and the Ray
dashboard's log view all read stdout, and Ray forwards a worker's stdout to the driver. The CLI
calls it, and so does every Ray task or worker entry point (a fresh process has no handler).
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager

from hdsu_ray import telemetry

PACKAGE = "hdsu_ray"


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time of the record (pytest and notebooks swap it)."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property wins
        pass


def configure(level: int = logging.INFO) -> None:
    """Print ``hdsu_ray.*`` records as plain lines on stdout (idempotent)."""
    logger = logging.getLogger(PACKAGE)
    logger.setLevel(level)
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.propagate = False  # pytest's and Ray's root handlers would print every line twice


class Timings(dict):
    """``{stage: seconds}``; :meth:`stage` logs a stage's start and end lines and, given the
    ``workflow`` (study) name, exports the stage as a Ray metric (:mod:`hdsu_ray.telemetry`)."""

    def __init__(self, workflow: str | None = None):
        super().__init__()
        self.workflow = workflow  # an attribute, not a key: dict(t) stays {stage: seconds}

    @contextmanager
    def stage(self, name: str, logger: logging.Logger | None = None):
        log = logger or logging.getLogger(PACKAGE)
        log.info("== stage %s", name)
        telemetry.stage_started(self.workflow or "", name)
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            telemetry.stage_finished(self.workflow or "", name)  # a failed stage is not running either
            raise
        self[name] = round(time.perf_counter() - start, 2)
        telemetry.stage_finished(self.workflow or "", name, self[name])
        log.info("== stage %s done in %.1fs", name, self[name])
