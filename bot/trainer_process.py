"""One `kimchi-train` subprocess as the bot runs it: it dies with the bot, its stdout is the trainer protocol
(models.protocol), its stderr is kept for the log, and it can be stopped at any moment."""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Awaitable, Callable

from models.protocol import Event, ProtocolError, parse

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 40
# prctl(PR_SET_PDEATHSIG, SIGKILL), then exec: the trainer dies with the bot, even after kill -9.
_LAUNCHER = ("import ctypes, os, sys\n"
             "try: ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)\n"
             "except AttributeError: pass  # not Linux: no parent-death signal\n"
             "if os.getppid() != int(sys.argv[1]): sys.exit(70)\n"
             "os.execv(sys.executable, [sys.executable] + sys.argv[2:])\n")
SECRETS = ("TELEGRAM_BOT_TOKEN", "KIMCHI_WEBHOOK_SECRET")  # the trainer needs neither


def kimchi_train(home: Path, *args: str) -> list[str]:
    """The command line of `kimchi-train --home HOME ARGS…`, launched so that it dies with this process."""
    return [sys.executable, "-c", _LAUNCHER, str(os.getpid()), "-m", "training.cli", "--home", str(home), *args]


class TrainerProcess:
    def __init__(self, command: list[str], log_path: Path,
                 on_event: Callable[[Event], Awaitable[None]] | None = None, env: dict[str, str] | None = None) -> None:
        """`env`: set in the trainer's environment over the bot's own (settings that may come from .env)."""
        self.command, self.log_path, self.on_event, self.env = command, log_path, on_event, env or {}
        self.events: list[Event] = []
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self.process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def start(self) -> int:
        log.info("starting: %s", " ".join(shlex.quote(c) for c in self.command[3:]))
        env = {k: v for k, v in os.environ.items() if k not in SECRETS}
        self.process = await asyncio.create_subprocess_exec(
            *self.command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
            env={**env, **self.env, "PYTHONUNBUFFERED": "1"}, limit=16 * 1024 * 1024)
        return self.process.pid

    async def finish(self, timeout_s: float) -> int:
        """Read its output until it exits; its exit status. TimeoutError (after stopping it) past `timeout_s`."""
        assert self.process is not None
        with open(self.log_path, "a", encoding="utf-8") as log_file:
            try:
                await asyncio.wait_for(asyncio.gather(self._read_events(log_file), self._read_stderr(log_file)),
                                       timeout=timeout_s)
            except asyncio.TimeoutError:
                await self.stop()
                raise
        return await self.process.wait()

    async def _read_events(self, log_file) -> None:
        async for raw in self.process.stdout:
            line = raw.decode("utf-8", "replace").strip()
            log_file.write(line + "\n")
            if not line.startswith("{"):
                continue  # the published version's path, printed last for people
            try:
                event = parse(line)
            except ProtocolError as err:
                log.warning("ignoring a malformed trainer line: %s", err)
                continue
            self.events.append(event)
            if self.on_event is not None:
                await self.on_event(event)

    async def _read_stderr(self, log_file) -> None:
        async for raw in self.process.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            log_file.write(line + "\n")
            if line:
                self.stderr_tail.append(line)

    async def stop(self) -> None:
        """SIGTERM to its process group, SIGKILL after 10 s."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=10)
            except asyncio.TimeoutError:
                os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def is_our_trainer(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return b"training.cli" in cmdline
