"""A bystander's `/start` latency while another user floods the bot, against the same bystander alone; and a
bystander's label latency while another user taps 40 times under the answer to a 36-MP PNG.

    python bench/flood_bench.py [--actions 100] [--starts 20]
    python bench/flood_bench.py --tap-flood [--taps 40] [--labels 12] [--before REV]

The bot runs as `kimchi-bot` runs, in its own process, with its default budgets; the fake Bot API runs here.
The flooder sends `--actions` actions as fast as the fake server takes them, in a loop of: `/correct` with
4,000 Hangul characters, a tap relabelling their photo, and a 1280x960 photo. Meanwhile the bystander sends
`/start` every 50 ms; each is timed from the update being queued to the greeting reaching the server.
Target (hardening issue): bystander p99 <= 200 ms on a 2-core CPU.

`--tap-flood` (hardening, round two): the flooder sends a 6000x6000 RGB PNG as a file (36 MP, a few hundred KB)
and, once answered, `--taps` class taps under the answer at once. The bystander meanwhile sends `/correct`
replies to their own answered photo, alternating two classes, one after another; each is timed from the update
being queued to "saved" reaching the server. The same runs with the bot from git revision `--before` (a
temporary worktree), so "before" and "after" come from one run on one machine. Also printed: the bot's peak RSS.
Target: the bystander's labels within 2 s.
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
from common import (ROOT, bot_process, checkout, machine, peak_rss_mb, percentile, photos, report,  # noqa: E402
                    trained_model)


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


def huge_png() -> bytes:
    """6000x6000 RGB of one random row repeated: 36 MP decoded (108 MB), a small file sent."""
    import io

    import numpy as np
    from PIL import Image

    row = np.random.default_rng(0).integers(0, 255, (1, 6000, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.tile(row, (6000, 1, 1))).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


async def labeller(fake, who, count: int, data: bytes) -> list[float]:
    """`count` /correct replies to one answered photo, one after another, alternating two classes."""
    sent = await fake.send_photo(who, data)
    reply = await fake.reply_to(sent, timeout=120)
    answer = fake.messages[(sent["chat"]["id"], reply.result["message_id"])]
    latencies = []
    for n in range(count):
        pushed = time.monotonic()
        fix = await fake.send_text(who, f"/correct {('깍두기', '총각김치')[n % 2]}", reply_to=answer)
        saved = await fake.reply_to(fix, timeout=300)
        latencies.append(saved.at - pushed)
    return latencies


async def tap_flood_once(root: Path, args, png: bytes, blob: bytes) -> dict:
    """One bot (from source tree `root`): the bystander's labels alone, then during the tap flood."""
    from models.home import Home
    from tests.botkit import TOKEN
    from tests.telegram_fake import FakeTelegram, user

    home = Home(Path(tempfile.mkdtemp(prefix="kimchi-tapflood-"))).ensure()
    trained_model(home.root, arch="efficientnet_lite0", size=64, presize=160, epochs=1)
    fake = await FakeTelegram(TOKEN).start()
    out: dict = {}
    # Default budgets, except that every tap must reach the bot: the flood is the worst case.
    async with bot_process(home, fake, root=root, KIMCHI_ACTION_RATE_LIMIT="0", KIMCHI_CORRECTIONS_PER_DAY="0",
                           KIMCHI_LOG_LEVEL="WARNING") as process:
        out["alone"] = summary(await labeller(fake, user(2, "en"), args.labels, blob))
        flooder = user(1, "en")
        sent = await fake.send_document(flooder, png, "image/png", "big.png")
        reply = await fake.reply_to(sent, timeout=300)
        answer = fake.messages[(sent["chat"]["id"], reply.result["message_id"])]
        for i in range(args.taps):
            await fake.tap(flooder, answer, f"set:{sent['message_id']}:{i % 11}")
        during = await labeller(fake, user(3, "en"), args.labels, blob)
        out["during_tap_flood"] = summary(during)
        out["peak_rss_mb"] = round(peak_rss_mb(process.pid))
        await fake.wait_for(lambda c: c.method == "editMessageText" and int(c.params["chat_id"]) == 1,
                            count=args.taps, timeout=600)
    return out


async def tap_flood(args) -> dict:
    png, blob = huge_png(), photos(1)[0]
    results = {"machine": machine(), "taps": args.taps, "labels": args.labels, "png_bytes": len(png)}
    if args.before:
        with checkout(args.before) as old_tree:
            results["before"] = {"rev": args.before, **await tap_flood_once(old_tree, args, png, blob)}
        print("before:", results["before"], flush=True)
    results["after"] = await tap_flood_once(ROOT, args, png, blob)
    print("after:", results["after"], flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, default=100)
    parser.add_argument("--starts", type=int, default=20, help="per phase; within one user's action budget (30 a minute)")
    parser.add_argument("--home")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--tap-flood", action="store_true", help="the 36-MP tap flood instead of the action flood")
    parser.add_argument("--taps", type=int, default=40)
    parser.add_argument("--labels", type=int, default=12, help="the bystander's /correct replies per phase")
    parser.add_argument("--before", help="with --tap-flood: also run the bot from this git revision, first")
    args = parser.parse_args()
    results = asyncio.run(tap_flood(args) if args.tap_flood else main_async(args))
    print(json.dumps(results, ensure_ascii=False, indent=1))
    report(results, args.out)


if __name__ == "__main__":
    main()
