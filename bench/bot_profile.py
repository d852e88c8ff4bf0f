"""Where the bot's own time goes for one photo (issue 13 §3): the overhead split into its steps.

    python bench/bot_profile.py                    # 60 photos, one at a time, one user
    python bench/bot_profile.py --py-spy OUT       # also sample the bot's event loop with py-spy (pip install
                                                   # py-spy): OUT (collapsed stacks) and the top frames printed

The bot runs as `kimchi-bot` runs, in its own process; the fake Bot API here stamps each step as it sees
it: the update queued, the long poll answering with it, getFile, the file download, sendMessage.
The engine's time per photo comes from the bot's log line. Steps (medians, ms):

    poll      queued -> getUpdates answers (the fake's side of the long poll)
    dispatch  getUpdates answered -> getFile arrives (PTB parses, the gate, rate limit, the handler starts)
    get_file  getFile arrives -> the download arrives
    engine    classify() as the bot logs it (queue, decode, network)
    reply     the download arrives -> sendMessage arrives, minus engine (body read, keyboard, PTB's send)
    overhead  total - engine
    api       the fake's own time answering getFile and serving the file (handler entered -> answer made)
    bot_own   issue 13's measure: the update leaving the fake -> the answer reaching it, minus engine and
              api: what the bot itself adds (both ends' HTTP handling and the loopback are still in it)

It then times the Bot API calls a photo makes, alone, in this process against the same fake (so both
ends' Python is counted, as in the steps above): getFile, the download, sendMessage with the answer's
keyboard, through the bot's own Application (its rate limiter and connection pool), with each
KIMCHI_HTTP_CLIENT. `--client httpx` runs the whole bot on PTB's httpx client instead of aiohttp.
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
from bot_bench import engine_times  # noqa: E402
from common import bot_process, machine, photos, report, trained_model  # noqa: E402


def stamped_fake(token: str):
    """A FakeTelegram that also stamps each request's service span (its handler entered, its answer made)
    and, for the long poll and the downloads, which update or file it served."""
    from tests.telegram_fake import FakeTelegram

    class Stamped(FakeTelegram):
        def __init__(self, token: str) -> None:
            super().__init__(token)
            self.polled: dict[int, float] = {}  # update_id -> when getUpdates answered with it
            self.spans: dict[int, tuple[float, float]] = {}  # id(Call) -> (handler entered, answer made)
            self.file_spans: dict[str, tuple[float, float]] = {}  # file id -> the same for its download

        async def _api(self, request):
            arrived = time.monotonic()
            before = len(self.calls)
            response = await super()._api(request)
            if len(self.calls) > before:  # one photo at a time: the call this request made
                self.spans[id(self.calls[-1])] = (arrived, time.monotonic())
            return response

        async def _m_getUpdates(self, params, files):
            result = await super()._m_getUpdates(params, files)
            now = time.monotonic()
            for update in result:
                self.polled.setdefault(update["update_id"], now)
            return result

        async def _file(self, request):
            arrived = time.monotonic()
            file_id = request.match_info["path"].split("/")[-1].rsplit(".", 1)[0]
            response = await super()._file(request)
            self.file_spans.setdefault(file_id, (arrived, time.monotonic()))
            return response

    return Stamped(token)


async def profile(home_dir: Path | None, n: int, spy_out: Path | None, client: str = "aiohttp") -> dict:
    from models.home import Home
    from tests.botkit import TOKEN
    from tests.telegram_fake import user

    home = Home(home_dir or Path(tempfile.mkdtemp(prefix="kimchi-bot-profile-"))).ensure()
    trained_model(home.root, arch="efficientnet_lite0", size=64, presize=160, epochs=1)
    blobs = photos(n + 3)
    fake = await stamped_fake(TOKEN).start()
    log_file = home.logs / "kimchi-bot.log"
    extra = {"KIMCHI_QUEUE_LIMIT": "512", "KIMCHI_RATE_LIMIT": "0", "KIMCHI_LOG_LEVEL": "INFO",
             "KIMCHI_HTTP_CLIENT": client}
    spy = None
    steps: dict[str, list[float]] = {k: [] for k in ("poll", "dispatch", "get_file", "reply", "total", "api")}
    uids: list[tuple[str, float, float, float]] = []
    async with bot_process(home, fake, **extra) as process:
        try:
            person = user(4242)
            for i, data in enumerate(blobs):
                pushed = time.monotonic()
                sent = await fake.send_photo(person, data)
                reply = await fake.reply_to(sent, timeout=120)
                if i < 3:  # warm-up
                    if i == 2 and spy_out is not None:
                        spy = _start_py_spy(process.pid, spy_out)
                    loop_cpu = _thread_cpu_s(process.pid)
                    continue
                file_id = sent["photo"][-1]["file_id"]
                get_file = next(c for c in fake.calls if c.method == "getFile" and c.params.get("file_id") == file_id)
                update_id = max(fake.polled)  # one at a time: the newest update is this photo's
                polled, fetched = fake.polled[update_id], fake.file_spans[file_id][0]
                steps["poll"].append(polled - pushed)
                steps["dispatch"].append(get_file.at - polled)
                steps["get_file"].append(fetched - get_file.at)
                steps["total"].append(reply.at - pushed)
                # The Bot API's own time: the fake answering getFile and serving the file (Telegram's
                # servers and the network in real life, not the bot's).
                api = sum(answered - arrived for arrived, answered in (fake.spans[id(get_file)], fake.file_spans[file_id]))
                steps["api"].append(api)
                own = fake.spans[id(reply)][0] - polled - api  # update out -> answer in, less the API's time
                uids.append((sent["photo"][-1]["file_unique_id"], reply.at - fetched, reply.at - pushed, own))
                await asyncio.sleep(0.05)  # one user, one photo at a time, as a person sends them
            loop_cpu = _thread_cpu_s(process.pid) - loop_cpu
        finally:
            if spy is not None:
                spy.send_signal(2)  # SIGINT: py-spy writes its file and exits
                spy.wait(60)
    await asyncio.sleep(0.2)
    spent = engine_times(log_file)
    engine = [spent[u] for u, _, _, _ in uids if u in spent]
    steps["reply"] = [after - spent[u] for u, after, _, _ in uids if u in spent]
    steps["engine"] = engine
    steps["overhead"] = [total - spent[u] for u, _, total, _ in uids if u in spent]
    steps["bot_own"] = [own - spent[u] for u, _, _, own in uids if u in spent]
    result = {"machine": machine(), "photos": len(uids), "client": client,
              "median_ms": {k: round(1000 * statistics.median(v), 2) for k, v in steps.items() if v},
              # CPU the bot's event-loop thread ran per photo (the kernel's count; engine threads not in it)
              "loop_cpu_ms_per_photo": round(1000 * loop_cpu / max(1, len(uids)), 2)}
    if spy_out is not None:
        result["event_loop"] = _loop_profile(spy_out)
    return result


async def request_costs(client: str, n: int = 200) -> dict:
    """Median ms per Bot API exchange, through the bot's Application (with this KIMCHI_HTTP_CLIENT) against
    the fake, one at a time."""
    from bot.app import build_application
    from bot.keyboards import answer_keyboard
    from bot.settings import Settings
    from models.home import Home
    from tests.botkit import TOKEN, bot_env
    from tests.telegram_fake import FakeTelegram

    fake = await FakeTelegram(TOKEN).start()
    home = Home(Path(tempfile.mkdtemp(prefix="kimchi-requests-"))).ensure()
    app = build_application(Settings.load(environ=bot_env(home, fake, KIMCHI_HTTP_CLIENT=client), env_file=None))
    await app.initialize()
    data = photos(1)[0]
    costs: dict[str, list[float]] = {"getFile": [], "download": [], "sendMessage+keyboard": []}
    try:
        for _ in range(n):
            file_id = fake.add_file(data)
            t0 = time.perf_counter()
            tg_file = await app.bot.get_file(file_id)
            t1 = time.perf_counter()
            await tg_file.download_as_bytearray()
            t2 = time.perf_counter()
            await app.bot.send_message(42, "깍두기 — 94%", reply_markup=answer_keyboard(1, "ko"))
            t3 = time.perf_counter()
            for key, spent in zip(costs, (t1 - t0, t2 - t1, t3 - t2)):
                costs[key].append(spent)
            await asyncio.sleep(0.04)  # under the rate limiter's 30 messages a second, which would delay it
    finally:
        await app.shutdown()
        await fake.stop()
    return {key: round(1000 * statistics.median(values), 2) for key, values in costs.items()}


def _thread_cpu_s(pid: int, tid: int | None = None) -> float:
    """Seconds thread `tid` (default: the main thread, the bot's event loop) has run on a CPU."""
    return int(Path(f"/proc/{pid}/task/{tid or pid}/schedstat").read_text().split()[0]) / 1e9


def _start_py_spy(pid: int, out: Path):
    import subprocess

    return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--rate", "1000", "--format", "raw",
                             "--output", str(out), "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _loop_profile(collapsed: Path, top: int = 15) -> dict:
    """The event-loop thread's samples (threads started by the engine or aiosqlite are left out): by the
    innermost frame of the bot's own code (`-` when none is on the stack: PTB's and httpx's own tasks), and
    by the leaf's package. Samples in select() or a socket write are the loop waiting for the GIL."""
    from collections import Counter

    own, leaves, total = Counter(), Counter(), 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        parts = stack.split(";")
        if parts[0].startswith("Thread._bootstrap"):
            continue
        total += int(count)
        ours = [f for f in parts if "(bot/" in f or "(models/" in f]
        own[ours[-1] if ours else "-"] += int(count)
        leaves[_module(parts[-1])] += int(count)
    return {"samples": total, "bot_frames": own.most_common(top), "leaf_packages": leaves.most_common(top)}


def _module(frame: str) -> str:
    """'fn (path/to/site-packages/pkg/mod.py:12)' -> 'pkg'."""
    where = frame.rpartition("(")[2]
    path = where.split(":")[0]
    for anchor in ("site-packages/", "python3.11/"):
        path = path.split(anchor, 1)[-1]
    return path.split("/")[0].removesuffix(".py") or frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path)
    parser.add_argument("-n", type=int, default=60, help="photos (after 3 for warm-up)")
    parser.add_argument("--py-spy", dest="spy", type=Path, metavar="OUT", help="sample the bot with py-spy into OUT")
    parser.add_argument("--client", choices=["aiohttp", "httpx"], default="aiohttp", help="KIMCHI_HTTP_CLIENT")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = asyncio.run(profile(args.home, args.n, args.spy, args.client))
    result["request_ms"] = {client: asyncio.run(request_costs(client)) for client in ("aiohttp", "httpx")}
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, ensure_ascii=False, indent=1))
    report(result, args.out)


if __name__ == "__main__":
    main()
