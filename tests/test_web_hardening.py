"""The bot's HTTP server under abuse: connections that never finish their headers, a flood of them past the
process's file limit, the accept-error log, and the webhook secret in a DEBUG log.

The flood test runs the real `python -m bot.app` with RLIMIT_NOFILE 1024 (soft and hard) against the fake Bot
API; the others run the server in this event loop.
"""
from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from bot.app import build_application
from bot.settings import Settings
from bot.web import WebServer, connection_cap
from models.logs import ACCEPT_ERROR, RateLimited, setup_logging
from tests.botkit import ROOT, TOKEN, bot_env, free_port, stop_bot
from tests.telegram_fake import user

SECRET = "hook_SECRET-4f9a2c"
HALF_OPEN = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"  # never the blank line that ends the headers
FLOOD = 1100
BOT_NOFILE = 1024


def raise_own_file_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"the test needs {need} file descriptors and the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def spawn_limited_bot(home, fake, cwd: Path, nofile: int, **extra: str) -> subprocess.Popen:
    """tests.botkit.spawn_bot's `python -m bot.app`, with RLIMIT_NOFILE lowered (soft and hard) in the child."""
    env = {**os.environ, **bot_env(home, fake, **extra), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    output = open(Path(cwd) / "bot.out", "w")
    # the shell's `ulimit -n` sets both limits (a preexec_fn would run in a forked copy of this threaded process)
    return subprocess.Popen(["/bin/sh", "-c", f'ulimit -n {nofile} && exec "$0" -m bot.app', sys.executable],
                            cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, text=True)


def open_half(port: int, count: int) -> list[socket.socket]:
    """`count` connections that send part of a request head and then nothing."""
    held = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(HALF_OPEN)
        held.append(sock)
    return held


async def timed_get(url: str, timeout: float = 30) -> tuple[int, float]:
    start = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.get(url) as response:
            await response.read()
            return response.status, time.monotonic() - start


async def test_a_half_open_flood_past_the_file_limit_leaves_the_bot_answering_and_no_log_has_the_secret(
        home, fake, tmp_path):
    """Webhook mode at DEBUG with RLIMIT_NOFILE 1024: 1,100 connections that never end their request head, then
    /healthz and Telegram's post; and the secret, sent to setWebhook, is in no log line."""
    raise_own_file_limit(FLOOD + 512)
    port = free_port()
    process = spawn_limited_bot(home, fake, tmp_path, BOT_NOFILE, KIMCHI_WEBHOOK_URL=f"http://127.0.0.1:{port}/tg",
                                KIMCHI_WEBHOOK_SECRET=SECRET, KIMCHI_LISTEN=f"127.0.0.1:{port}",
                                KIMCHI_LOG_LEVEL="DEBUG")
    held: list[socket.socket] = []
    try:
        (hook,) = await fake.wait_for(lambda c: c.method == "setWebhook", timeout=90)
        status, quiet = await timed_get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200
        held = await asyncio.to_thread(open_half, port, FLOOD)
        await asyncio.sleep(0.5)  # the bot takes them in
        status, flooded = await timed_get(f"http://127.0.0.1:{port}/healthz")
        print(f"healthz: {quiet * 1000:.0f} ms quiet, {flooded * 1000:.0f} ms under {FLOOD} half-open connections")
        assert status == 200 and flooded < 1.0, f"/healthz took {flooded:.2f} s under the flood"
        sent = await asyncio.wait_for(fake.send_text(user(7001, "en"), "/start"), 10)
        await fake.wait_for(lambda c: c.method == "sendMessage" and int(c.params["chat_id"]) == sent["chat"]["id"],
                            timeout=10)
        assert fake.deliveries == [200]
    finally:
        for sock in held:
            sock.close()
        start = time.monotonic()
        code = await stop_bot(process)
        stopped = time.monotonic() - start
    output = (tmp_path / "bot.out").read_text(errors="replace")
    print(f"stop: {stopped:.1f} s; output {len(output)} bytes")
    assert code == 0, output[-2000:]
    assert stopped < 10
    assert "at its cap of" in output  # the flood went past the cap: the guard closed connections to make room
    assert "out of system resource" not in output and "Too many open files" not in output

    assert hook.params["secret_token"] == SECRET  # Telegram was given the secret, and PTB logged the call
    assert any("setWebhook" in line and "<redacted>" in line for line in output.splitlines()), output[-3000:]
    for path in [*home.logs.glob("*"), tmp_path / "bot.out"]:
        assert SECRET not in path.read_text(errors="replace"), path.name


# ---------------------------------------------------------------------------------------------
# the server in this loop, with short deadlines

async def serving(tmp_path: Path, **kw) -> WebServer:
    settings = Settings.load(environ={"TELEGRAM_BOT_TOKEN": TOKEN, "KIMCHI_HOME": str(tmp_path / "home"),
                                      "KIMCHI_WEBHOOK_URL": "http://127.0.0.1:9/tg", "KIMCHI_WEBHOOK_SECRET": SECRET},
                             env_file=None)
    web = WebServer(build_application(settings), settings, ("127.0.0.1", 0), **kw)
    await web.start()
    return web


async def closed_after(reader: asyncio.StreamReader, limit: float = 5.0) -> tuple[bytes, float]:
    """What the server sent until it closed the connection, and how long that took."""
    start = time.monotonic()
    try:
        data = await asyncio.wait_for(reader.read(), limit)
    except ConnectionError:  # closed while we were still writing
        data = b""
    return data, time.monotonic() - start


async def test_a_connection_that_never_finishes_its_head_is_closed(tmp_path):
    web = await serving(tmp_path, header_timeout=0.5, keep_alive=0.5)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", web.port)
        writer.write(HALF_OPEN)
        data, waited = await closed_after(reader)
        assert data == b"" and 0.4 < waited < 2.0

        # a request in time is answered; the connection then stays open only while kept alive, and bytes
        # trickled in meanwhile (a next head that never ends) do not keep it open
        reader, writer = await asyncio.open_connection("127.0.0.1", web.port)
        writer.write(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        status = await asyncio.wait_for(reader.readline(), 2)
        assert status.startswith(b"HTTP/1.1 404")
        start = time.monotonic()
        for byte in HALF_OPEN[:10]:
            if writer.is_closing() or reader.at_eof() or reader.exception() is not None:
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(0.15)
        await closed_after(reader)
        assert time.monotonic() - start < 1.2  # 0.5 s kept alive, not 10 bytes x 0.15 s
        assert web.guard.timed_out >= 1 and not web.guard.open
    finally:
        await web.stop()


async def test_a_webhook_body_that_does_not_arrive_gets_408_and_the_connection_closes(tmp_path):
    web = await serving(tmp_path, body_timeout=0.5)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", web.port)
        writer.write(b"POST /tg HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"X-Telegram-Bot-Api-Secret-Token: " + SECRET.encode() + b"\r\nContent-Length: 100\r\n\r\n{")
        data, waited = await closed_after(reader)
        assert data.startswith(b"HTTP/1.1 408") and 0.4 < waited < 2.0
    finally:
        await web.stop()


async def test_past_the_cap_a_new_connection_closes_the_oldest_idle_one(tmp_path):
    web = await serving(tmp_path, max_connections=20)
    assert web.guard.cap == 20
    try:
        held = []
        for _ in range(50):
            reader, writer = await asyncio.open_connection("127.0.0.1", web.port)
            writer.write(HALF_OPEN)
            held.append((reader, writer))
            await asyncio.sleep(0)
        reader, writer = await asyncio.open_connection("127.0.0.1", web.port)
        writer.write(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readline(), 2)).startswith(b"HTTP/1.1 404")
        assert len(web.guard.open) <= 20
        oldest, newest = held[0][0], held[-1][0]
        assert (await closed_after(oldest, 2))[0] == b""  # closed long before the 5 s head deadline
        assert not newest.at_eof()
        for _, w in held + [(reader, writer)]:
            w.close()
    finally:
        await web.stop()


def test_the_cap_stays_under_the_file_limit():
    assert connection_cap(1000, limit=1024, in_use=60) < 1024 - 60 - 256  # room for the bot's own files
    assert connection_cap(1000, limit=65536, in_use=60) == 1000
    assert connection_cap(1000, limit=300, in_use=60) == 16  # a floor, however tight


def test_accept_errors_are_logged_once_a_minute_with_a_count(tmp_path):
    log_file = tmp_path / "k.log"
    setup_logging(log_file, logging.WARNING)
    loop = asyncio.new_event_loop()
    try:
        for _ in range(500):  # what asyncio's accept loop does when the process is out of descriptors
            loop.call_exception_handler({"message": ACCEPT_ERROR, "exception": OSError(24, "Too many open files")})
    finally:
        loop.close()
    logging.getLogger("asyncio").error("something else")
    for handler in logging.getLogger().handlers:
        handler.flush()
    text = log_file.read_text()
    assert text.count(ACCEPT_ERROR) == 1 and "something else" in text

    now = [0.0]
    limited = RateLimited(ACCEPT_ERROR, 60.0, clock=lambda: now[0])
    record = lambda: logging.LogRecord("asyncio", logging.ERROR, __file__, 1, ACCEPT_ERROR, None, None)  # noqa: E731
    passed = [limited.filter(r) for r in [record() for _ in range(100)]]
    now[0] = 61.0
    later = record()
    assert passed.count(True) == 1 and limited.filter(later) and "99 more like this" in later.getMessage()


def test_secrets_are_redacted_in_any_spelling(tmp_path):
    log_file = tmp_path / "k.log"
    setup_logging(log_file, logging.DEBUG, secrets=(TOKEN, SECRET))
    from urllib.parse import quote, urlencode

    log = logging.getLogger("kimchi.test")
    log.debug("params %s", {"url": "https://x/tg", "secret_token": SECRET})
    log.debug("form %s", urlencode({"secret_token": SECRET, "token": TOKEN}))
    log.debug("url https://api.telegram.org/bot%s/getMe", quote(TOKEN, safe=""))
    log.debug("bytes %r", SECRET.encode())
    for handler in logging.getLogger().handlers:
        handler.flush()
    text = log_file.read_text()
    assert text.count("<redacted>") == 5, text
    assert SECRET not in text and TOKEN.split(":")[1] not in text
