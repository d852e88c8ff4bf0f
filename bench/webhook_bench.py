"""Webhook against polling: a burst of 200 `/start` updates from 200 users, all sent at once.

    python bench/webhook_bench.py [--users 200] [--out bench/out/webhook.json]

The bot runs as `kimchi-bot` runs, in its own process (labelling mode: `/start` needs no model); the fake
Bot API runs here. Polling: the 200 updates are queued for the bot's long poll at once. Webhook: the fake
posts them to the bot's webhook concurrently, as Telegram does, first with one connection per update, then
with at most `max_connections` (40, Telegram's default) connections. Time runs from the moment an update
is queued or its POST starts to the moment the bot's sendMessage for that user reaches the fake.

Both modes send through the bot's rate limiter (bot/sendrate.py: about 30 messages a second overall, Telegram's limit), so
the tail of a 200-message burst measures that limiter as much as the bot; `intake` shows how quickly each
mode took the updates in (webhook: the POST's answer; polling: not observable from outside, left out).
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, percentile, report  # noqa: E402

SECRET = "bench-secret_0123456789"


def ms(values: list[float], q: float) -> float:
    return round(1000 * (statistics.median(values) if q == 0.5 else percentile(values, q)), 1)


async def burst(fake, people: list[dict], connections: int | None = None) -> dict:
    """Send `/start` from every person at once; latencies from send to the bot's sendMessage."""
    import aiohttp

    if fake.webhook is not None:
        if fake._client is not None:
            await fake._client.close()
        fake._client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections or 0))
    ids = {p["id"] for p in people}
    sent_at: dict[int, float] = {}
    answered_post: dict[int, float] = {}

    async def one(person: dict) -> None:
        sent_at[person["id"]] = time.monotonic()
        await fake.send_text(person, "/start")
        answered_post[person["id"]] = time.monotonic()

    started = time.monotonic()
    await asyncio.gather(*(one(p) for p in people))
    calls = await fake.wait_for(lambda c: c.method == "sendMessage" and int(c.params["chat_id"]) in ids,
                                count=len(people), timeout=600)
    latencies = [c.at - sent_at[int(c.params["chat_id"])] for c in calls]
    row = {"updates": len(people), "p50_ms": ms(latencies, 0.5), "p99_ms": ms(latencies, 0.99),
           "max_ms": round(1000 * max(latencies), 1),
           "replies_per_s": round(len(calls) / (max(c.at for c in calls) - started), 1)}
    if fake.webhook is not None:
        intake = [answered_post[i] - sent_at[i] for i in ids]
        row.update(intake_p50_ms=ms(intake, 0.5), intake_p99_ms=ms(intake, 0.99),
                   statuses=sorted(set(fake.deliveries)))
    return row


async def run_mode(mode: str, users: int, root: Path) -> list[dict]:
    from models.home import Home
    from tests.botkit import TOKEN, free_port, spawn_bot
    from tests.telegram_fake import FakeTelegram, user

    home = Home(root / mode).ensure()
    fake = await FakeTelegram(TOKEN).start()
    extra = {"KIMCHI_LOG_LEVEL": "WARNING", "KIMCHI_ACTION_RATE_LIMIT": "0"}
    if mode == "webhook":
        port = free_port()
        extra.update(KIMCHI_WEBHOOK_URL=f"http://127.0.0.1:{port}/telegram", KIMCHI_WEBHOOK_SECRET=SECRET,
                     KIMCHI_LISTEN=f"127.0.0.1:{port}")
    process = spawn_bot(home, fake, home.root, **extra)
    rows = []
    try:
        ready = "setWebhook" if mode == "webhook" else "deleteWebhook"  # start_polling deletes any webhook first
        await fake.wait_for(lambda c: c.method == ready, timeout=180)
        await asyncio.sleep(0.5)
        for i in range(5):  # warm: connections, first handler calls
            await fake.send_text(user(900 + i, "en"), "/start")
        await fake.wait_for(lambda c: c.method == "sendMessage", count=5, timeout=60)
        await asyncio.sleep(1.5)  # let the rate limiter's window empty
        base = 100_000
        variants = [None] if mode == "polling" else [None, 40]
        for n, connections in enumerate(variants):
            people = [user(base * (n + 1) + i, "en") for i in range(users)]
            row = {"mode": mode if connections is None else f"{mode} (max_connections {connections})",
                   **await burst(fake, people, connections)}
            rows.append(row)
            print(row, flush=True)
            await asyncio.sleep(1.5)
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 60)
        await fake.stop()
    return rows


async def main_async(args) -> dict:
    root = Path(args.home or tempfile.mkdtemp(prefix="kimchi-webhook-bench-"))
    results = {"machine": machine(), "burst": f"{args.users} x /start from {args.users} users", "rows": []}
    for mode in ("polling", "webhook"):
        results["rows"].extend(await run_mode(mode, args.users, root))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--home")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    report(results, args.out)


if __name__ == "__main__":
    main()
