"""Logging set-up shared by the two programs: one line per record on the console, tracebacks only in
the log file under KIMCHI_HOME/logs."""
from __future__ import annotations

import logging
import sys
from pathlib import Path


class OneLine(logging.Formatter):
    """A console formatter that leaves tracebacks out: they belong in the log file."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def setup_logging(log_file: Path | None, console_level: int = logging.WARNING,
                  quiet: tuple[str, ...] = ("PIL", "matplotlib", "fastai", "fastprogress", "httpx", "httpcore")) -> None:
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    for handler in list(root.handlers):
        if getattr(handler, "_kimchi", False):  # ours from an earlier call; leave others' (pytest's) alone
            root.removeHandler(handler)
            handler.close()
    console = logging.StreamHandler(sys.stderr)
    console._kimchi = True  # type: ignore[attr-defined]
    console.setLevel(console_level)
    console.setFormatter(OneLine("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root.addHandler(console)
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(log_file, encoding="utf-8")
            handler._kimchi = True  # type: ignore[attr-defined]
            handler.setLevel(min(logging.INFO, console_level))
            handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
            root.addHandler(handler)
        except OSError:
            pass  # an unwritable home is reported by the command that needs it
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
