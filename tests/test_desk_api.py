"""The review desk over plain HTTP, against the real bot server, SQLite file and fake Bot API: who gets in (and
the 403s with their log lines), the grid's filters and order, bulk decisions through the ledger, photos by
opaque id with cached thumbnails, and `/desk` in the chat. The page in a real browser: tests/test_desk_browser.py."""
import asyncio
import json
import sqlite3

import httpx
import pytest

from models.labels import NOT_KIMCHI
from tests.botkit import ADMIN, TOKEN, buttons, rows, running_bot, until
from tests.deskkit import LABELLERS, desk_bot, init_data, login_link, seed_pending
from tests.telegram_fake import user


def sign_in(client: httpx.AsyncClient, url: str, data: str):
    return client.post(f"{url}api/session", json={"init_data": data})


async def session(client, url) -> dict:
    answer = await sign_in(client, url, init_data())
    assert answer.status_code == 200, answer.text
    body = answer.json()
    client.headers["Authorization"] = f"Bearer {body['token']}"
    return body


async def test_only_admins_get_in_and_every_refusal_is_403_with_its_reason(home, fake, caplog):
    await seed_pending(home, 4)
    async with desk_bot(home, fake) as (app, url), httpx.AsyncClient() as client:
        page = await client.get(url)
        assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
        assert "<script src=" in page.text and "<script>" not in page.text  # no inline script
        cases = {"another bot's token": init_data(token="987654321:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw1"),
                 "2 hours old": init_data(age_s=7200), "not an admin": init_data(user_id=5001),
                 "tampered": init_data().replace("Admin", "Admim")}
        for why, data in cases.items():
            answer = await sign_in(client, url, data)
            assert answer.status_code == 403, why
            assert answer.json()["error"], why
        assert "hash does not match" in caplog.text and "s old" in caplog.text and "is not an admin" in caplog.text
        assert (await client.get(f"{url}api/pending")).status_code == 401  # no session at all

        link = login_link(app)
        first = await client.get(link, follow_redirects=False)
        assert first.status_code == 303 and "kimchi_desk" in first.headers["set-cookie"]
        cookie = first.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        replay = await httpx.AsyncClient().get(link)
        assert replay.status_code == 403 and "used again" in caplog.text

        body = await session(client, url)
        ids = [item["id"] for item in (await client.get(f"{url}api/pending")).json()["items"]]
        without = await client.post(f"{url}api/decide", json={"ids": ids, "action": "accept"})
        wrong = await client.post(f"{url}api/decide", json={"ids": ids, "action": "accept"},
                                  headers={"X-CSRF-Token": "x" * 43})
        assert without.status_code == wrong.status_code == 403 and "CSRF" in caplog.text
        assert all(r["status"] == "pending" for r in rows(home, "SELECT status FROM corrections"))
        assert body["admin"]["id"] == ADMIN and body["lang"] == "ko"
        assert [entry["name"] for entry in body["labels"]][-1] == NOT_KIMCHI


async def test_filter_sort_and_decide_in_bulk_as_review_does(home, fake):
    await seed_pending(home, 40)
    async with desk_bot(home, fake) as (app, url), httpx.AsyncClient() as client:
        body = await session(client, url)
        client.headers["X-CSRF-Token"] = body["csrf"]
        grid = (await client.get(f"{url}api/pending", params={"label": "파김치", "limit": 100})).json()
        assert grid["total"] == 10 and {item["label"] for item in grid["items"]} == {"파김치"}
        assert grid["counts"]["label"]["파김치"] == 10
        agreement = [item["agreement"] for item in grid["items"]]
        assert agreement == sorted(agreement)  # the labels the model disagrees with most first
        one = grid["items"][0]
        assert one["user"]["name"] in dict(LABELLERS).values() and len(one["top"]) == 3 and one["votes_for"] == 1

        ids = [item["id"] for item in grid["items"]]
        done = (await client.post(f"{url}api/decide", json={"ids": ids, "action": "accept"})).json()
        assert done == {"decided": 10, "skipped": 0, "blocked_users": 0, "rejected_by_block": 0, "pending_left": 30}
        decided = rows(home, f"SELECT status, basis, decided_by FROM corrections WHERE id IN ({','.join('?' * 10)})",
                       tuple(ids))
        assert {tuple(r) for r in decided} == {("accepted", "admin", ADMIN)}
        again = (await client.post(f"{url}api/decide", json={"ids": ids[:3], "action": "reject"})).json()
        assert again["decided"] == 0 and again["skipped"] == 3  # decided already: nothing changes
        # a label its author changed after the grid showed it is not decided unseen: it stays pending
        shown = (await client.get(f"{url}api/pending", params={"label": "열무김치"})).json()["items"][:2]
        with sqlite3.connect(home.database) as con:  # the author relabels the first one meanwhile
            con.execute("UPDATE corrections SET corrected_label='깍두기' WHERE id=?", (shown[0]["id"],))
        late = (await client.post(f"{url}api/decide", json={"ids": [i["id"] for i in shown],
                                                           "seen": [i["label"] for i in shown],
                                                           "action": "accept"})).json()
        assert (late["decided"], late["skipped"]) == (1, 1)
        assert rows(home, "SELECT status FROM corrections WHERE id=?", (shown[0]["id"],))[0][0] == "pending"

        other = (await client.get(f"{url}api/pending", params={"label": "배추김치"})).json()["items"][0]
        moved = await client.post(f"{url}api/decide", json={"ids": [other["id"]], "action": "relabel",
                                                            "label": NOT_KIMCHI})
        assert moved.json()["decided"] == 1
        # the admin's label is trained on; the author's own label was wrong, so it earns them nothing
        (row,) = rows(home, "SELECT corrected_label, status, basis FROM corrections WHERE id=?", (other["id"],))
        assert tuple(row) == (NOT_KIMCHI, "accepted", "relabelled")

        author = other["user"]["id"]
        mine = [i["id"] for i in (await client.get(f"{url}api/pending", params={"user": author})).json()["items"]]
        blocked = (await client.post(f"{url}api/decide", json={"ids": mine[:1], "action": "block"})).json()
        assert blocked["blocked_users"] == 1 and blocked["rejected_by_block"] >= len(mine)
        assert rows(home, "SELECT blocked FROM users WHERE user_id=?", (author,))[0][0] == 1

        # the chat's /review sees the same queue: nothing decided on the desk comes back there
        admin = user(ADMIN, "en")
        await fake.send_text(admin, "/review")
        (shown,) = await fake.wait_for(lambda call: call.method == "sendPhoto")
        item_id = int(buttons(shown)[0][0]["callback_data"].split(":")[2])
        assert rows(home, "SELECT status FROM corrections WHERE id=?", (item_id,))[0][0] == "pending"
        # decided on the desk while its /review message is open: the stale tap changes nothing and says so
        await client.post(f"{url}api/decide", json={"ids": [item_id], "action": "reject"})
        message = {"message_id": shown.result["message_id"], "chat": {"id": ADMIN, "type": "private"},
                   "date": 0, "photo": shown.result.get("photo", [])}
        await fake.tap(admin, message, f"rv:a:{item_id}")
        note = await fake.wait_for(lambda c: c.method == "sendMessage"
                                   and "already decided" in c.params.get("text", ""))
        assert note and rows(home, "SELECT status FROM corrections WHERE id=?", (item_id,))[0][0] == "rejected"
        bad = await client.get(f"{url}api/pending", params={"label": "<script>"})
        assert bad.status_code == 400 and bad.json()["error"]


async def test_photos_by_opaque_id_and_thumbnails_made_once(home, fake):
    await seed_pending(home, 2)
    async with desk_bot(home, fake) as (app, url), httpx.AsyncClient() as client:
        unsigned = await client.get(f"{url}api/photo/{'0' * 64}")
        assert unsigned.status_code == 401
        await session(client, url)
        item = (await client.get(f"{url}api/pending")).json()["items"][0]
        first = await client.get(f"{url}api/photo/{item['photo']}")
        assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
        cached = home.corrections / ".thumbs" / f"{item['photo']}.jpg"
        made = cached.stat().st_mtime_ns
        second = await client.get(f"{url}api/photo/{item['photo']}", headers={"If-None-Match": first.headers["etag"]})
        assert second.status_code == 304 and cached.stat().st_mtime_ns == made
        full = await client.get(f"{url}api/photo/{item['photo']}", params={"size": "full"})
        assert len(full.content) > len(first.content) * 0 and full.status_code == 200
        for wrong in ("0" * 64, "..%2F..%2Fkimchi.sqlite3", "a" * 63):
            assert (await client.get(f"{url}api/photo/{wrong}")).status_code == 404
        # the thumbnail goes with its photo: /forget's erase (and the retention purge) leave no copy behind
        await app.bot_data["services"].personal.forget(item["user"]["id"])
        await until(lambda: not cached.exists(), "the thumbnail's removal")
        assert (await client.get(f"{url}api/photo/{item['photo']}")).status_code == 404


async def said(fake, who: dict, text: str, chat_id: int | None = None) -> str:
    """What the bot sends to the chat next after `who` sends `text` there."""
    chat = who["id"] if chat_id is None else chat_id
    before = len(fake.sent(chat))
    await fake.send_text(who, text, chat_id=chat)
    calls = await fake.wait_for(lambda c: c.method == "sendMessage" and int(c.params["chat_id"]) == chat,
                                count=before + 1)
    call = calls[before]
    return call.params["text"]


async def test_desk_command_sends_a_one_time_link_in_private_only(home, fake):
    admin = user(ADMIN, "en")
    async with desk_bot(home, fake) as (app, url):
        text = await said(fake, admin, "/desk")
        link = next(word for word in text.split() if word.startswith(url))
        async with httpx.AsyncClient() as client:
            assert (await client.get(link, follow_redirects=False)).status_code == 303
            assert (await client.get(link, follow_redirects=False)).status_code == 403
        assert url not in await said(fake, admin, "/desk", chat_id=-100123)
        assert url not in await said(fake, user(5001, "en"), "/desk")


async def test_the_desk_is_off_unless_configured(home, fake):
    admin = user(ADMIN, "en")
    async with running_bot(home, fake) as app:
        assert "desk" not in app.bot_data
        text = await said(fake, admin, "/desk")
        assert "KIMCHI_DESK_URL" in text
    assert TOKEN not in text


@pytest.mark.parametrize("url", ["https://bot.example.com/desk", "ftp://x/desk/", "https:///desk/",
                                 "https://bot.example.com/kimchi/desk/"])
def test_a_bad_desk_url_is_one_sentence(url, home):
    from bot.settings import Settings
    from models.errors import KimchiError

    with pytest.raises(KimchiError, match="KIMCHI_DESK_URL must be the desk's full URL with the path /desk/"):
        Settings.load({"TELEGRAM_BOT_TOKEN": TOKEN, "KIMCHI_DESK_URL": url}, env_file=None)


async def test_over_https_admins_get_the_mini_app_in_their_menu_and_under_desk(home, fake):
    """A public HTTPS KIMCHI_DESK_URL (the proxy in front terminates TLS): each admin's chat menu button opens
    the desk as a Mini App, and /desk offers it beside the browser link."""
    from tests.botkit import free_port

    port = free_port()
    admin = user(ADMIN, "en")
    await seed_pending(home, 1)
    async with running_bot(home, fake, KIMCHI_LISTEN=f"127.0.0.1:{port}",
                           KIMCHI_DESK_URL="https://bot.example.com/desk/"):
        (menu,) = await fake.wait_for(lambda c: c.method == "setChatMenuButton")
        assert int(menu.params["chat_id"]) == ADMIN
        button = menu.params["menu_button"]
        button = json.loads(button) if isinstance(button, str) else button
        assert button["type"] == "web_app" and button["web_app"]["url"] == "https://bot.example.com/desk/"
        before = len(fake.sent(ADMIN))
        await fake.send_text(admin, "/desk")
        call = (await fake.wait_for(lambda c: c.method == "sendMessage" and int(c.params["chat_id"]) == ADMIN,
                                    count=before + 1))[before]
        assert "https://bot.example.com/desk/login/" in call.params["text"]
        assert buttons(call)[0][0]["web_app"]["url"] == "https://bot.example.com/desk/"
        await fake.send_text(admin, "/review")  # the grid is one tap away from /review too
        (shown,) = await fake.wait_for(lambda c: c.method == "sendPhoto")
        assert buttons(shown)[1][0]["web_app"]["url"] == "https://bot.example.com/desk/"
        async with httpx.AsyncClient() as client:  # the same server, reached directly: the cookie is Secure
            link = call.params["text"].split("https://bot.example.com")[1].split()[0]
            answer = await client.get(f"http://127.0.0.1:{port}{link}", follow_redirects=False)
            assert answer.status_code == 303 and "secure" in answer.headers["set-cookie"].lower()


def test_a_login_link_never_reaches_a_log_line():
    """PTB logs the text of every message it sends at DEBUG; /desk's message holds a live login link."""
    import logging

    from models.logs import Redacting

    formatter = Redacting(logging.Formatter("%(message)s"), [TOKEN])
    record = logging.LogRecord("telegram.Bot", logging.DEBUG, __file__, 1, "Calling sendMessage with %s",
                               ({"text": "link:\nhttps://bot.example.com/desk/login/Zx_9-aB3cD4eF5gH6iJ7kL8mN9"},),
                               None)
    line = formatter.format(record)
    assert "/desk/login/<redacted>" in line and "Zx_9" not in line


async def test_models_and_users_tabs_act_through_the_same_serving_and_ledger(trained_copy, fake):
    """Promote and rollback through the lock /promote uses; a retrain the supervisor refuses says so (409);
    trust and block as /trust and /block do; every write needs the CSRF token."""
    from tests.modelkit import publish_relabelled

    home = trained_copy.home
    other = publish_relabelled(trained_copy.registry, trained_copy.version)
    await seed_pending(home, 4)
    async with desk_bot(home, fake) as (app, url), httpx.AsyncClient() as client:
        body = await session(client, url)
        models = (await client.get(f"{url}api/models")).json()
        assert models["current"] == trained_copy.version and models["retrain"]["running"] is False
        assert [v["name"] for v in models["versions"]] == [other, trained_copy.version]
        assert (await client.post(f"{url}api/promote", json={"version": other})).status_code == 403  # no CSRF
        client.headers["X-CSRF-Token"] = body["csrf"]
        promoted = (await client.post(f"{url}api/promote", json={"version": other})).json()
        assert promoted == {"current": other, "previous": trained_copy.version}
        assert app.bot_data["services"].classifier.version == other  # served now, not only pointed at
        back = (await client.post(f"{url}api/rollback", json={})).json()
        assert back["current"] == trained_copy.version
        missing = await client.post(f"{url}api/promote", json={"version": "v99"})
        assert missing.status_code == 409 and "v99" in missing.json()["error"]
        picture = await client.get(f"{url}api/models/{trained_copy.version}/pictures/..%2Fmodel.onnx")
        assert picture.status_code == 404

        refused = await client.post(f"{url}api/retrain", json={})  # seeded labels are pending: nothing to train
        assert refused.status_code == 409 and "클래스가 0개" in refused.json()["error"]  # /retrain's own sentence

        people = (await client.get(f"{url}api/users")).json()["users"]
        assert {p["id"] for p in people} == {uid for uid, _ in LABELLERS} and all(p["pending"] == 1 for p in people)
        target = people[0]["id"]
        assert (await client.post(f"{url}api/users/{target}", json={"action": "trust"})).json()["ok"]
        assert rows(home, "SELECT trusted FROM users WHERE user_id=?", (target,))[0][0] == 1
        blocked = (await client.post(f"{url}api/users/{target}", json={"action": "block"})).json()
        assert blocked["rejected"] == 1
        assert tuple(rows(home, "SELECT trusted, blocked FROM users WHERE user_id=?", (target,))[0]) == (0, 1)
        assert (await client.post(f"{url}api/users/{target}", json={"action": "adopt"})).status_code == 400


@pytest.mark.slow
async def test_a_retrain_started_on_the_desk_runs_under_the_same_supervisor_and_reports_there(trained_copy, fake):
    """The desk's "start a retrain": the supervisor /retrain uses (a second start is refused while it runs), a
    real trainer, its progress read from /desk/api/models, and the run's end recorded as /retrain records it."""
    from tests.test_retrain import RETRAIN
    from training.importer import import_dataset

    home = trained_copy.home
    import_dataset(trained_copy.data, home.base, presize=160, workers=1)
    async with desk_bot(home, fake, **{**RETRAIN, "KIMCHI_CORRECTION_POLICY": "open"}) as (app, url), \
            httpx.AsyncClient() as client:
        body = await session(client, url)
        client.headers["X-CSRF-Token"] = body["csrf"]
        started = await client.post(f"{url}api/retrain", json={})
        assert started.status_code == 200, started.text
        run_id = started.json()["id"]
        again = await client.post(f"{url}api/retrain", json={})
        assert again.status_code == 409 and str(run_id) in again.json()["error"]
        seen = (await client.get(f"{url}api/models")).json()["retrain"]
        assert seen["running"] and seen["id"] == run_id

        async def finished() -> dict:
            while (state := (await client.get(f"{url}api/models")).json())["retrain"]["running"]:
                await asyncio.sleep(0.5)
            return state

        state = await asyncio.wait_for(finished(), 240)
        assert state["retrain"]["last"]["id"] == run_id
        assert state["retrain"]["last"]["status"] in ("promoted", "kept")
        recorded = rows(home, "SELECT status FROM retrain_runs WHERE id=?", (run_id,))[0][0]
        assert recorded == state["retrain"]["last"]["status"]
        # the admin who started it hears the outcome in their chat, as after /retrain
        candidate = state["retrain"]["last"]["candidate"]
        assert candidate and candidate in [v["name"] for v in state["versions"]]
        await fake.wait_for(lambda c: int(c.params.get("chat_id", 0)) == ADMIN and c.method == "sendMessage"
                            and candidate in str(c.params.get("text", "")), timeout=30)
