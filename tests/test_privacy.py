"""People's data through the fake Bot API and real SQLite: /privacy says what the schema keeps, /mydata gives
exactly one person's rows and photos, /forget erases all of it and nothing of anyone else's, and the retention
purge takes what is older than the settings and nothing newer."""
import csv
import io
import sqlite3
import zipfile

import pytest

from bot.personal import IMPERSONAL, PERSONAL, PersonalData
from bot.store import Correction, PredictionRecord, Store
from models.corpus import corpus_rows
from models.schema import MIGRATIONS
from tests.botkit import ADMIN, answered, buttons, rows, running_bot
from tests.imagegen import photo_bytes
from tests.telegram_fake import user
from training.cli import main as train_main


def test_privacy_covers_every_column_of_the_schema():
    con = sqlite3.connect(":memory:")
    for script in MIGRATIONS:
        con.executescript(script)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == set(PERSONAL) | set(IMPERSONAL), "a new table: say in /privacy what it keeps (bot/personal.py)"
    for table, covered in PERSONAL.items():
        columns = {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
        assert columns == set(covered), f"{table}: /privacy's text must cover {columns ^ set(covered)}"


async def label(fake, who, seed, cls):
    sent, answer, _ = await answered(fake, who, photo_bytes(seed % 4, seed))
    await fake.tap(who, answer, f"set:{sent['message_id']}:{cls}")
    return sent


async def test_privacy_mydata_and_forget(trained_copy, fake, tmp_path):
    home, admin = trained_copy.home, user(ADMIN, "en")
    hana, ivan = user(8001, "en"), user(8002, "ko")
    env = dict(KIMCHI_CORRECTION_POLICY="open", KIMCHI_RETENTION_DAYS="30", KIMCHI_PRIVACY_CONTACT="dpo@example.org")
    async with running_bot(home, fake, **env):
        await fake.send_text(hana, "/start")
        start = (await fake.wait_for(lambda c: c.method == "sendMessage" and int(c.params["chat_id"]) == hana["id"]))[0]
        assert "/privacy" in start.params["text"]
        await fake.send_text(hana, "/privacy")
        notice = (await fake.wait_for(lambda c: "What I keep" in c.params.get("text", "")))[0].params["text"]
        assert "for 30 days" in notice and "60 days" in notice and "Questions: dpo@example.org" in notice
        for seed, cls in ((1, 4), (2, 5), (3, 6)):
            await label(fake, hana, seed, cls)
        for seed, cls in ((11, 7), (12, 8)):
            await label(fake, ivan, seed, cls)
        await fake.wait_for(lambda c: c.method == "editMessageText", count=5)
        await answered(fake, hana, photo_bytes(0, 4))  # one more photo, never labelled

        group = await fake.send_text(hana, "/mydata", chat_id=-4242)  # in a group: never the zip
        assert "private chat" in (await fake.reply_to(group)).params["text"]
        await fake.send_text(hana, "/mydata")
        (sent_zip,) = await fake.wait_for(lambda c: c.method == "sendDocument")
        await fake.send_text(hana, "/mydata")
        await fake.wait_for(lambda c: "once a day" in c.params.get("text", ""))

        await fake.send_text(hana, "/forget")
        ask = (await fake.wait_for(lambda c: "Erase everything" in c.params.get("text", "")))[0]
        assert [b["callback_data"] for b in buttons(ask)[0]] == ["pv:forget:yes", "pv:forget:no"]
        question = fake.messages[(hana["id"], ask.result["message_id"])]
        await fake.tap(hana, question, "pv:forget:yes")
        done = (await fake.wait_for(lambda c: c.method == "editMessageText" and "Erased" in c.params["text"]))[0]
        stats_before = len(fake.sent(admin["id"]))
        await fake.send_text(admin, "/stats")
        stats = (await fake.wait_for(lambda c: c.method == "sendMessage" and int(c.params["chat_id"]) == admin["id"],
                                     count=stats_before + 1))[-1].params["text"]

    archive = zipfile.ZipFile(io.BytesIO(sent_zip.files["document"]))
    predictions = list(csv.DictReader(io.StringIO(archive.read("predictions.csv").decode())))
    labels = list(csv.DictReader(io.StringIO(archive.read("labels.csv").decode())))
    assert {p["user_id"] for p in predictions} == {str(hana["id"])} and len(predictions) == 4
    assert {r["user_id"] for r in labels} == {str(hana["id"])} and len(labels) == 3
    assert sorted(n for n in archive.namelist() if n.startswith("photos/")) == sorted(
        f"photos/{r['id']}-{r['corrected_label']}.jpg" for r in labels)

    assert "Erased: 4 predictions and 3 labels" in done.params["text"] and "next retrain" in done.params["text"]
    assert "erasures: 1" in stats and str(hana["id"]) not in stats
    assert rows(home, "SELECT COUNT(*) FROM predictions WHERE user_id=?", (hana["id"],))[0][0] == 0
    assert rows(home, "SELECT COUNT(*) FROM corrections WHERE user_id=?", (hana["id"],))[0][0] == 0
    assert rows(home, "SELECT COUNT(*) FROM users WHERE user_id=?", (hana["id"],))[0][0] == 0
    kept = rows(home, "SELECT user_id, path FROM corrections")
    assert {r["user_id"] for r in kept} == {ivan["id"]} and len(kept) == 2  # ivan's untouched
    files = {p.name for p in home.corrections.rglob("*.jpg")}
    assert files == {r["path"].rsplit("/", 1)[1] for r in kept}
    assert {r.label for r in corpus_rows(home, lambda uid: False)} == {"백김치", "나박김치"}
    out = tmp_path / "export"
    assert train_main(["--home", str(home.root), "export-dataset", str(out)]) == 0
    exported = list(csv.DictReader(open(out / "metadata.csv", encoding="utf-8")))
    assert len(exported) == 2
    assert str(ivan["id"]) not in (out / "metadata.csv").read_text(encoding="utf-8")  # no Telegram id in an export


async def test_an_erase_is_all_or_nothing(home):
    """A failure inside the erase leaves everything; a crash after its commit leaves only files, which the
    next start's reconcile removes."""
    store = await Store.open(home.database, home.corrections)
    personal = PersonalData(store.db, store.photos)
    try:
        for i in range(3):
            data = photo_bytes(i, 90 + i)
            import hashlib

            p = await store.record_prediction(PredictionRecord(9, 9, 10 + i, "f", f"u{i}",
                                                               hashlib.sha256(data).hexdigest(), "배추김치", 0.9))
            await store.save_correction(Correction(p, "깍두기", 9, 20 + i), data)
        async with store.db.write() as tx:  # a failure half-way through the erase
            await tx.execute("CREATE TRIGGER no_erase BEFORE DELETE ON users BEGIN SELECT RAISE(ABORT, 'disk'); END")
        with pytest.raises(sqlite3.Error):
            await personal.forget(9)
        assert rows(home, "SELECT COUNT(*) FROM corrections")[0][0] == 3
        assert rows(home, "SELECT COUNT(*) FROM predictions")[0][0] == 3 and len(list(home.corrections.rglob("*.jpg"))) == 3
        async with store.db.write() as tx:
            await tx.execute("DROP TRIGGER no_erase")
        store.photos.remove = lambda path: (_ for _ in ()).throw(SystemExit("killed"))  # dies after the commit
        with pytest.raises(SystemExit):
            await personal.forget(9)
    finally:
        await store.close()
    assert rows(home, "SELECT COUNT(*) FROM corrections")[0][0] == 0 and len(list(home.corrections.rglob("*.jpg"))) == 3
    store = await Store.open(home.database, home.corrections)  # the restart
    try:
        await store.reconcile()
    finally:
        await store.close()
    assert not list(home.corrections.rglob("*.jpg"))


async def test_retention_purges_what_is_older_than_the_settings_and_nothing_newer(home):
    store = await Store.open(home.database, home.corrections)
    personal = PersonalData(store.db, store.photos)
    import hashlib

    try:
        made = {}
        for name, status in (("old_pending", "pending"), ("new_pending", "pending"), ("old_rejected", "rejected"),
                             ("old_accepted", "accepted"), ("old_photo", None), ("new_photo", None)):
            data = photo_bytes(len(made), 100 + len(made))
            p = await store.record_prediction(PredictionRecord(5, 5, 50 + len(made), "f", f"r{len(made)}",
                                                               hashlib.sha256(data).hexdigest(), "배추김치", 0.9))
            if status:
                await store.save_correction(Correction(p, "깍두기", 5, 70 + len(made), status=status), data)
            made[name] = p.id
        async with store.db.write() as tx:
            for name in ("old_pending", "old_rejected", "old_accepted", "old_photo"):
                await tx.execute("UPDATE predictions SET created_at='2020-01-01T00:00:00.000Z' WHERE id=?", (made[name],))
                await tx.execute("UPDATE corrections SET created_at='2020-01-01T00:00:00.000Z',"
                                 " updated_at='2020-01-01T00:00:00.000Z' WHERE prediction_id=?", (made[name],))
        done = await personal.purge(retention_days=90, pending_days=60)
    finally:
        await store.close()
    assert (done.predictions, done.pending, done.rejected) == (3, 1, 1)
    left = {r[0] for r in rows(home, "SELECT id FROM predictions")}
    assert left == {made["new_pending"], made["old_accepted"], made["new_photo"]}
    assert len(list(home.corrections.rglob("*.jpg"))) == 2  # the accepted one and the new pending one


async def test_a_bot_killed_during_an_erase_leaves_all_or_nothing_after_restart(trained_copy, fake, tmp_path):
    """kill -9 of the bot the moment /forget's confirmation is taken (the erase runs right after): the next
    start leaves the person either whole (rows and photos) or gone (rows and photos), and the other untouched."""
    import signal

    from tests.botkit import spawn_bot

    home, jin, kai = trained_copy.home, user(8101, "en"), user(8102, "en")
    process = spawn_bot(home, fake, tmp_path, KIMCHI_CORRECTION_POLICY="open", KIMCHI_ACTION_RATE_LIMIT="0")
    try:
        await fake.wait_for(lambda c: c.method == "setMyCommands", timeout=90)
        for n, (who, seed) in enumerate([(jin, 200 + i) for i in range(12)] + [(kai, 300)], 1):
            await label(fake, who, seed, 4 + seed % 5)
            await fake.wait_for(lambda c: c.method == "editMessageText", count=n, timeout=60)
        await fake.send_text(jin, "/forget")
        ask = (await fake.wait_for(lambda c: "Erase everything" in c.params.get("text", "")))[0]
        answers = len([c for c in fake.calls if c.method == "answerCallbackQuery"])
        await fake.tap(jin, fake.messages[(jin["id"], ask.result["message_id"])], "pv:forget:yes")
        await fake.wait_for(lambda c: c.method == "answerCallbackQuery", count=answers + 1, timeout=30)
        process.send_signal(signal.SIGKILL)  # the erase is starting, running or just done
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    async with running_bot(home, fake, KIMCHI_CORRECTION_POLICY="open"):
        await answered(fake, user(8103, "en"), photo_bytes(0, 400))  # the restart is up (reconcile ran)
    mine = rows(home, "SELECT path FROM corrections WHERE user_id=?", (jin["id"],))
    predictions = rows(home, "SELECT COUNT(*) FROM predictions WHERE user_id=?", (jin["id"],))[0][0]
    files = {p.name for p in home.corrections.rglob("*.jpg")}
    kais = rows(home, "SELECT path FROM corrections WHERE user_id=?", (kai["id"],))
    assert len(kais) == 1 and kais[0]["path"].rsplit("/", 1)[1] in files
    if mine:  # nothing happened
        assert len(mine) == 12 and predictions == 12 and {r["path"].rsplit("/", 1)[1] for r in mine} <= files
    else:  # all of it
        assert predictions == 0 and len(files) == 1
        assert rows(home, "SELECT COUNT(*) FROM erasures")[0][0] == 1


def test_cached_photos_expire_with_the_retention_period():
    import time

    from bot.services import PhotoCache

    cache = PhotoCache()
    cache.put("old", b"1" * 10)
    time.sleep(0.05)
    cache.put("new", b"2" * 10)
    assert cache.expire(0.03) == 1 and cache.get("old") is None and cache.get("new") == b"2" * 10
