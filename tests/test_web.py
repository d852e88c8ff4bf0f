"""Webhook mode, /healthz, /metrics and a local Bot API server: the real bot in this event loop, its own HTTP
server on 127.0.0.1, and the fake Bot API posting updates to the webhook as Telegram does."""
from __future__ import annotations

import asyncio
import json
import re
from contextlib import asynccontextmanager
from typing import AsyncIterator

import aiohttp
import pytest

from bot.metrics import database_writable
from bot.settings import Settings
from bot.gate import ALLOWED_UPDATES
from models.errors import KimchiError
from tests.botkit import TOKEN, free_port, running_bot
from tests.imagegen import draw, encode, photo_bytes
from tests.telegram_fake import user

SECRET = "s3cret_TOKEN-for-tests"
PERCENT = re.compile(r"\d+%")


@asynccontextmanager
async def serving_bot(home, fake, **extra: str) -> AsyncIterator[tuple]:
    """The bot as `kimchi-bot` runs it (tests.botkit.running_bot) with its HTTP server on a free port of
    127.0.0.1; yields (app, base URL of its server)."""
    async with running_bot(home, fake, **{"KIMCHI_LISTEN": f"127.0.0.1:{free_port()}", **extra}) as app:
        yield app, "http://{}:{}".format(*app.bot_data["settings"].listen_address)


async def http(method: str, url: str, **kw) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, **kw) as response:
            return response.status, await response.read()


def update_json(uid: int, text: str, update_id: int) -> dict:
    return {"update_id": update_id, "message": {
        "message_id": 1, "date": 0, "chat": {"id": uid, "type": "private"}, "text": text,
        "from": user(uid, "en"), "entities": [{"type": "bot_command", "offset": 0, "length": len(text)}]}}


async def metrics_when(base: str, ready, timeout: float = 10.0) -> str:
    """/metrics once `ready(text)` holds: an update's last handler group and the engine's batch hook run after
    the reply, so a fixed sleep would race them on a loaded box."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        text = (await http("GET", f"{base}/metrics"))[1].decode()
        if ready(text):
            return text
        assert asyncio.get_running_loop().time() < deadline, "the metrics never caught up with the update"
        await asyncio.sleep(0.02)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        if sample == (f"{name}{{{wanted}}}" if labels else name):
            return float(value)
    return 0.0


async def test_webhook_checks_the_secret_size_and_json_before_any_handler(home, fake):
    port = free_port()
    url = f"http://127.0.0.1:{port}/telegram/hook"
    stranger, friend = user(5001, "en"), user(5002, "en")
    async with serving_bot(home, fake, KIMCHI_WEBHOOK_URL=url, KIMCHI_WEBHOOK_SECRET=SECRET,
                           KIMCHI_LISTEN=f"127.0.0.1:{port}", KIMCHI_WEBHOOK_MAX_CONNECTIONS="12") as (app, base):
        hook = fake.webhook
        assert hook["url"] == url and hook["secret_token"] == SECRET and int(hook["max_connections"]) == 12
        assert hook["allowed_updates"] == ALLOWED_UPDATES and hook["drop_pending_updates"] in (False, "false", "False")
        assert not [c for c in fake.calls if c.method == "getUpdates"]  # no polling in webhook mode

        forged = json.dumps(update_json(stranger["id"], "/start", 900))
        assert (await http("POST", url, data=forged, headers={"Content-Type": "application/json"}))[0] == 403
        wrong = {"X-Telegram-Bot-Api-Secret-Token": "guess", "Content-Type": "application/json"}
        assert (await http("POST", url, data=forged, headers=wrong))[0] == 403
        # the secret is checked before the size: a huge body without it is refused unread
        assert (await http("POST", url, data=b"x" * (3 * 1024 * 1024)))[0] == 403

        good = {"X-Telegram-Bot-Api-Secret-Token": SECRET, "Content-Type": "application/json"}
        big = json.dumps({**update_json(stranger["id"], "/start", 901), "pad": "x" * (1024 * 1024)})
        assert (await http("POST", url, data=big, headers=good))[0] == 413

        async def chunks():  # no Content-Length: the streamed size is what counts
            yield b'{"update_id": 902, "pad": "'
            for _ in range(20):
                yield b"y" * (64 * 1024)
            yield b'"}'

        assert (await http("POST", url, data=chunks(), headers=good))[0] == 413
        assert (await http("POST", url, data=b"{not json", headers=good))[0] == 400
        assert (await http("POST", url, data=b"[1, 2]", headers=good))[0] == 400
        assert (await http("POST", url, data=b'{"message": {}}', headers=good))[0] == 400
        assert (await http("GET", url))[0] == 405

        sent = await fake.send_text(friend, "/start")  # Telegram's own post, with the secret
        answer = (await fake.wait_for(lambda c: c.method == "sendMessage"
                                      and int(c.params["chat_id"]) == sent["chat"]["id"]))[0]
        text = await metrics_when(base, lambda t: metric(t, "kimchi_updates_total") >= 1)
    assert fake.deliveries == [200]
    assert answer.params["text"]
    assert not fake.sent(stranger["id"])  # nothing refused reached a handler
    assert metric(text, "kimchi_webhook_requests_total", status="403") == 3
    assert metric(text, "kimchi_webhook_requests_total", status="413") == 2
    assert metric(text, "kimchi_webhook_requests_total", status="400") == 3
    assert metric(text, "kimchi_updates_total") == 1


async def test_healthz_and_metrics_in_polling_mode(trained_copy, fake):
    amy = user(5101, "ko")
    photo = photo_bytes(0, 3)
    async with serving_bot(trained_copy.home, fake) as (app, base):
        status, body = await http("GET", f"{base}/healthz")
        health = json.loads(body)
        assert status == 200, health
        assert health["status"] == "ok" and health["model"] == {"version": "v1", "device": "cpu"}
        assert health["database"]["writable"] is True and health["engine"]["queue_depth"] == 0
        assert health["retrain"]["state"] == "idle" and health["seconds_since_last_update"] is None
        before = (await http("GET", f"{base}/metrics"))[1].decode()

        reply = await fake.reply_to(await fake.send_photo(amy, photo))
        assert PERCENT.search(reply.params["text"])
        after = await metrics_when(base, lambda t: metric(t, "kimchi_updates_total") > metric(before, "kimchi_updates_total")
                                   and metric(t, "kimchi_engine_batch_size_count") >= 1
                                   and metric(t, "kimchi_photo_reply_seconds_count") >= 1)
        health = json.loads((await http("GET", f"{base}/healthz"))[1])
        assert health["seconds_since_last_update"] is not None and health["seconds_since_last_update"] < 30

        # the engine's worker thread ends (as if it had died); the bot cannot serve until one runs again
        await asyncio.to_thread(app.bot_data["services"].classifier.batcher.stop_worker, 10)
        status, body = await http("GET", f"{base}/healthz")
        dead = json.loads(body)
        assert (await http("GET", f"{base}/webhook"))[0] == 404  # no webhook route in polling mode
    assert status == 503 and dead["status"] == "unavailable" and "worker" in " ".join(dead["problems"])
    assert metric(before, "kimchi_engine_batch_size_count") == 0
    assert metric(after, "kimchi_engine_batch_size_count") == 1 and metric(after, "kimchi_engine_batch_size_sum") == 1
    assert metric(after, "kimchi_updates_total") == metric(before, "kimchi_updates_total") + 1
    assert metric(after, "kimchi_serving_info", arch="efficientnet_lite0", device="cpu", version="v1") == 1
    assert metric(after, "kimchi_engine_queue_depth") == 0
    assert metric(after, "kimchi_photos_total", outcome="answered", reason="") == 1
    assert metric(after, "kimchi_photo_reply_seconds_count") == 1
    for family in ("kimchi_photos", "kimchi_photo_reply_seconds", "kimchi_corrections", "kimchi_retrain_runs"):
        assert f"# HELP {family}" in after, family


async def test_local_bot_api_server_files_are_read_by_path(trained_copy, fake, tmp_path):
    fake.local_dir = tmp_path / "telegram-bot-api"
    fake.local_dir.mkdir()
    ben = user(5201, "ko")
    photo = photo_bytes(1, 4)
    async with serving_bot(trained_copy.home, fake, TELEGRAM_LOCAL_MODE="1", KIMCHI_MAX_DOWNLOAD_MB="200") as (app, _):
        assert app.bot.local_mode
        reply = await fake.reply_to(await fake.send_photo(ben, photo))
    assert PERCENT.search(reply.params["text"])
    assert [c.method for c in fake.calls if c.method == "getFile"] == ["getFile"]
    assert fake.downloads == []  # read from the path getFile gave, not fetched over HTTP


async def test_webhook_stop_answers_the_photos_already_posted(trained_copy, fake):
    """SIGTERM's path in webhook mode: the server stops taking posts, the updates it took are still answered."""
    people = [user(5301 + i) for i in range(4)]
    port = free_port()
    async with serving_bot(trained_copy.home, fake, KIMCHI_WEBHOOK_URL=f"http://127.0.0.1:{port}/tg",
                           KIMCHI_WEBHOOK_SECRET=SECRET, KIMCHI_LISTEN=f"127.0.0.1:{port}",
                           KIMCHI_MAX_WAIT_MS="300") as (app, _):
        sent = [await fake.send_photo(p, encode(draw(i % 4, (320, 240), seed=40 + i), "JPEG")) for i, p in
                enumerate(people)]
        await fake.wait_for(lambda c: c.method == "getFile", count=len(people))
    # the context has stopped the bot: every photo it accepted was answered before it shut down
    answers = [await fake.reply_to(m, timeout=1) for m in sent]
    assert all(PERCENT.search(a.params["text"]) for a in answers) and fake.deliveries == [200] * len(people)
    with pytest.raises(aiohttp.ClientConnectionError):
        await http("GET", f"http://127.0.0.1:{port}/healthz")

def test_serving_settings_are_checked_at_start(tmp_path):
    base = {"TELEGRAM_BOT_TOKEN": TOKEN, "KIMCHI_HOME": str(tmp_path)}

    def load(**values: str) -> Settings:
        return Settings.load(environ={**base, **values}, env_file=None)

    with pytest.raises(KimchiError, match="KIMCHI_WEBHOOK_SECRET must be set"):
        load(KIMCHI_WEBHOOK_URL="https://bot.example.com/tg")
    with pytest.raises(KimchiError, match="KIMCHI_WEBHOOK_SECRET"):
        load(KIMCHI_WEBHOOK_URL="https://bot.example.com/tg", KIMCHI_WEBHOOK_SECRET="has space")
    with pytest.raises(KimchiError, match="KIMCHI_WEBHOOK_SECRET"):
        load(KIMCHI_WEBHOOK_URL="https://bot.example.com/tg", KIMCHI_WEBHOOK_SECRET="x" * 257)
    with pytest.raises(KimchiError, match="full http"):
        load(KIMCHI_WEBHOOK_URL="bot.example.com/tg", KIMCHI_WEBHOOK_SECRET="abc")
    with pytest.raises(KimchiError, match="cannot be /healthz"):
        load(KIMCHI_WEBHOOK_URL="https://bot.example.com/healthz", KIMCHI_WEBHOOK_SECRET="abc")
    with pytest.raises(KimchiError, match="TELEGRAM_LOCAL_MODE=1"):
        load(KIMCHI_MAX_DOWNLOAD_MB="100")
    with pytest.raises(KimchiError, match="KIMCHI_LISTEN must be host:port"):
        load(KIMCHI_LISTEN="localhost")
    webhook = load(KIMCHI_WEBHOOK_URL="http://localhost:8081/tg", KIMCHI_WEBHOOK_SECRET="a" * 256)
    assert webhook.webhook_mode and webhook.webhook_path == "/tg" and webhook.listen_address == ("127.0.0.1", 8080)
    polling = load(KIMCHI_LISTEN=":9100", TELEGRAM_LOCAL_MODE="1", KIMCHI_MAX_DOWNLOAD_MB="2000")
    assert not polling.webhook_mode and polling.listen_address == ("0.0.0.0", 9100)
    assert polling.max_download_bytes == 2000 * 1024 * 1024 and load().listen_address is None


def test_database_probe(tmp_path):
    import sqlite3

    db = tmp_path / "k.sqlite3"
    sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.close()
    assert database_writable(db)
    held = sqlite3.connect(db, isolation_level=None)
    held.execute("BEGIN IMMEDIATE")  # another writer holds the lock: busy, still writable
    assert database_writable(db, timeout_s=0.05)
    held.execute("ROLLBACK")
    held.close()
    assert not database_writable(tmp_path / "gone" / "k.sqlite3")
