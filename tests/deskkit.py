"""The review desk under test: a running bot with the desk on (the real server, SQLite file and store), pending
labels made through the real store, Mini App initData signed with the test token, and login links."""
from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

from bot.desk import DeskAuth, desk_link, sign_init_data
from bot.store import Correction, PredictionRecord, Store
from models.home import Home
from models.labels import CLASS_NAMES
from models.status import Source, Status
from tests.botkit import ADMIN, TOKEN, free_port, running_bot
from tests.imagegen import photo_bytes

# (user id, name as Telegram would send it): one with markup in the name, which the page must show as text
LABELLERS = ((5001, "김민지"), (5002, "Alex Kim"), (5003, "<script>alert(1)</script> Lee"), (5004, "박서준 🥬"))


async def seed_pending(home: Home, n: int, classes: int = 4, start: int = 0,
                       labellers: tuple[tuple[int, str], ...] = LABELLERS) -> list[int]:
    """`n` pending labels, made as the bot makes them (a prediction row, then the label with its stored photo),
    spread over `labellers` and the first `classes` classes; the model's top 3 disagree with some of them.
    Returns their correction ids."""
    home.ensure()
    store = await Store.open(home.database, home.corrections)
    ids = []
    try:
        for i in range(start, start + n):
            user, name = labellers[i % len(labellers)]
            truth = i % classes
            data = photo_bytes(truth, seed=20_000 + i, size=(160, 120))
            sha = hashlib.sha256(data).hexdigest()
            wrong = i % 3 == 0  # the model disagrees with a third of the labels
            order = [(truth + 1) % classes, truth, (truth + 2) % classes] if wrong else \
                [truth, (truth + 1) % classes, (truth + 2) % classes]
            first = 0.6 + (i % 7) / 20
            top = tuple(zip((CLASS_NAMES[c] for c in order), (first, (1 - first) * 0.7, (1 - first) * 0.2)))
            guess = top[0][0]
            p = await store.record_prediction(PredictionRecord(
                chat_id=user, user_id=user, message_id=1000 + i, file_id=f"file-{i}", file_unique_id=f"u-{i}",
                sha256=sha, label=guess, confidence=top[0][1], top=top, model_version="v1", user_name=name))
            saved = await store.save_correction(Correction(p, CLASS_NAMES[truth], user, 2000 + i,
                                                           status=Status.PENDING, source=Source.CORRECTION), data)
            ids.append(saved.id)
    finally:
        await store.close()
    return ids


def init_data(user_id: int = ADMIN, age_s: float = 0, token: str = TOKEN, first_name: str = "Admin",
              language_code: str = "ko") -> str:
    """Mini App initData for `user_id`, signed with `token`, `age_s` seconds old."""
    user = json.dumps({"id": user_id, "first_name": first_name, "language_code": language_code},
                      ensure_ascii=False, separators=(",", ":"))
    return sign_init_data({"auth_date": str(int(time.time() - age_s)), "query_id": "AAH-test", "user": user}, token)


@asynccontextmanager
async def desk_bot(home: Home, fake, **extra: str) -> AsyncIterator[tuple[object, str]]:
    """The bot with the desk on at http://127.0.0.1:PORT/desk/: (the Application, the desk's URL)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/desk/"
    settings = {"KIMCHI_CORRECTION_POLICY": "trusted", **extra}
    async with running_bot(home, fake, KIMCHI_LISTEN=f"127.0.0.1:{port}", KIMCHI_DESK_URL=url, **settings) as app:
        yield app, url


def login_link(app, admin: int = ADMIN, lang: str = "en") -> str:
    """A one-time login link, as `/desk` sends one to `admin`."""
    auth: DeskAuth = app.bot_data["desk"]
    return desk_link(app.bot_data["services"].settings, auth, admin, lang)


class Loop:
    """An event loop on a thread of its own: the bot (or a bot process's keeper) and the fake Bot API live there
    while the calling thread drives a browser or plays an HTTP client."""

    def __init__(self, name: str = "desk-bot") -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 90) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def page_wait(probe: Callable[[], Any], what: str, timeout: float = 10, every: float = 0.05) -> Any:
    """`probe()`'s first true value while the page changes under it (a WebDriverException counts as not yet);
    an AssertionError naming `what` after `timeout` s."""
    from selenium.common.exceptions import WebDriverException

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except WebDriverException:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        time.sleep(every)
