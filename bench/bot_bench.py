"""Bot latency: photo-to-reply time through the real PTB client and a fake Bot API on 127.0.0.1, at 1, 10 and
50 concurrent users, and the bot's own overhead (photo-to-reply time minus the engine's time for that photo).

    python bench/bot_bench.py

The bot runs as `kimchi-bot` runs, in its own process; the fake server runs here. Time starts when a
photo's update is queued for the bot's long poll and ends when the reply reaches the server, so it
includes getUpdates, getFile, the download, the engine, SQLite and sendMessage. The engine's time per
photo comes from the bot's own log line for that photo.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bot_process, machine, percentile, photos, report, trained_model  # noqa: E402


ENGINE_LINE = re.compile(r"photo (\S+): .* \(engine ([0-9.]+) ms\)")


def engine_times(log_file: Path) -> dict[str, float]:
    """file_unique_id -> seconds the engine took, from the bot's log."""
    found = {}
    for line in log_file.read_text(encoding="utf-8", errors="replace").splitlines():
        match = ENGINE_LINE.search(line)
        if match:
            found[match.group(1)] = float(match.group(2)) / 1000
    return found


async def run_level(fake, people, blobs, rounds: int, log_file: Path) -> dict:
    totals, sent_ids = [], []

    async def one(person, data):
        pushed = time.monotonic()
        sent = await fake.send_photo(person, data)
        reply = await fake.reply_to(sent, timeout=300)
        totals.append(reply.at - pushed)
        sent_ids.append((sent["photo"][-1]["file_unique_id"], reply.at - pushed))

    async def user_loop(index, person):
        for r in range(rounds):
            await one(person, blobs[(index * rounds + r) % len(blobs)])

    started = time.monotonic()
    await asyncio.gather(*(user_loop(i, p) for i, p in enumerate(people)))
    elapsed = time.monotonic() - started
    await asyncio.sleep(0.5)  # let the log line of the last photo reach the file
    spent = engine_times(log_file)
    engine = [spent[uid] for uid, _ in sent_ids if uid in spent]
    overheads = [total - spent[uid] for uid, total in sent_ids if uid in spent]

    def ms(values, q):
        return round(1000 * (statistics.median(values) if q == 0.5 else percentile(values, q)), 1)

    return {"users": len(people), "photos": len(totals), "replies_per_s": round(len(totals) / elapsed, 1),
            "total_p50_ms": ms(totals, 0.5), "total_p99_ms": ms(totals, 0.99),
            "engine_p50_ms": ms(engine, 0.5), "overhead_p50_ms": ms(overheads, 0.5),
            "overhead_p99_ms": ms(overheads, 0.99)}


async def main_async(args) -> dict:
    from models.home import Home
    from tests.botkit import TOKEN
    from tests.telegram_fake import FakeTelegram, user

    home = Home(Path(args.home or tempfile.mkdtemp(prefix="kimchi-bot-bench-"))).ensure()
    trained_model(home.root, arch="efficientnet_lite0", size=64, presize=160, epochs=1)
    blobs = photos(120)  # unique photos: no download is served from the bot's cache
    fake = await FakeTelegram(TOKEN).start()
    log_file = home.logs / "kimchi-bot.log"
    results = {"machine": machine(), "photo": "1280x960 JPEG", "levels": []}
    async with bot_process(home, fake, KIMCHI_QUEUE_LIMIT="512", KIMCHI_RATE_LIMIT="0", KIMCHI_LOG_LEVEL="INFO"):
        warm = user(1)
        for data in blobs[:3]:
            await fake.reply_to(await fake.send_photo(warm, data))
        for users, rounds in ((1, 40), (10, 4), (50, 2)):
            people = [user(10_000 * users + i) for i in range(users)]
            row = await run_level(fake, people, blobs, rounds, log_file)
            results["levels"].append(row)
            print(row, flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    report(results, args.out)


if __name__ == "__main__":
    main()
