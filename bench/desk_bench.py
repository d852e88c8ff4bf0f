"""The review desk (issue 22) with 1,000 pending labels: the grid's first page, thumbnails before and after the
disk cache, a bulk decision on 50 labels, and the admin actions that decide 200 labels in the real page against
those `/review` needs.

    python bench/desk_bench.py [--labels 1000] [--requests 30] [--rounds 5] [--decide 200] [--no-browser]
                               [--out desk.json]

Set-up: a temporary KIMCHI_HOME whose pending labels are made through the real store (tests/deskkit.seed_pending:
a prediction row, then the label with its stored photo, from 4 people over 4 classes; the time this takes is
printed as `seed_s`). The bot then runs as `kimchi-bot` runs, in a process of its own (bench/common.bot_process,
against the fake Bot API of tests/telegram_fake.py, which runs here on a thread of its own), with the desk on at
http://127.0.0.1:PORT/desk/ and the default `trusted` policy; this process is only the client, so the client's
work does not share the server's interpreter and the figures are the server's own. No model is needed: the desk
serves labels, not predictions. The bench signs in as the page does in a Mini App (initData signed with the test
token), then:

1. the grid's first page: `GET /desk/api/pending?sort=disagreement&offset=0&limit=N`, exactly the page's first
   request (N is the page's default page size, read from bot/desk_static/desk.js), `--requests` times after one
   cold request; the server's time is the `Server-Timing: app;dur=` header bot/desk.py sets, the client's time is
   from sending the request to the JSON parsed. Median and p90. Target: <= 300 ms server time.
2. thumbnails of that first page, one after another: the first view (each thumbnail made then, from the stored
   photo; seed_pending's photos are 160x120, so making one costs less here than from a full-size photo), the
   second (served from the disk cache: counted as cached when its file under data/corrections/.thumbs/ existed before
   the request, was not written again and is the bytes served), and a third with If-None-Match (304, no body).
   Median ms per thumbnail, client-side. Target: served from the cache after their first view.
3. a bulk decision: `POST /desk/api/decide` with 50 ids still pending and `accept`, `--rounds` times on fresh
   labels each time (checked in SQLite), client-side end to end. Target: <= 1 s.
4. actions to decide 200 labels: headless Chromium (/usr/bin/chromium and /usr/bin/chromedriver, driven by
   Selenium as tests/test_desk_browser.py drives it) opens the desk as a Mini App (1 action), then, per page,
   Shift+A (select the page) and a (accept); a partial last page would be a click and a Shift+click. Every key and
   click sent is counted; a chord such as Shift+A counts as one action (`actions`), and `keys_strict` counts
   Shift as a key of its own. SQLite must show exactly the 200 labels the page showed gone from pending to
   accepted by the admin. `/review` needs 1 command, then one tap on "accept" per label, since the next label
   follows each tap (bot/review.py): 1 + 200 = 201. That count is checked live: `/review`, then `--review-taps`
   taps on accept through the fake Bot API, each deciding one label and bringing the next. Target: <= 1/10 of
   /review's actions. Skipped, and said so, when Chromium or Selenium is missing.

A default run takes about 30 s on 2 cores (seeding the 1,000 labels about 11 s of it, bot start-up a few, Chromium
about 5); the table at the end puts each figure beside its target, the action count judged by `keys_strict`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, bot_process, loadavg, percentile, report  # noqa: E402

import httpx  # noqa: E402

from models.home import Home  # noqa: E402
from tests.botkit import ADMIN, TOKEN, free_port  # noqa: E402
from tests.deskkit import Loop, init_data, page_wait, seed_pending  # noqa: E402
from tests.telegram_fake import FakeTelegram, user  # noqa: E402

DESK_JS = ROOT / "bot" / "desk_static" / "desk.js"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SERVER_TIMING = re.compile(r"\bapp;dur=([0-9.]+)")
TARGET_SERVER_MS, TARGET_DECIDE_S, TARGET_RATIO = 300.0, 1.0, 0.1




def page_size() -> int:
    """The page's default page size: `limit` in its initial filters (desk.js)."""
    found = re.search(r"\bf:\s*\{[^}]*\blimit:\s*(\d+)", DESK_JS.read_text(encoding="utf-8"))
    if found is None:
        raise SystemExit(f"desk_bench: no default page size found in {DESK_JS}; pass --limit")
    return int(found.group(1))


def statuses(home: Home, ids: list[int]) -> dict[int, tuple[str, int | None]]:
    con = sqlite3.connect(home.database)
    try:
        marks = ",".join("?" * len(ids))
        return {r[0]: (r[1], r[2]) for r in con.execute(
            f"SELECT id, status, decided_by FROM corrections WHERE id IN ({marks})", ids)}
    finally:
        con.close()


def pending_ids(home: Home) -> list[int]:
    con = sqlite3.connect(home.database)
    try:
        return [r[0] for r in con.execute("SELECT id FROM corrections WHERE status='pending' ORDER BY id")]
    finally:
        con.close()


def ms(seconds: float) -> float:
    return round(1000 * seconds, 1)


def spread(values: list[float]) -> dict[str, float]:
    """Median and p90 of values in ms."""
    return {"median_ms": round(statistics.median(values), 1), "p90_ms": round(percentile(values, 0.9), 1),
            "min_ms": round(min(values), 1), "max_ms": round(max(values), 1)}


def wait_up(client: httpx.Client, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.get("/desk/").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("desk_bench: the desk did not answer within 60 s")
        time.sleep(0.2)


def sign_in(client: httpx.Client) -> dict:
    r = client.post("/desk/api/session", json={"init_data": init_data(language_code="en")})
    r.raise_for_status()
    session = r.json()
    client.headers.update({"Authorization": f"Bearer {session['token']}", "X-CSRF-Token": session["csrf"]})
    return session


# ---- 1. the grid's first page ------------------------------------------------------------------------------------

def grid_first_page(client: httpx.Client, limit: int, requests: int, labels: int) -> tuple[dict, list[dict]]:
    query = f"/desk/api/pending?sort=disagreement&offset=0&limit={limit}"  # the page's own first request

    def one() -> tuple[float, float, dict]:
        start = time.perf_counter()
        r = client.get(query)
        data = r.json()
        client_ms = 1000 * (time.perf_counter() - start)
        r.raise_for_status()
        found = SERVER_TIMING.search(r.headers.get("server-timing", ""))
        if found is None:
            raise SystemExit("desk_bench: /desk/api/pending has no Server-Timing header")
        return float(found.group(1)), client_ms, data

    cold_server, cold_client, data = one()
    assert data["total"] == labels and len(data["items"]) == min(limit, labels), (data["total"], len(data["items"]))
    servers, clients = [], []
    for _ in range(requests):
        server, client_ms, data = one()
        servers.append(server)
        clients.append(client_ms)
    size = len(json.dumps(data, ensure_ascii=False).encode())
    return {"query": query, "page_size": limit, "pending": data["total"], "items": len(data["items"]),
            "body_kb": round(size / 1024, 1), "requests": requests,
            "cold": {"server_ms": round(cold_server, 1), "client_ms": round(cold_client, 1)},
            "server": spread(servers), "client": spread(clients)}, data["items"]


# ---- 2. thumbnails -----------------------------------------------------------------------------------------------

def thumbnails(client: httpx.Client, home: Home, items: list[dict]) -> dict:
    folder = home.corrections / ".thumbs"
    photos = list(dict.fromkeys(item["photo"] for item in items))
    before = sum((folder / f"{sha}.jpg").is_file() for sha in photos)

    def get(sha: str, etag: str | None = None) -> tuple[float, httpx.Response]:
        headers = {"If-None-Match": etag} if etag else {}
        start = time.perf_counter()
        r = client.get(f"/desk/api/photo/{sha}", params={"size": "thumb"}, headers=headers)
        r.read()
        return 1000 * (time.perf_counter() - start), r

    first, etags, stamps, made = [], {}, {}, 0
    for sha in photos:
        took, r = get(sha)
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg", (r.status_code, r.text[:200])
        first.append(took)
        etags[sha] = r.headers.get("etag")
        path = folder / f"{sha}.jpg"
        if path.is_file():
            made += 1
            stat = path.stat()
            stamps[sha] = (stat.st_ino, stat.st_mtime_ns)
    second, cached = [], 0
    for sha in photos:
        path = folder / f"{sha}.jpg"
        there = path.is_file()
        took, r = get(sha)
        assert r.status_code == 200, r.status_code
        second.append(took)
        stat = path.stat() if path.is_file() else None
        if there and stat is not None and (stat.st_ino, stat.st_mtime_ns) == stamps.get(sha) \
                and r.content == path.read_bytes():
            cached += 1
    revalidated, not_modified = [], 0
    for sha in photos:
        took, r = get(sha, etags[sha])
        revalidated.append(took)
        not_modified += r.status_code == 304 and not r.content
    sizes = [(folder / f"{sha}.jpg").stat().st_size for sha in photos if (folder / f"{sha}.jpg").is_file()]
    return {"thumbnails": len(photos), "cached_before_first_view": before, "made_on_first_view": made,
            "served_from_cache_on_second_view": cached, "not_modified_304": not_modified,
            "thumb_kb_median": round(statistics.median(sizes) / 1024, 1) if sizes else None,
            "first_view": spread(first), "second_view": spread(second), "if_none_match": spread(revalidated)}


# ---- 3. bulk decisions -------------------------------------------------------------------------------------------

def bulk_decisions(client: httpx.Client, home: Home, batch: int, rounds: int) -> dict:
    times, answers = [], []
    for _ in range(rounds):
        ids = pending_ids(home)[-batch:]  # still pending: fresh labels each round
        assert len(ids) == batch, f"only {len(ids)} labels left pending"
        start = time.perf_counter()
        r = client.post("/desk/api/decide", json={"ids": ids, "action": "accept"})
        body = r.json()
        times.append(time.perf_counter() - start)
        r.raise_for_status()
        assert body["decided"] == batch and body["skipped"] == 0, body
        after = statuses(home, ids)
        assert all(after[i] == ("accepted", ADMIN) for i in ids), "a decided label is not accepted in SQLite"
        answers.append(body["pending_left"])
    return {"batch": batch, "rounds": rounds, "median_s": round(statistics.median(times), 3),
            "max_s": round(max(times), 3), "runs_s": [round(t, 3) for t in times], "pending_left": answers}


# ---- 4. actions: the page in Chromium, and /review ---------------------------------------------------------------

def browser_actions(url: str, home: Home, target: int, limit: int) -> dict:
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        return {"skipped": f"no {CHROMIUM} or {CHROMEDRIVER} (apt-get install chromium chromium-driver)"}
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys
    except ImportError:
        return {"skipped": "selenium is not installed"}

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--lang=en-US", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    started = time.perf_counter()
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    browser_start = time.perf_counter() - started
    driver.set_window_size(1280, 900)

    def wait(probe: Callable[[], Any], what: str, timeout: float = 30) -> Any:
        return page_wait(probe, what, timeout, every=0.02)

    def cards() -> list[int]:
        return [int(c.get_attribute("data-id")) for c in driver.find_elements(By.CSS_SELECTOR, "#grid .card")]

    def settled() -> bool:
        return driver.find_element(By.ID, "grid").get_attribute("aria-busy") is None

    def selected() -> int:
        return len(driver.find_elements(By.CSS_SELECTOR, "#grid .card[aria-selected='true']"))

    before = set(pending_ids(home))
    actions = strict = 0
    log: list[str] = []
    shown: list[int] = []
    try:
        start = time.perf_counter()
        driver.get(f"{url}#tgWebAppData={quote(init_data(language_code='en'), safe='')}&tgWebAppVersion=7.0"
                   "&tgWebAppPlatform=tdesktop")  # Telegram opens the Mini App: the admin's one tap
        actions, strict = actions + 1, strict + 1
        log.append("open")
        wait(lambda: "ready" in driver.find_element(By.TAG_NAME, "body").get_attribute("class") and settled()
             and cards(), "the desk signed in with its grid")
        opened = time.perf_counter() - start
        decided = 0
        while decided < target:
            ids = cards()
            assert ids, "the grid ran out of pending labels"
            left = target - decided
            if left >= len(ids):  # the whole page: Shift+A, then a
                ActionChains(driver).key_down(Keys.SHIFT).send_keys("a").key_up(Keys.SHIFT).perform()
                actions, strict = actions + 1, strict + 2
                log.append("Shift+A")
                chosen = ids
            else:  # part of the page: a tap on the first card, a Shift+click on the last, then a
                elements = driver.find_elements(By.CSS_SELECTOR, "#grid .card")
                for element, shift in ((elements[0], False), (elements[left - 1], True)):
                    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
                    if shift:
                        ActionChains(driver).key_down(Keys.SHIFT).click(element).key_up(Keys.SHIFT).perform()
                    else:
                        element.click()
                actions, strict = actions + 2, strict + 3
                log += ["click", "Shift+click"]
                chosen = ids[:left]
            wait(lambda: selected() == len(chosen), f"{len(chosen)} cards selected")
            ActionChains(driver).send_keys("a").perform()
            actions, strict = actions + 1, strict + 1
            log.append("a")
            gone = set(chosen)
            wait(lambda: settled() and not gone & set(cards()) and driver.find_element(By.ID, "toast").is_displayed(),
                 "the accepted cards left the grid and the page refilled")
            shown += chosen
            decided += len(chosen)
        elapsed = time.perf_counter() - start
        severe = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
    after = statuses(home, sorted(before))
    moved = sorted(i for i in before if after[i] == ("accepted", ADMIN))
    assert moved == sorted(shown) and len(moved) == target, \
        f"SQLite shows {len(moved)} labels accepted, the page decided {len(shown)}"
    return {"decided": len(moved), "verified_in_sqlite": True, "actions": actions, "keys_strict": strict,
            "sequence": log, "page_size": limit, "browser_start_s": round(browser_start, 2),
            "open_s": round(opened, 2), "wall_s": round(elapsed, 2), "page_errors": severe}


async def review_taps(fake: FakeTelegram, home: Home, taps: int) -> dict:
    """`/review`, then a tap on accept under each photo it shows: one label per tap, the next follows."""
    admin = user(ADMIN, "en", "admin")

    def photos(call) -> bool:
        return call.method == "sendPhoto" and int(call.params.get("chat_id", 0)) == ADMIN

    seen = sum(map(photos, fake.calls))
    start = time.perf_counter()
    await fake.send_text(admin, "/review")
    actions, decided = 1, []
    for n in range(taps):
        call = (await fake.wait_for(photos, count=seen + n + 1, timeout=60))[-1]
        markup = call.params.get("reply_markup") or {}
        accept = next(b["callback_data"] for row in markup.get("inline_keyboard", []) for b in row
                      if b.get("callback_data", "").startswith("rv:a:"))
        await fake.tap(admin, call.result, accept)
        actions += 1
        decided.append(int(accept.split(":")[2]))
    await fake.wait_for(photos, count=seen + taps + 1, timeout=60)  # the last tap brought the next label
    elapsed = time.perf_counter() - start
    after = statuses(home, decided)
    assert len(set(decided)) == taps and all(after[i] == ("accepted", ADMIN) for i in decided), after
    return {"taps": taps, "decided": taps, "actions": actions, "per_label": (actions - 1) / taps,
            "wall_s": round(elapsed, 2)}


# ---- the run -----------------------------------------------------------------------------------------------------

def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "NO")


def table(results: dict) -> str:
    grid, thumbs, bulk, acts = results["grid"], results["thumbnails"], results["decide"], results["actions"]
    review_actions = acts["review_actions"]
    rows = [
        ("grid first page, server (median / p90)",
         f"{grid['server']['median_ms']:.1f} / {grid['server']['p90_ms']:.1f} ms", f"<= {TARGET_SERVER_MS:.0f} ms",
         verdict(grid["server"]["median_ms"] <= TARGET_SERVER_MS)),
        ("grid first page, client (median / p90)",
         f"{grid['client']['median_ms']:.1f} / {grid['client']['p90_ms']:.1f} ms", "-", ""),
        ("thumbnail 1st view / 2nd / 304 (median)",
         f"{thumbs['first_view']['median_ms']:.1f} / {thumbs['second_view']['median_ms']:.1f} / "
         f"{thumbs['if_none_match']['median_ms']:.1f} ms", "-", ""),
        ("thumbnails from the cache on 2nd view",
         f"{thumbs['served_from_cache_on_second_view']}/{thumbs['thumbnails']} (304: {thumbs['not_modified_304']})",
         "all", verdict(thumbs["served_from_cache_on_second_view"] == thumbs["thumbnails"]
                        and thumbs["cached_before_first_view"] == 0)),
        (f"bulk accept of {bulk['batch']}, end to end (median of {bulk['rounds']})", f"{bulk['median_s']:.3f} s",
         f"<= {TARGET_DECIDE_S:g} s", verdict(bulk["median_s"] <= TARGET_DECIDE_S)),
    ]
    page = acts["desk"]
    if "skipped" in page:
        rows.append((f"actions for {acts['labels']} labels", f"skipped: {page['skipped']}",
                     f"<= {review_actions * TARGET_RATIO:g}", verdict(None)))
    else:
        rows.append((f"actions for {acts['labels']} labels: desk vs /review",
                     f"{page['actions']} ({page['keys_strict']} keys) vs {review_actions}",
                     f"<= {review_actions * TARGET_RATIO:g}",
                     verdict(page["keys_strict"] <= review_actions * TARGET_RATIO)))
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    lines = [f"{'figure':<{width}}  {'measured':<{vwidth}}  {'target':<10} met"]
    lines += [f"{name:<{width}}  {value:<{vwidth}}  {target:<10} {ok}" for name, value, target, ok in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=1000, help="pending labels seeded (default 1000)")
    parser.add_argument("--requests", type=int, default=30, help="timed requests of the grid's first page")
    parser.add_argument("--limit", type=int, help="page size (default: the page's own, from desk.js)")
    parser.add_argument("--batch", type=int, default=50, help="labels per bulk decision")
    parser.add_argument("--rounds", type=int, default=5, help="bulk decisions, each on fresh labels")
    parser.add_argument("--decide", type=int, default=200, help="labels the browser decides")
    parser.add_argument("--review-taps", type=int, default=10, help="taps on /review that check its count")
    parser.add_argument("--no-browser", action="store_true", help="skip the Chromium part")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home (its path is printed)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    limit = args.limit or page_size()
    needed = args.batch * args.rounds + (0 if args.no_browser else args.decide) + args.review_taps
    if args.labels < max(needed, limit):
        parser.error(f"--labels must be at least {max(needed, limit)} for these settings")

    work = Path(tempfile.mkdtemp(prefix="kimchi-desk-bench-"))
    home = Home(work / "kimchi-home").ensure()
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "loadavg_before": loadavg()},
                               "labels": args.labels, "bot": "separate process (python -m bot.app)"}
    loop = Loop("desk-bench")
    try:
        start = time.perf_counter()
        loop.run(seed_pending(home, args.labels), timeout=1800)
        results["seed_s"] = round(time.perf_counter() - start, 1)
        print(f"seeded {args.labels} pending labels through the store in {results['seed_s']} s", flush=True)

        fake = loop.run(FakeTelegram(TOKEN).start())
        port = free_port()
        url = f"http://127.0.0.1:{port}/desk/"
        keeper = bot_process(home, fake, KIMCHI_LISTEN=f"127.0.0.1:{port}", KIMCHI_DESK_URL=url,
                             KIMCHI_CORRECTION_POLICY="trusted")
        start = time.perf_counter()
        loop.run(keeper.__aenter__(), timeout=300)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, trust_env=False) as client:
                wait_up(client)
                results["bot_start_s"] = round(time.perf_counter() - start, 1)
                sign_in(client)
                results["grid"], first_page = grid_first_page(client, limit, args.requests, args.labels)
                print("grid:", results["grid"], flush=True)
                results["thumbnails"] = thumbnails(client, home, first_page)
                print("thumbnails:", results["thumbnails"], flush=True)
                results["decide"] = bulk_decisions(client, home, args.batch, args.rounds)
                print("decide:", results["decide"], flush=True)
            desk = {"skipped": "--no-browser"} if args.no_browser else browser_actions(url, home, args.decide, limit)
            print("desk actions:", desk, flush=True)
            check = loop.run(review_taps(fake, home, args.review_taps)) if args.review_taps else None
            print("/review check:", check, flush=True)
        finally:
            loop.run(keeper.__aexit__(None, None, None))
        results["actions"] = {"labels": args.decide, "desk": desk, "review_actions": 1 + args.decide,
                              "review_counted": "1 command (/review) + 1 tap on accept per label (the next label "
                                                "follows each tap)", "review_check": check,
                              "ratio": None if "skipped" in desk else round(desk["keys_strict"] / (1 + args.decide), 3)}
        results["machine"]["loadavg_after"] = loadavg()
        print()
        print(table(results))
        report(results, args.out)
    finally:
        loop.close()
        if args.keep:
            print(f"home kept at {home.root}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
