"""Trusted corrections through the fake Bot API: what users teach is decided by agreement, trust and review."""
import csv
import hashlib

import pytest
from torchvision.datasets import ImageFolder

from models.corpus import corpus_rows, read_labels
from tests.botkit import ADMIN, answered, buttons, rows, running_bot
from tests.imagegen import photo_bytes
from tests.telegram_fake import user
from training.cli import main as train_main
from training.export import dataset_rows

LOOSE = dict(KIMCHI_ACTION_RATE_LIMIT="0", KIMCHI_CORRECTIONS_PER_DAY="0", KIMCHI_CORRECTION_POLICY="trusted")
SIZE = (200, 150)  # the photos users send here


def assert_export_is_a_copy(home, out, listed) -> None:
    """The export's images are files of their own: no hard link to the bot's photos, and writing into an
    exported image in place leaves the bot's photo as it was."""
    originals = {row.sha256: row.path for row in dataset_rows(home, ("accepted", "pending", "rejected"))}
    for row in listed:
        assert originals[row["sha256"]].stat().st_nlink == 1, row["file_name"]
        assert (out / row["file_name"]).stat().st_nlink == 1, row["file_name"]
    exported, original = out / listed[0]["file_name"], originals[listed[0]["sha256"]]
    before = original.read_bytes()
    assert exported.read_bytes() == before
    with open(exported, "r+b") as fh:
        fh.write(b"\0" * 64)
    assert exported.read_bytes() != before and original.read_bytes() == before


async def test_one_user_cannot_poison_the_data_and_a_second_voice_makes_a_label_count(trained_copy, fake, tmp_path):
    home, mallory, alice = trained_copy.home, user(4001, "en"), user(4002, "en")
    photos = [photo_bytes(0, 100 + i, SIZE) for i in range(30)]
    # Both count as seasoned here (tests/test_hardening2.py covers the age and vetting rules)
    async with running_bot(home, fake, **LOOSE, KIMCHI_AGREE_MIN_DAYS="0", KIMCHI_AGREE_MIN_DECIDED="0"):
        sent = []
        for data in photos:
            msg, answer, _ = await answered(fake, mallory, data)
            await fake.tap(mallory, answer, f"set:{msg['message_id']}:9")  # 배추김치 photos, "갓김치"
            sent.append(msg)
        edits = await fake.wait_for(lambda c: c.method == "editMessageText", count=30, timeout=60)
        msg, answer, _ = await answered(fake, alice, photos[0])  # the same photo, another person
        await fake.tap(alice, answer, f"set:{msg['message_id']}:9")
        agreed = (await fake.wait_for(lambda c: c.method == "editMessageText", count=31))[-1]
    assert all("it will be used once it's confirmed" in e.params["text"] for e in edits)
    assert "→ 갓김치 (gat-kimchi) and saved" in agreed.params["text"] and "confirmed" not in agreed.params["text"]
    first = hashlib.sha256(photos[0]).hexdigest()
    statuses = {(r["user_id"], r["sha256"] == first): r["status"] for r in
                rows(home, "SELECT user_id, sha256, status FROM corrections")}
    assert statuses[(mallory["id"], True)] == statuses[(alice["id"], True)] == "accepted"  # the agreeing pair
    counted = [r[0] for r in rows(home, "SELECT status FROM corrections WHERE user_id=? AND sha256 != ?",
                                  (mallory["id"], first))]
    assert counted == ["pending"] * 29  # and nothing else mallory said
    used = corpus_rows(home, lambda uid: False)
    assert len(used) == 1 and used[0].label == "갓김치"
    out = tmp_path / "export"
    assert train_main(["--home", str(home.root), "export-dataset", str(out)]) == 0
    listed = list(csv.DictReader(open(out / "metadata.csv", encoding="utf-8")))
    assert [r["label"] for r in listed] == ["갓김치"] and listed[0]["status"] == "accepted"
    assert_export_is_a_copy(home, out, listed)  # the user's photo in the corrections folder


async def test_review_accept_relabel_reject_and_block(trained_copy, fake):
    home, admin = trained_copy.home, user(ADMIN, "en")
    bob, carol = user(4003, "en"), user(4004, "en")
    async with running_bot(home, fake, **LOOSE):
        for n, (who, seed, cls) in enumerate(((bob, 1, 4), (bob, 2, 5), (bob, 3, 6), (carol, 4, 7), (carol, 5, 8))):
            msg, answer, _ = await answered(fake, who, photo_bytes(0, 200 + seed, SIZE))
            await fake.tap(who, answer, f"set:{msg['message_id']}:{cls}")
            # one label stored before the next photo, so the queue's order (by id) is the order they were given in
            await fake.wait_for(lambda c: c.method == "editMessageText", count=n + 1)
        assert [r[0] for r in rows(home, "SELECT status FROM corrections")] == ["pending"] * 5

        async def item(n):
            shown = (await fake.wait_for(lambda c: c.method == "sendPhoto", count=n))[-1]
            return shown, fake.messages[(admin["id"], shown.result["message_id"])]

        await fake.send_text(admin, "/review")
        shown, card = await item(1)
        assert "User's label: 깍두기" in shown.params["caption"] and "5 left to review" in shown.params["caption"]
        assert "Model: " in shown.params["caption"] and "%" in shown.params["caption"]
        assert "Votes: 1 for, 0 against" in shown.params["caption"]
        assert "User 4003: 0 accepted, 0 rejected" in shown.params["caption"]
        assert [b["text"] for b in buttons(shown)[0]] == ["✅ Accept", "✏️ Relabel", "❌ Reject", "🚫 Block user"]
        item_id = buttons(shown)[0][0]["callback_data"].split(":")[2]
        await fake.tap(admin, card, f"rv:a:{item_id}")               # accept
        shown, card = await item(2)
        second = buttons(shown)[0][0]["callback_data"].split(":")[2]
        await fake.tap(admin, card, f"rv:e:{second}")                # relabel: the classes appear
        await fake.wait_for(lambda c: c.method == "editMessageReplyMarkup" and "rv:l:" in str(c.params))
        await fake.tap(admin, card, f"rv:l:{second}:0")
        shown, card = await item(3)
        assert "User's label: 무생채" in shown.params["caption"]  # oldest first
        third = buttons(shown)[0][0]["callback_data"].split(":")[2]
        await fake.tap(admin, card, f"rv:x:{third}")                 # reject
        shown, card = await item(4)
        assert "User 4004" in shown.params["caption"]
        await fake.tap(admin, card, f"rv:b:{buttons(shown)[0][0]['callback_data'].split(':')[2]}")  # block carol
        done = (await fake.wait_for(lambda c: c.method == "sendMessage" and "Nothing left" in c.params.get("text", "")))
        await fake.send_text(user(4005, "en"), "/review")  # not an admin
        refused = (await fake.wait_for(lambda c: c.params.get("text") == "Sorry, you can't use this command."))
    got = {r["id"]: (r["status"], r["corrected_label"], r["decided_by"])
           for r in rows(home, "SELECT id, status, corrected_label, decided_by FROM corrections ORDER BY id")}
    assert got[int(item_id)] == ("accepted", "깍두기", ADMIN)
    assert got[int(second)] == ("accepted", "배추김치", ADMIN)
    assert got[int(third)] == ("rejected", "무생채", ADMIN)
    assert sorted(s for s, _, _ in list(got.values())[3:]) == ["rejected", "rejected"]  # carol's, by the block
    assert rows(home, "SELECT blocked FROM users WHERE user_id=4004")[0][0] == 1
    assert done and refused


async def test_a_blocked_user_is_answered_but_not_used_and_trust_makes_labels_count(trained_copy, fake):
    home, admin, dave = trained_copy.home, user(ADMIN, "en"), user(4006, "en")
    async with running_bot(home, fake, **LOOSE):
        await fake.send_text(admin, "/block 4006")
        await fake.wait_for(lambda c: "Blocked user 4006" in c.params.get("text", ""))
        msg, answer, reply = await answered(fake, dave, photo_bytes(0, 300, SIZE))
        await fake.tap(dave, answer, f"set:{msg['message_id']}:4")
        await fake.wait_for(lambda c: c.method == "editMessageText")
        await fake.send_text(admin, "/unblock 4006")
        await fake.wait_for(lambda c: "is no longer blocked" in c.params.get("text", ""))
        await fake.send_text(admin, "/trust 4006")
        await fake.wait_for(lambda c: "is trusted" in c.params.get("text", ""))
        msg, answer, _ = await answered(fake, dave, photo_bytes(0, 301, SIZE))
        await fake.tap(dave, answer, f"set:{msg['message_id']}:4")
        await fake.wait_for(lambda c: c.method == "editMessageText", count=2)
    assert "%" in reply.params["text"]  # photos are still answered while blocked
    assert [r[0] for r in rows(home, "SELECT status FROM corrections ORDER BY id")] == ["rejected", "accepted"]


@pytest.mark.parametrize("margin, asks", [("1.0", True), ("0", False)])
async def test_the_cheap_question_only_when_the_top_two_are_close(trained_copy, fake, margin, asks):
    home, erin = trained_copy.home, user(4007, "ko")
    async with running_bot(home, fake, KIMCHI_ASK_MARGIN=margin, **LOOSE):
        msg, answer, reply = await answered(fake, erin, photo_bytes(1, 400, SIZE))
        keyboard = buttons(reply)
        if asks:
            first, second = keyboard[0]
            assert first["text"].endswith("?") and second["text"].endswith("?") and keyboard[1][0]["text"] == "✏️ 다른 김치"
            assert first["text"][:-1] == reply.params["text"].split(" —")[0]
            await fake.tap(erin, answer, second["callback_data"])
            await fake.wait_for(lambda c: c.method == "editMessageText")
    if asks:
        (row,) = rows(home, "SELECT source, corrected_label FROM corrections")
        assert row["source"] == "ask" and row["corrected_label"] == second["text"][:-1]
    else:
        assert [b["text"] for b in keyboard[0]] == ["✅ 맞아요", "✏️ 고치기"]


async def test_a_dispute_of_a_base_label_waits_for_an_admin_and_export_loads(trained_copy, fake, tmp_path):
    from training.importer import import_dataset

    home, frank = trained_copy.home, user(4008, "en")
    import_dataset(trained_copy.data, home.base, presize=0, workers=1)
    base_photo = sorted((trained_copy.data / "배추김치").iterdir())[0].read_bytes()  # the bytes the manifest hashed
    async with running_bot(home, fake, **{**LOOSE, "KIMCHI_CORRECTION_POLICY": "open"}):
        msg, answer, _ = await answered(fake, frank, base_photo)
        await fake.tap(frank, answer, f"set:{msg['message_id']}:4")
        edit = (await fake.wait_for(lambda c: c.method == "editMessageText"))[0]
    assert "once it's confirmed" in edit.params["text"]  # even under `open`: a dispute waits for an admin
    (label,) = read_labels(home.database)
    assert (label.status, label.source) == ("pending", "dispute")
    out = tmp_path / "ds"
    assert train_main(["--home", str(home.root), "export-dataset", str(out), "--zip"]) == 0
    listed = list(csv.DictReader(open(out / "metadata.csv", encoding="utf-8")))
    assert len(listed) == 120 and {r["source"] for r in listed} == {"base"}
    assert (tmp_path / "ds.zip").stat().st_size > 10_000
    for split in {r["split"] for r in listed}:
        folder = ImageFolder(str(out / split))
        assert len(folder) == sum(r["split"] == split for r in listed)
        assert set(folder.classes) <= {"배추김치", "오이소박이", "파김치", "열무김치"}
    assert_export_is_a_copy(home, out, listed)  # the imported base images
