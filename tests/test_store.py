"""The SQLite file: numbered migrations applied at start, WAL, an old database upgraded in place, and one way
to write: a transaction that is committed whole or not at all."""
import hashlib
import sqlite3

import pytest

from bot.ledger import Ledger
from bot.reports import run_status
from bot.settings import Settings
from bot.store import Correction, PredictionRecord, Store
from bot.trust import Basis
from models.schema import MIGRATIONS
from models.status import Status
from tests.botkit import TOKEN
from tests.imagegen import draw, encode


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


async def test_a_retrain_that_was_kept_is_no_longer_called_rejected(tmp_path):
    """Migration 6: an old run that was not promoted reads 'kept' (and says the same to the admin); a label's
    'rejected' stays."""
    path = tmp_path / "kimchi.sqlite3"
    con = sqlite3.connect(path)
    for number, script in enumerate(MIGRATIONS[:5], 1):
        con.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")
    con.execute("INSERT INTO retrain_runs (status, started_at) VALUES ('rejected', 'x'), ('promoted', 'x')")
    con.execute("INSERT INTO predictions (id, chat_id, message_id, file_id, sha256, created_at)"
                " VALUES (1, 1, 1, 'f', 'ab', 'x')")
    con.execute("INSERT INTO corrections (prediction_id, chat_id, sha256, corrected_label, path, status, created_at,"
                " updated_at) VALUES (1, 1, 'ab', '깍두기', 'p', 'rejected', 'x', 'x')")
    con.commit()
    con.close()
    store = await Store.open(path, tmp_path / "corrections")
    runs = [r["status"] for r in await store.runs()]
    await store.close()
    assert runs == ["promoted", "kept"]
    assert run_status("kept", "en") == "kept, not promoted" and run_status("kept", "ko") == "보류됨"
    con = sqlite3.connect(path)
    assert con.execute("SELECT status FROM corrections").fetchall() == [("rejected",)]
    con.close()


@pytest.fixture
async def store(tmp_path):
    store = await Store.open(tmp_path / "kimchi.sqlite3", tmp_path / "corrections")
    yield store
    await store.close()


async def label(store: Store, user: int, label: str, status: Status, basis: str | None, seed: int) -> None:
    photo = encode(draw(0, (64, 48), seed=seed), "JPEG")
    p = await store.record_prediction(PredictionRecord(user, user, seed, f"f{seed}", None,
                                                       hashlib.sha256(photo).hexdigest(), "배추김치", 0.9))
    await store.save_correction(Correction(p, label, user, seed + 100, status=status, basis=basis), photo)


async def test_a_decision_that_fails_half_way_leaves_nothing_for_the_next_writer(store, tmp_path):
    """Blocking runs four statements. The third fails (a trigger stands in for a full disk): the block is
    rolled back whole, and the next writer's commit does not save its first half either."""
    settings = Settings.load(environ={"TELEGRAM_BOT_TOKEN": TOKEN, "KIMCHI_HOME": str(tmp_path / "home")},
                             env_file=None)
    ledger = Ledger(store, settings)
    await label(store, 7, "깍두기", Status.ACCEPTED, Basis.TRUSTED, seed=1)
    await label(store, 8, "깍두기", Status.ACCEPTED, Basis.AGREEMENT, seed=2)
    async with ledger.db.write() as tx:
        await tx.execute(f"CREATE TRIGGER disk_full BEFORE UPDATE OF status ON corrections WHEN NEW.basis ="
                         f" '{Basis.BLOCK}' BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
    with pytest.raises(sqlite3.IntegrityError, match="disk is full"):
        await ledger.set_user(7, blocked=True)  # users.blocked=1 was written before the failing statement
    assert not ledger.db.con.in_transaction
    await ledger.set_user(8, trusted=True)  # the next writer, on the same connection

    con = sqlite3.connect(tmp_path / "kimchi.sqlite3")
    users = con.execute("SELECT user_id, blocked, trusted FROM users ORDER BY user_id").fetchall()
    assert users == [(7, 0, 0), (8, 0, 1)]
    assert con.execute("SELECT status, basis FROM corrections ORDER BY id").fetchall() == [
        ("accepted", "trusted"), ("accepted", "agreement")]
    con.close()


async def test_a_durable_write_is_synchronous_full_for_its_own_transaction(store):
    db = store.db
    async with db.write(durable=True):
        assert (await db.one("PRAGMA synchronous"))[0] == 2  # FULL
    assert (await db.one("PRAGMA synchronous"))[0] == 1  # NORMAL again
    with pytest.raises(RuntimeError, match="write inside a write"):
        async with db.write():
            async with db.write():
                pass
    assert not db.con.in_transaction
