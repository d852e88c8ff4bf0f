"""What the per-sender budgets cost as senders pile up over a day: time per check and memory held.

    python bench/budget_bench.py [--senders 100000]

The bot keeps three budgets per sender (bot.services.Quota): photos a minute, actions a minute, and
labels a day. The daily one remembers every sender of the day, so it is the one that grows. This feeds it
`--senders` distinct senders, each labelling twice, as a day of traffic would, and times each check on the
event loop's thread; memory is what tracemalloc sees the limiter hold at the end (measured in a second pass,
as tracing slows the checks). Target (hardening, round two): O(1) per check, bounded memory, at 100,000
senders a day. Before that change a check took 1.38 ms at 20,000 senders (the hardening review's figure).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import percentile, report  # noqa: E402

from bot.services import Quota  # noqa: E402

MARKS = (1_000, 5_000, 20_000, 50_000, 100_000)


def feed(limiter: Quota, senders: int) -> dict[int, list[float]]:
    """Check each sender twice; the check times (s) of the last 1,000 senders before each mark."""
    times: dict[int, list[float]] = {}
    window: list[float] = []
    for sender in range(1, senders + 1):
        for _ in range(2):
            start = time.perf_counter()
            limiter.allow(sender)
            window.append(time.perf_counter() - start)
        if sender in MARKS:
            times[sender] = window[-2000:]
            window = []
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--senders", type=int, default=100_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    limiter = Quota(200, window_s=24 * 3600)
    times = feed(limiter, args.senders)
    results = {"senders": args.senders, "per_check_us": {
        n: {"p50": round(1e6 * statistics.median(t), 2), "p99": round(1e6 * percentile(t, 0.99), 2)}
        for n, t in times.items()}}
    tracemalloc.start()
    traced = Quota(200, window_s=24 * 3600)
    feed(traced, args.senders)
    results["memory_mb"] = round(tracemalloc.get_traced_memory()[0] / 1e6, 1)
    results["bytes_per_sender"] = round(tracemalloc.get_traced_memory()[0] / args.senders)
    tracemalloc.stop()
    results["senders_held"] = len(traced)
    for n, figures in results["per_check_us"].items():
        print(f"{n:>7} senders: check p50 {figures['p50']} us, p99 {figures['p99']} us")
    print(f"memory held for {args.senders} senders: {results['memory_mb']} MB ({results['bytes_per_sender']} B each)")
    report(results, args.out)


if __name__ == "__main__":
    main()
