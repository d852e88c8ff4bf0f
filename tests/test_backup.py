"""Backups that restore: `kimchi-train backup` while the bot answers photos, `kimchi-train restore` into a fresh
home, and the bot started there answers a photo and counts the same labels."""
import asyncio
import tarfile

from models.home import Home
from tests.botkit import ADMIN, answered, one_sentence, rows, running_bot
from tests.imagegen import photo_bytes
from tests.telegram_fake import user
from training.cli import main as train_main


async def stats_text(fake, admin) -> str:
    before = len(fake.sent(admin["id"]))
    await fake.send_text(admin, "/stats")
    calls = await fake.wait_for(lambda c: c.method == "sendMessage" and int(c.params["chat_id"]) == admin["id"],
                                count=before + 1)
    return calls[-1].params["text"]


def labels_part(text: str) -> str:
    """/stats without the prediction count (photos answered during the backup may or may not be in it)."""
    return text.split("\n", 1)[1]


async def test_backup_while_the_bot_runs_then_restore_into_a_fresh_home(trained_copy, fake, tmp_path, capsys):
    home, admin, gil = trained_copy.home, user(ADMIN, "en"), user(7001, "en")
    out = tmp_path / "backups"
    async with running_bot(home, fake, KIMCHI_CORRECTION_POLICY="open"):
        for seed in range(4):
            sent, answer, _ = await answered(fake, gil, photo_bytes(seed % 3, 40 + seed))
            await fake.tap(gil, answer, f"set:{sent['message_id']}:{4 + seed % 2}")
        await fake.wait_for(lambda c: c.method == "editMessageText", count=4)
        # the backup runs while the bot answers more photos and writes their rows
        backup = asyncio.create_task(asyncio.to_thread(train_main, ["--home", str(home.root), "backup", str(out)]))
        during = [await answered(fake, gil, photo_bytes(1, 60 + i)) for i in range(3)]
        assert await backup == 0 and len(during) == 3
        original = await stats_text(fake, admin)
    archive = next(out.glob("kimchi-backup-*.tar"))
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names[0] == "kimchi.sqlite3"
    assert names[-1] == "manifest.json" and any(n.startswith("models/v1/") for n in names)
    assert sum(n.startswith("data/corrections/") for n in names) == 4
    assert not any(n.endswith(".env") or n.startswith("logs/") for n in names)

    fresh = Home(tmp_path / "restored")
    assert train_main(["--home", str(fresh.root), "restore", str(archive)]) == 0
    assert train_main(["--home", str(fresh.root), "restore", str(archive)]) == 1  # not into a home in use
    assert "is not empty" in one_sentence(capsys.readouterr().err, "kimchi-train restore:")
    assert all(r[0].startswith(str(fresh.root)) for r in rows(fresh, "SELECT path FROM corrections"))
    async with running_bot(fresh, fake, KIMCHI_CORRECTION_POLICY="open"):
        _, _, reply = await answered(fake, user(7002, "en"), photo_bytes(0, 70))
        restored = await stats_text(fake, admin)
    assert "%" in reply.params["text"]  # answered with a model: the serving version came back
    assert labels_part(restored) == labels_part(original)


def test_a_damaged_archive_is_refused_in_one_sentence_and_nothing_is_left(home, tmp_path, capsys):
    import sqlite3

    from models.schema import MIGRATIONS

    con = sqlite3.connect(home.database)
    for script in MIGRATIONS:
        con.executescript(script)
    con.close()
    assert train_main(["--home", str(home.root), "backup", str(tmp_path / "b.tar")]) == 0
    data = bytearray((tmp_path / "b.tar").read_bytes())
    data[1024] ^= 0xFF  # inside the database copy, the first member
    (tmp_path / "bad.tar").write_bytes(bytes(data))
    target = tmp_path / "new-home"
    assert train_main(["--home", str(target), "restore", str(tmp_path / "bad.tar")]) == 1
    sentence = one_sentence(capsys.readouterr().err, "kimchi-train restore:")
    assert "does not match its checksum" in sentence and "nothing was restored" in sentence
    assert not target.exists() and not list(tmp_path.glob(".new-home.restoring-*"))
