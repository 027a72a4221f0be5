"""The demo's terminal: progress bars and the summary on screen, everything else in log files.

The handler's Powertools JSON lines, its EMF metric blobs, moto's warnings and the Spark job's
output would otherwise interleave with the progress bars. This process's Python output goes to
`handler.log`; file descriptors 1 and 2, which `spark-submit` inherits, go to `spark.log` (Spark's
log4j writes to standard output, see `spark_conf_dir`; the job's stderr reaches the launcher,
which quotes its tail when a step fails).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

LOGS_DIR = "logs"
HANDLER_LOG = "handler.log"
SPARK_LOG = "spark.log"


@dataclass(frozen=True)
class Console:
    """Where the demo writes what a person reads, and where the logs went (None: shown live)."""

    screen: TextIO
    logs: Path | None


@contextmanager
def quiet_logs(directory: Path, verbose: bool) -> Iterator[Console]:
    """Send logs to `directory` for the block (unless `verbose`); yield the screen to write to."""
    if verbose:
        yield Console(sys.stderr, None)
        return
    directory.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds = os.dup(1), os.dup(2)
    screen = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8")
    python_streams = sys.stdout, sys.stderr
    with (directory / SPARK_LOG).open("ab") as spark_log, \
            (directory / HANDLER_LOG).open("a", buffering=1, encoding="utf-8") as handler_log:
        os.dup2(spark_log.fileno(), 1)
        os.dup2(spark_log.fileno(), 2)
        sys.stdout = sys.stderr = handler_log
        try:
            yield Console(screen, directory)
        finally:
            sys.stdout, sys.stderr = python_streams
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            for fd in saved_fds:
                os.close(fd)
            screen.close()


SPARK_LOG4J = """\
rootLogger.level = info
rootLogger.appenderRef.stdout.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_OUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n
logger.jetty.name = org.sparkproject.jetty
logger.jetty.level = warn
"""
