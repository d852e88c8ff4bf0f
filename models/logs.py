"""Logging set-up shared by the two programs: one line per record on the console, tracebacks only in
the log file under KIMCHI_HOME/logs."""
from __future__ import annotations

import json
import logging
import re
import logging.handlers
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import quote, quote_plus

LOG_FILE_BYTES = 10 * 1024 * 1024  # rotate at 10 MB, keeping five old files: at most 60 MB of logs
LOG_FILE_BACKUPS = 5
# asyncio logs this at ERROR on every failed accept() (up to `backlog` times a loop turn when the process is
# out of file descriptors): one line per interval, with the count of those held back
ACCEPT_ERROR = "socket.accept() out of system resource"
ACCEPT_ERROR_INTERVAL_S = 60.0


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """Log files are the owner's alone (0600) whatever the umask, the ones rotation starts included: they
    name users and carry tracebacks."""

    def _open(self):
        def private(path: str, flags: int) -> int:
            fd = os.open(path, flags, 0o600)
            try:
                os.fchmod(fd, 0o600)  # tighten a log file an older version left readable
            except OSError:
                pass
            return fd

        return self._builtin_open(self.baseFilename, self.mode, encoding=self.encoding, errors=self.errors,
                                  opener=private)


class OneLine(logging.Formatter):
    """A console formatter that leaves tracebacks out: they belong in the log file."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def spellings(secret: str) -> list[str]:
    """`secret` as it can appear in a log line: as is (also inside a dict's or a bytes' repr), URL-encoded
    (a query string or a form body), JSON- and repr-escaped; longest first."""
    forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret), json.dumps(secret)[1:-1],
             repr(secret)[1:-1], secret.encode("unicode_escape").decode("ascii")}
    return sorted(forms, key=len, reverse=True)


# The review desk's one-time login links (bot/desk.py): PTB's DEBUG lines carry the message that sends one.
LOGIN_LINK = re.compile(r"(/desk/login/)[A-Za-z0-9_-]+")


class Redacting(logging.Formatter):
    """Wraps a formatter so that secrets never reach the output, tracebacks included (httpx errors and
    PTB's carry request URLs, which hold the bot token; PTB's DEBUG lines carry setWebhook's parameters,
    which hold the webhook secret)."""

    def __init__(self, inner: logging.Formatter, secrets: Sequence[str]) -> None:
        super().__init__()
        self.inner = inner
        self.secrets = sorted({form for s in secrets if s for form in spellings(s)}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record)
        for secret in self.secrets:
            text = text.replace(secret, "<redacted>")
        return LOGIN_LINK.sub(r"\1<redacted>", text) if "/login/" in text else text


class RateLimited(logging.Filter):
    """Lets one record whose message starts with `prefix` through per `interval_s`; the next one let through
    says how many were held back. Other records pass untouched."""

    def __init__(self, prefix: str, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.prefix, self.interval_s, self.clock = prefix, interval_s, clock
        self.last: float | None = None
        self.held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str) or not record.msg.startswith(self.prefix):
            return True
        now = self.clock()
        if self.last is not None and now - self.last < self.interval_s:
            self.held += 1
            return False
        if self.held:
            note = f" ({self.held} more like this in the last {now - self.last:.0f} s not logged)"
            record.msg += note.replace("%", "%%") if record.args else note
            self.held = 0
        self.last = now
        return True


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
            log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            handler = PrivateRotatingFileHandler(log_file, maxBytes=LOG_FILE_BYTES,
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
    accept_log = logging.getLogger("asyncio")
    for old in [f for f in accept_log.filters if isinstance(f, RateLimited)]:
        accept_log.removeFilter(old)
    accept_log.addFilter(RateLimited(ACCEPT_ERROR, ACCEPT_ERROR_INTERVAL_S))
