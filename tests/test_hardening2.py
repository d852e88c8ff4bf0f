"""Hardening, round two: what users told the bot is kept in their order, trust cannot be farmed, decisions
stick, and stored photos are bounded and clean. Each scenario failed on the code before it."""
import asyncio
import hashlib
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bot.photos import STORED_LONG_SIDE, STORED_SHORT_SIDE
from bot.store import Correction, PredictionRecord, Store
from models.corpus import corpus_rows
from tests.botkit import ADMIN, answered, buttons, rows, running_bot
from tests.imagegen import draw, encode, photo_bytes
from tests.telegram_fake import user
from training.cli import main as train_main

INVALID = "This button is no longer valid."
LOOSE = dict(KIMCHI_ACTION_RATE_LIMIT="0", KIMCHI_CORRECTIONS_PER_DAY="0")
SMALL = (160, 120)  # the photos users send here


def labels_of(home, user_id):
    return [(r["corrected_label"], r["status"]) for r in
            rows(home, "SELECT corrected_label, status FROM corrections WHERE user_id=? ORDER BY id", (user_id,))]


async def test_a_quick_second_label_wins_over_a_slow_first(trained_copy, fake):
    """Two /correct replies 10 ms apart, the first with a slow download, then two taps the same way: the
    second of each pair is what the row and the file say."""
    home, ann = trained_copy.home, user(5001, "en")
    async with running_bot(home, fake, **LOOSE) as app:
        photos = app.bot_data["services"].photos
        sent, answer, _ = await answered(fake, ann, photo_bytes(0, 1, SMALL))
        photos._items.clear()  # evicted from the cache: the first label downloads again, slowly
        fake.download_delays[sent["photo"][-1]["file_id"]] = 0.6
        first = await fake.send_text(ann, "/correct 깍두기", reply_to=answer)
        await asyncio.sleep(0.01)
        second = await fake.send_text(ann, "/correct 총각김치", reply_to=answer)
        said = [(await fake.reply_to(m)).params["text"] for m in (first, second)]
        assert labels_of(home, ann["id"]) == [("총각김치", "accepted")]
        files = sorted(p.parent.name for p in home.corrections.glob("*/*.jpg"))
        assert files == ["총각김치"]
        assert "깍두기" in said[0] and "→ 총각김치" in said[1]

        sent, answer, _ = await answered(fake, ann, photo_bytes(1, 2, SMALL))
        photos._items.clear()
        fake.download_delays[sent["photo"][-1]["file_id"]] = 0.6
        await fake.tap(ann, answer, f"set:{sent['message_id']}:4")   # 깍두기
        await asyncio.sleep(0.01)
        await fake.tap(ann, answer, f"set:{sent['message_id']}:10")  # 총각김치
        await fake.wait_for(lambda c: c.method == "editMessageText", count=2)
        assert labels_of(home, ann["id"])[1] == ("총각김치", "accepted")
    sha = hashlib.sha256(photo_bytes(1, 2, SMALL)).hexdigest()
    assert sorted(p.parent.name for p in home.corrections.glob(f"*/{sha}.jpg")) == ["총각김치"]


async def test_an_older_update_never_replaces_a_newer_label(home, tmp_path):
    """The webhook can deliver out of order: a label carries its update's number, and an older one is
    refused as stale."""
    store = await Store.open(home.database, home.corrections)
    try:
        data = photo_bytes(2, 3, SMALL)
        p = await store.record_prediction(PredictionRecord(1, 7, 10, "f", "uf", hashlib.sha256(data).hexdigest(),
                                                           "배추김치", 0.9))
        newer = await store.save_correction(Correction(p, "총각김치", 7, 12, update_seq=20), data)
        older = await store.save_correction(Correction(p, "깍두기", 7, 11, update_seq=19), None)
    finally:
        await store.close()
    assert not newer.stale and older.stale and older.previous_label == "총각김치"
    assert [r[0] for r in rows(home, "SELECT corrected_label FROM corrections")] == ["총각김치"]


async def test_photos_stored_before_are_rewritten_clean_and_blocked_users_rows_migrate(home):
    """An upgrade: a database of schema 4 whose blocked user still had an accepted label, and a photo kept as
    sent (4000x3000 with GPS). Opening it migrates the label to rejected; the background pass bounds the photo."""
    import sqlite3

    from models.schema import MIGRATIONS

    photo = home.corrections / "깍두기" / "ab.jpg"
    photo.parent.mkdir(parents=True)
    exif = Image.Exif()
    exif[0x8825] = {1: "N", 2: (37.0, 33.0, 0.0)}
    draw(4, (4000, 3000), seed=9).save(photo, "JPEG", quality=95, exif=exif)
    con = sqlite3.connect(home.database)
    for number, script in enumerate(MIGRATIONS[:4], 1):
        con.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")
    con.execute("INSERT INTO predictions (id, chat_id, user_id, message_id, file_id, sha256, created_at)"
                " VALUES (1, 9, 9, 1, 'f', 'ab', '2026-01-01T00:00:00.000Z')")
    con.execute("INSERT INTO corrections (prediction_id, user_id, chat_id, sha256, corrected_label, path, status,"
                " created_at, updated_at) VALUES (1, 9, 9, 'ab', '깍두기', ?, 'accepted', 'x', 'x')", (str(photo),))
    con.execute("INSERT INTO users (user_id, blocked, updated_at) VALUES (9, 1, 'x')")
    con.commit()
    con.close()
    store = await Store.open(home.database, home.corrections)
    try:
        await store.reconcile()
        assert await store.bound_legacy_photos() == 1
        assert await store.bound_legacy_photos() == 0  # once
    finally:
        await store.close()
    row = rows(home, "SELECT status, basis, bytes FROM corrections")[0]
    assert (row["status"], row["basis"]) == ("rejected", "block") and row["bytes"] == photo.stat().st_size
    assert rows(home, "SELECT first_seen FROM users")[0][0] == "2026-01-01T00:00:00.000Z"
    kept = Image.open(photo)
    assert kept.size == (613, 460) and not kept.getexif()


async def test_a_tap_flood_on_a_huge_png_does_not_hold_up_another_users_label(trained_copy, fake):
    """40 taps under the answer to a 36-MP PNG sent as a file: the photo is decoded once for its first
    label, later taps reuse the stored file, and a bystander's /correct is saved within 2 s."""
    home, mallory, bob = trained_copy.home, user(5101, "en"), user(5102, "en")
    rng = np.random.default_rng(0)
    huge = Image.fromarray(np.tile(rng.integers(0, 255, (1, 6000, 3), dtype=np.uint8), (6000, 1, 1)))
    png = encode(huge, "PNG", compress_level=1)
    async with running_bot(home, fake, **LOOSE, KIMCHI_MAX_DOWNLOAD_MB="20"):
        _, bob_answer, _ = await answered(fake, bob, photo_bytes(0, 4, SMALL))
        sent = await fake.send_document(mallory, png, "image/png", "big.png")
        answer = fake.messages[(mallory["id"], (await fake.reply_to(sent, timeout=60)).result["message_id"])]
        for i in range(40):
            await fake.tap(mallory, answer, f"set:{sent['message_id']}:{i % 11}")
        await fake.wait_for(lambda c: c.method == "answerCallbackQuery")  # the first tap's decode is under way
        started = time.monotonic()
        fix = await fake.send_text(bob, "/correct 깍두기", reply_to=bob_answer)
        saved = await fake.reply_to(fix, timeout=60)
        waited = time.monotonic() - started
        await fake.wait_for(lambda c: c.method == "editMessageText", count=40, timeout=120)
    assert "깍두기" in saved.params["text"] and waited < 2.0, waited
    mallory_files = {r[0] for r in rows(home, "SELECT path FROM corrections WHERE user_id=?", (mallory["id"],))}
    stored = Image.open(next(iter(mallory_files)))
    assert max(stored.size) <= STORED_LONG_SIDE and min(stored.size) <= STORED_SHORT_SIDE


async def test_two_fresh_accounts_cannot_farm_trust_and_poison_the_data(trained_copy, fake):
    """The sybil attack, with default settings: two new accounts ✅ the model's answers on the same 20 noise
    pictures, then each labels 20 photos wrongly, alone. None of the 40 is used without an admin."""
    home = trained_copy.home
    sybils = user(5201, "en"), user(5202, "en")
    noise = [encode(Image.fromarray(np.random.default_rng(100 + i).integers(0, 255, (96, 96, 3), dtype=np.uint8)),
                    "PNG") for i in range(20)]
    env = dict(KIMCHI_CORRECTION_POLICY="trusted", KIMCHI_ACTION_RATE_LIMIT="0", KIMCHI_RATE_LIMIT="0")
    async with running_bot(home, fake, **env):
        taps = 0
        for who in sybils:
            for data in noise:
                sent, answer, reply = await answered(fake, who, data)
                offered = [b["callback_data"] for b in buttons(reply)[0]]
                await fake.tap(who, answer, offered[0])  # ✅, or the model's first guess under an A/B answer
                taps += 1
                await fake.wait_for(lambda c: c.method == "editMessageText", count=taps)
        for n, who in enumerate(sybils):
            for i in range(20):
                sent, answer, _ = await answered(fake, who, photo_bytes(0, 300 + 20 * n + i, SMALL))
                await fake.tap(who, answer, f"set:{sent['message_id']}:4")  # 배추김치-like photos, "깍두기"
                taps += 1
                await fake.wait_for(lambda c: c.method == "editMessageText", count=taps)
    poisoned = rows(home, "SELECT status FROM corrections WHERE corrected_label='깍두기' AND user_id IN (?, ?)",
                    tuple(u["id"] for u in sybils))
    assert len(poisoned) == 40 and [r[0] for r in poisoned].count("accepted") == 0
    assert corpus_rows(home, lambda uid: uid == ADMIN) == []


async def test_decisions_stick_block_rejections_flags_and_ab_answers(trained_copy, fake, tmp_path):
    home, admin = trained_copy.home, user(ADMIN, "en")
    carl, dora = user(5301, "en"), user(5302, "en")
    async with running_bot(home, fake, **LOOSE, KIMCHI_CORRECTION_POLICY="trusted") as app:
        ledger = app.bot_data["services"].ledger
        # an admin rejects carl's label; carl taps it again: still rejected, and he is told so
        sent, answer, _ = await answered(fake, carl, photo_bytes(0, 21, SMALL))
        await fake.tap(carl, answer, f"set:{sent['message_id']}:6")
        await fake.wait_for(lambda c: c.method == "editMessageText")
        (row_id,) = rows(home, "SELECT id FROM corrections WHERE user_id=?", (carl["id"],))[0]
        await ledger.decide(row_id, "rejected", ADMIN)
        await fake.tap(carl, answer, f"set:{sent['message_id']}:6")
        again = (await fake.wait_for(lambda c: c.method == "editMessageText", count=2))[-1]
        await fake.tap(carl, answer, f"set:{sent['message_id']}:6")  # and a third time
        third = (await fake.wait_for(lambda c: c.method == "editMessageText", count=3))[-1]
        assert labels_of(home, carl["id"]) == [("무생채", "rejected")]
        assert "An admin already declined 무생채" in again.params["text"] and "declined" in third.params["text"]
        await fake.tap(carl, answer, f"set:{sent['message_id']}:7")  # another label: an admin looks at it
        await fake.wait_for(lambda c: c.method == "editMessageText", count=4)
        assert rows(home, "SELECT status, audit_flag FROM corrections WHERE user_id=?", (carl["id"],))[0][:] == \
            ("pending", "relabelled by its author after an admin rejected their label")

        # an audit flag is cleared by an admin only: dora's accepted label, flagged, re-tapped: still pending
        sent, answer, _ = await answered(fake, dora, photo_bytes(0, 22, SMALL))
        await fake.send_text(admin, "/trust 5302")
        await fake.wait_for(lambda c: c.method == "sendMessage" and "trusted" in c.params.get("text", ""))
        await fake.tap(dora, answer, f"set:{sent['message_id']}:5")
        await fake.wait_for(lambda c: c.method == "editMessageText", count=5)
        sha = hashlib.sha256(photo_bytes(0, 22, SMALL)).hexdigest()
        assert await ledger.flag({sha: "audit: likely 배추김치"}) == 1
        await fake.tap(dora, answer, f"set:{sent['message_id']}:5")
        await fake.wait_for(lambda c: c.method == "editMessageText", count=6)
        flagged = rows(home, "SELECT status, audit_flag FROM corrections WHERE user_id=?", (dora["id"],))[0]
        assert flagged["status"] == "pending" and flagged["audit_flag"] == "audit: likely 배추김치"

        # /block rejects all of dora's labels, accepted ones too; /unblock brings none back
        sent, answer, _ = await answered(fake, dora, photo_bytes(0, 23, SMALL))
        await fake.tap(dora, answer, f"set:{sent['message_id']}:7")
        await fake.wait_for(lambda c: c.method == "editMessageText", count=7)
        assert ("백김치", "accepted") in labels_of(home, dora["id"])
        sent, answer, _ = await answered(fake, admin, photo_bytes(0, 24, SMALL))  # one label the export keeps
        await fake.tap(admin, answer, f"set:{sent['message_id']}:3")
        await fake.wait_for(lambda c: c.method == "editMessageText", count=8)
        await fake.send_text(admin, "/block 5302")
        blocked = (await fake.wait_for(lambda c: "Blocked user 5302" in c.params.get("text", "")))[0]
        await fake.send_text(admin, "/unblock 5302")
        await fake.wait_for(lambda c: "no longer blocked" in c.params.get("text", ""))
    assert "all 2 of their labels" in blocked.params["text"]
    assert {s for _, s in labels_of(home, dora["id"])} == {"rejected"}
    assert [r.label for r in corpus_rows(home, lambda uid: uid == ADMIN)] == ["열무김치"]
    out = tmp_path / "export"
    assert train_main(["--home", str(home.root), "export-dataset", str(out), "--status", "accepted"]) == 0
    assert [p.parent.name for p in out.rglob("*.jpg")] == ["열무김치"]


async def test_an_ab_answer_takes_only_its_two_classes(trained_copy, fake):
    home, eve = trained_copy.home, user(5401, "en")
    async with running_bot(home, fake, **LOOSE, KIMCHI_ASK_MARGIN="1.0", KIMCHI_CORRECTION_POLICY="open"):
        sent, answer, reply = await answered(fake, eve, photo_bytes(0, 31, SMALL))
        offered = [b["callback_data"] for b in buttons(reply)[0]]
        assert all(o.startswith("ask:") for o in offered)
        others = {f"ask:{sent['message_id']}:{i}" for i in range(11)} - set(offered)
        await fake.tap(eve, answer, sorted(others)[0])             # a class it did not offer
        await fake.tap(eve, answer, f"ok:{sent['message_id']}")     # ✅ was not offered either
        refusals = await fake.wait_for(lambda c: c.method == "answerCallbackQuery", count=2)
        await fake.tap(eve, answer, offered[1])
        await fake.wait_for(lambda c: c.method == "editMessageText")
    assert [c.params.get("text") for c in refusals] == [INVALID, INVALID]
    assert len(labels_of(home, eve["id"])) == 1


async def test_stored_photos_are_bounded_and_carry_no_metadata(trained_copy, fake):
    """A 1000x10000 PNG of repeating rows (a few KB sent, 30 MB decoded) and a JPEG with GPS in its EXIF:
    each is kept at most 460 on its shorter and 920 on its longer side, with no EXIF at all."""
    home, fay = trained_copy.home, user(5501, "en")
    rng = np.random.default_rng(1)
    tall = Image.fromarray(np.tile(rng.integers(0, 255, (1, 1000, 3), dtype=np.uint8), (10000, 1, 1)))
    exif = Image.Exif()
    exif[0x8825] = {1: "N", 2: (37.0, 33.0, 0.0), 3: "E", 4: (126.0, 58.0, 0.0)}  # GPS: Seoul
    exif[0x010F] = "PhoneMaker"
    gps = io.BytesIO()
    draw(0, (1600, 1200), seed=5).save(gps, "JPEG", quality=90, exif=exif)
    assert Image.open(io.BytesIO(gps.getvalue())).getexif().get(0x010F) == "PhoneMaker"
    async with running_bot(home, fake, **LOOSE):
        sent = await fake.send_document(fay, encode(tall, "PNG"), "image/png", "tall.png")
        answer = fake.messages[(fay["id"], (await fake.reply_to(sent)).result["message_id"])]
        await fake.tap(fay, answer, f"set:{sent['message_id']}:2")
        sent, answer, _ = await answered(fake, fay, gps.getvalue())
        await fake.tap(fay, answer, f"set:{sent['message_id']}:2")
        await fake.wait_for(lambda c: c.method == "editMessageText", count=2)
    paths = [Path(r[0]) for r in rows(home, "SELECT path FROM corrections WHERE user_id=?", (fay["id"],))]
    assert len(paths) == 2
    for path in paths:
        img = Image.open(path)
        assert img.format == "JPEG" and max(img.size) <= STORED_LONG_SIDE and min(img.size) <= STORED_SHORT_SIDE
        assert not img.getexif() and "exif" not in img.info and "icc_profile" not in img.info
        assert path.stat().st_size < 200_000
    sizes = sorted(Image.open(p).size for p in paths)
    assert sizes == [(92, 920), (613, 460)]


async def test_labelling_mode_holds_the_pixel_limit(home, fake):
    """No model yet: a PNG over KIMCHI_MAX_PIXELS is refused as it is with a model, and nothing is stored."""
    olga = user(5601, "en")
    big = encode(Image.new("RGB", (2000, 1000), (120, 30, 30)), "PNG")
    async with running_bot(home, fake, KIMCHI_MAX_PIXELS="1000000"):
        sent = await fake.send_document(olga, big, "image/png", "big.png")
        reply = await fake.reply_to(sent)
    assert reply.params["text"] == "That image has too many pixels; please send a smaller photo."
    assert rows(home, "SELECT COUNT(*) FROM predictions")[0][0] == 0
