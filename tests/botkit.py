"""Running the real bot against the fake Bot API, in-process or as a `kimchi-bot` subprocess; and what tests of
the bot and the command-line programs share (a free port, an answered photo, the one sentence of a refusal)."""
from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Callable, TypeVar

from telegram.ext import Application

from bot.app import build_application
from bot.settings import Settings
from bot.startup import serve
from models.home import Home
from tests.telegram_fake import Call, FakeTelegram

TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw1"
ADMIN = 424242
ROOT = Path(__file__).resolve().parent.parent


def bot_env(home: Home, fake: FakeTelegram, **extra: str) -> dict[str, str]:
    env = {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_BASE_URL": fake.base_url, "TELEGRAM_API_FILE_URL": fake.file_url,
           "KIMCHI_HOME": str(home.root), "KIMCHI_ADMIN_IDS": str(ADMIN), "KIMCHI_DEVICE": "cpu",
           "KIMCHI_RATE_LIMIT": "0", "KIMCHI_LOG_LEVEL": "INFO",
           # every label used, as before trusted corrections; tests of the policy set their own
           "KIMCHI_CORRECTION_POLICY": "open"}
    env.update(extra)
    return env


@asynccontextmanager
async def running_bot(home: Home, fake: FakeTelegram, **extra: str) -> AsyncIterator[Application]:
    """The bot as `kimchi-bot` runs it: `bot.startup.serve`, the lifecycle `run()` drives (getMe, post_init,
    polling or the webhook, the drain, post_stop, post_shutdown), as a task in this loop; leaving the block
    stops it as SIGTERM does. Only the conflict probe is skipped and the long poll is 1 s."""
    settings = Settings.load(environ=bot_env(home, fake, **extra), env_file=None)
    app = build_application(settings)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(app, settings, stop=stop, probe_s=0, ready=ready, poll_timeout=1))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait([task, waiter], timeout=60, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()  # raises what stopped it
    if not ready.is_set():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise AssertionError("the bot did not start within 60 s")
    try:
        yield app
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


def spawn_bot(home: Home, fake: FakeTelegram, cwd: Path, root: Path = ROOT, **extra: str) -> subprocess.Popen:
    """`python -m bot.app` (what the kimchi-bot script runs) with the given settings in its environment, from
    the source tree `root` (a benchmark passes an older checkout to compare against).

    Its output goes to cwd/bot.out (a file, not a pipe nobody drains, which would block a chatty bot).
    """
    env = {**os.environ, **bot_env(home, fake, **extra), "PYTHONPATH": str(root), "PYTHONUNBUFFERED": "1"}
    output = open(Path(cwd) / "bot.out", "w")
    return subprocess.Popen([sys.executable, "-m", "bot.app"], cwd=cwd, env=env, stdout=output,
                            stderr=subprocess.STDOUT, text=True)


async def stop_bot(process: subprocess.Popen, timeout: float = 30) -> int:
    """SIGTERM and the exit status, waiting in a thread: the fake Bot API runs on this loop and must go on
    answering the bot's last calls (a blocked loop cost each stop PTB's 5 s read timeout)."""
    process.terminate()
    return await asyncio.to_thread(process.wait, timeout)


def rows(home: Home, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
    con = sqlite3.connect(home.database)
    con.row_factory = sqlite3.Row
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def buttons(call) -> list[list[dict]]:
    return (call.params.get("reply_markup") or {}).get("inline_keyboard", [])


T = TypeVar("T")


async def until(probe: Callable[[], T], what: str, timeout: float = 20.0, every: float = 0.02) -> T:
    """`probe()`'s first true value, asked every `every` s: for an event that shows only in a row, a file or
    the state of a running object; an AssertionError naming `what` after `timeout` s."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := probe()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        await asyncio.sleep(every)
    return value


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (once this socket is closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def answered(fake: FakeTelegram, who: dict, data: bytes, **kw) -> tuple[dict, dict, Call]:
    """`who` sends the photo `data` and the bot answers: (the photo message, the answer as a message, the
    answer's sendMessage call)."""
    sent = await fake.send_photo(who, data, **kw)
    answer = await fake.reply_to(sent)
    return sent, fake.messages[(sent["chat"]["id"], answer.result["message_id"])], answer


def one_sentence(stderr: str, program: str) -> str:
    """The one line of `stderr` that starts with `program` ("kimchi-bot: ", "kimchi-train audit:"): no
    traceback, no second such line."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith(program)]
    assert len(lines) == 1, stderr
    return lines[0]


def refused(capsys, main: Callable[[list[str]], int], argv: list[str], *needles: str,
            program: str = "kimchi-train") -> str:
    """`main(argv)` in-process fails with one sentence on stderr that holds every needle; that sentence."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc != 0, err
    line = one_sentence(err, program)
    for needle in needles:
        assert needle in line, line
    return line
