"""A bystander's `/start` latency while another user floods the bot, against the same bystander alone.

    python bench/flood_bench.py [--actions 100] [--starts 20]

The bot runs as `kimchi-bot` runs, in its own process, with its default budgets; the fake Bot API runs here.
The flooder sends `--actions` actions as fast as the fake server takes them, in a loop of: `/correct` with
4,000 Hangul characters, a tap relabelling their photo, and a 1280x960 photo. Meanwhile the bystander sends
`/start` every 50 ms; each is timed from the update being queued to the greeting reaching the server.
Target (hardening issue): bystander p99 <= 200 ms on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bot_process, machine, percentile, photos, report, trained_model  # noqa: E402


async def bystander(fake, who, count: int) -> list[float]:
    """`/start` every 50 ms; the greeting is not a quoted reply, so count the greetings in their chat."""
    latencies = []
    for n in range(1, count + 1):
        pushed = time.monotonic()
        await fake.send_text(who, "/start")
        greetings = await fake.wait_for(lambda c: c.method == "sendMessage" and int(c.params["chat_id"]) == who["id"],
                                        count=n, timeout=120)
        latencies.append(greetings[-1].at - pushed)
        await asyncio.sleep(0.05)
    return latencies


async def flood(fake, who, actions: int, blobs: list[bytes]) -> dict:
    sent, answer = await fake.send_photo(who, blobs[0]), None
    reply = await fake.reply_to(sent, timeout=120)
    answer = fake.messages[(sent["chat"]["id"], reply.result["message_id"])]
    kinds = {"long_correct": 0, "tap": 0, "photo": 0}
    for i in range(actions):
        kind = ("long_correct", "tap", "photo")[i % 3]
        kinds[kind] += 1
        if kind == "long_correct":
            await fake.send_text(who, "/correct " + "깍" * 4000)
        elif kind == "tap":
            await fake.tap(who, answer, f"set:{sent['message_id']}:{i % 11}")
        else:
            await fake.send_photo(who, blobs[1 + i % (len(blobs) - 1)])
    return kinds


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50_ms": round(1000 * statistics.median(values), 1),
            "p99_ms": round(1000 * percentile(values, 0.99), 1), "max_ms": round(1000 * max(values), 1)}


async def main_async(args) -> dict:
    from models.home import Home
    from tests.botkit import TOKEN
    from tests.telegram_fake import FakeTelegram, user

    home = Home(Path(args.home or tempfile.mkdtemp(prefix="kimchi-flood-bench-"))).ensure()
    trained_model(home.root, arch="efficientnet_lite0", size=64, presize=160, epochs=1)
    blobs = photos(40)
    fake = await FakeTelegram(TOKEN).start()
    results = {"machine": machine(), "actions": args.actions}
    # The bot's own defaults for every budget: bot_env turns the photo limit off for tests, so set it back.
    async with bot_process(home, fake, KIMCHI_RATE_LIMIT="10", KIMCHI_LOG_LEVEL="WARNING"):
        calm = await bystander(fake, user(2), args.starts)
        results["alone"] = summary(calm)
        print("bystander alone:", results["alone"], flush=True)
        flooding = asyncio.create_task(flood(fake, user(1), args.actions, blobs))
        during = await bystander(fake, user(3), args.starts)
        results["flood"] = await flooding
        results["during_flood"] = summary(during)
        print("bystander during the flood:", results["during_flood"], flush=True)
        await asyncio.sleep(2)
        results["flooder_replies"] = sum(1 for c in fake.calls if c.method in ("sendMessage", "answerCallbackQuery")
                                         and str(c.params.get("chat_id", "1")) == "1")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, default=100)
    parser.add_argument("--starts", type=int, default=20, help="per phase; within one user's action budget (30 a minute)")
    parser.add_argument("--home")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    print(json.dumps(results, ensure_ascii=False, indent=1))
    report(results, args.out)


if __name__ == "__main__":
    main()
