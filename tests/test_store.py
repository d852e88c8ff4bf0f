"""The SQLite file: numbered migrations applied at start, WAL, and an old database upgraded in place."""
import sqlite3

from bot.store import MIGRATIONS, PredictionRecord, Store


async def test_migrations_upgrade_an_old_database_and_keep_its_rows(tmp_path):
    path = tmp_path / "kimchi.sqlite3"
    con = sqlite3.connect(path)  # a database as the first release left it: migration 1 only
    con.executescript(f"BEGIN;\n{MIGRATIONS[0]}\nPRAGMA user_version=1;\nCOMMIT;")
    con.execute("INSERT INTO predictions (chat_id, user_id, message_id, file_id, sha256, label, created_at)"
                " VALUES (1, 2, 3, 'f', 'abc', '깍두기', '2026-01-01T00:00:00.000+00:00')")
    con.commit()
    con.close()

    store = await Store.open(path, tmp_path / "corrections")
    assert await store.schema_version() == len(MIGRATIONS)
    old = await store.prediction_for_message(1, 3)
    assert old is not None and old.label == "깍두기"
    run = await store.start_run(9, 1, {"train": {}})
    assert (await store.runs())[0]["id"] == run
    new = await store.record_prediction(PredictionRecord(1, 2, 4, "g", "u", "def", None, None))
    assert new.id == old.id + 1
    await store.close()

    again = await Store.open(path, tmp_path / "corrections")  # idempotent: nothing applied twice
    assert await again.schema_version() == len(MIGRATIONS)
    await again.close()
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 2
    con.close()
