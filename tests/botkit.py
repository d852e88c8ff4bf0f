"""Running the real bot against the fake Bot API, in-process or as a `kimchi-bot` subprocess."""
from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

from telegram import Update

from bot.app import build_application
from bot.settings import Settings
from models.home import Home
from tests.telegram_fake import FakeTelegram

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
async def running_bot(home: Home, fake: FakeTelegram, **extra: str) -> AsyncIterator:
    """The Application as `kimchi-bot` runs it (post_init, polling, post_stop, post_shutdown), in this loop."""
    settings = Settings.load(environ=bot_env(home, fake, **extra), env_file=None)
    app = build_application(settings)
    await app.initialize()
    await app.post_init(app)
    await app.start()
    await app.updater.start_polling(poll_interval=0.0, timeout=1, allowed_updates=Update.ALL_TYPES)
    try:
        yield app
    finally:
        await app.updater.stop()
        await app.stop()
        await app.post_stop(app)
        await app.shutdown()
        await app.post_shutdown(app)


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
