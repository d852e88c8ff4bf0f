"""Logging set-up shared by the two programs: one line per record on the console, tracebacks only in
the log file under KIMCHI_HOME/logs."""
from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path
from typing import Sequence

LOG_FILE_BYTES = 10 * 1024 * 1024  # rotate at 10 MB, keeping five old files: at most 60 MB of logs
LOG_FILE_BACKUPS = 5


class OneLine(logging.Formatter):
    """A console formatter that leaves tracebacks out: they belong in the log file."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


class Redacting(logging.Formatter):
    """Wraps a formatter so that secrets never reach the output, tracebacks included (httpx errors and
    PTB's carry request URLs, which hold the bot token)."""

    def __init__(self, inner: logging.Formatter, secrets: Sequence[str]) -> None:
        super().__init__()
        self.inner, self.secrets = inner, [s for s in secrets if s]

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record)
        for secret in self.secrets:
            text = text.replace(secret, "<redacted>")
        return text


def setup_logging(log_file: Path | None, console_level: int = logging.WARNING,
                  quiet: tuple[str, ...] = ("PIL", "matplotlib", "fastai", "fastprogress", "httpx", "httpcore",
                                            "aiohttp"),
                  secrets: Sequence[str] = ()) -> None:
    """One-line records on the console; the file rotates by size; `secrets` are replaced everywhere."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    for handler in list(root.handlers):
        if getattr(handler, "_kimchi", False):  # ours from an earlier call; leave others' (pytest's) alone
            root.removeHandler(handler)
            handler.close()
    console = logging.StreamHandler(sys.stderr)
    console._kimchi = True  # type: ignore[attr-defined]
    console.setLevel(console_level)
    console.setFormatter(Redacting(OneLine("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"), secrets))
    root.addHandler(console)
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.handlers.RotatingFileHandler(log_file, maxBytes=LOG_FILE_BYTES,
                                                           backupCount=LOG_FILE_BACKUPS, encoding="utf-8")
            handler._kimchi = True  # type: ignore[attr-defined]
            handler.setLevel(min(logging.INFO, console_level))
            handler.setFormatter(Redacting(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"),
                                           secrets))
            root.addHandler(handler)
        except OSError:
            pass  # an unwritable home is reported by the command that needs it
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
