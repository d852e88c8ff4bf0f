"""The bot's memory: one SQLite file (WAL, busy timeout, numbered migrations) and the corrections folder.

Predictions are logged with synchronous=NORMAL (a power cut may lose the last few; a crash of the bot
does not). Corrections, which the user is told are saved, are written file first (fsynced), then the
row, committed with synchronous=FULL, before the reply goes out.
"""
from __future__ import annotations

import asyncio
import io
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiosqlite
from models.artifact import fsync_dir, fsync_write
from models.errors import KimchiError
from models.preprocess import decode_rgb, exif_orientation, open_checked

log = logging.getLogger(__name__)

MIGRATIONS: list[str] = [
    # 1: predictions and corrections
    """
    CREATE TABLE predictions (
        id INTEGER PRIMARY KEY,
        chat_id INTEGER NOT NULL,
        user_id INTEGER,
        message_id INTEGER NOT NULL,
        reply_message_id INTEGER,
        file_id TEXT NOT NULL,
        file_unique_id TEXT,
        sha256 TEXT NOT NULL,
        label TEXT,
        confidence REAL,
        top_json TEXT,
        model_version TEXT,
        created_at TEXT NOT NULL
    );
    CREATE INDEX predictions_by_message ON predictions(chat_id, message_id);
    CREATE INDEX predictions_by_reply ON predictions(chat_id, reply_message_id);
    CREATE INDEX predictions_by_user ON predictions(chat_id, user_id, created_at);
    CREATE TABLE corrections (
        id INTEGER PRIMARY KEY,
        prediction_id INTEGER NOT NULL UNIQUE REFERENCES predictions(id),
        user_id INTEGER,
        chat_id INTEGER NOT NULL,
        message_id INTEGER,
        file_unique_id TEXT,
        sha256 TEXT NOT NULL,
        predicted_label TEXT,
        confidence REAL,
        corrected_label TEXT NOT NULL,
        confirmed INTEGER NOT NULL DEFAULT 0,
        model_version TEXT,
        path TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX corrections_by_sha ON corrections(sha256);
    """,
    # 2: retraining history, and each image's side of the frozen holdout, decided once
    """
    CREATE TABLE retrain_runs (
        id INTEGER PRIMARY KEY,
        started_by INTEGER,
        chat_id INTEGER,
        status TEXT NOT NULL,
        pid INTEGER,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        duration_s REAL,
        counts_json TEXT,
        candidate TEXT,
        baseline TEXT,
        metrics_json TEXT,
        decision TEXT,
        reason TEXT,
        log_tail TEXT
    );
    CREATE TABLE splits (
        sha256 TEXT PRIMARY KEY,
        split TEXT NOT NULL CHECK (split IN ('train', 'holdout')),
        source TEXT NOT NULL,
        decided_at TEXT NOT NULL
    );
    """,
]


def now() -> datetime:
    return datetime.now(timezone.utc)


def stamp(moment: datetime | None = None) -> str:
    return (moment or now()).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class PredictionRecord:
    """One photo the bot answered (label None in labelling mode)."""

    chat_id: int
    user_id: int | None
    message_id: int
    file_id: str
    file_unique_id: str | None
    sha256: str
    label: str | None
    confidence: float | None
    top: tuple[tuple[str, float], ...] = ()
    model_version: str | None = None
    reply_message_id: int | None = None
    id: int | None = None
    created_at: str = ""


@dataclass(frozen=True)
class Correction:
    """A user's label for one prediction: a fix, or a confirmation (confirmed=True)."""

    prediction: PredictionRecord
    corrected_label: str
    user_id: int | None
    message_id: int | None
    confirmed: bool = False


@dataclass(frozen=True)
class SavedCorrection:
    id: int
    path: Path
    previous_label: str | None  # the label an earlier correction of this photo had, if any
    created: bool


@dataclass
class Stats:
    predictions: int = 0
    labelled: int = 0
    corrections_per_class: dict[str, int] = field(default_factory=dict)
    confirmations: int = 0
    fixes: int = 0
    wrong_rate: float | None = None  # among corrected/confirmed photos with a model prediction


class Store:
    """aiosqlite over KIMCHI_HOME/kimchi.sqlite3, plus the corrections folder it keeps in step."""

    def __init__(self, db: aiosqlite.Connection, path: Path, corrections: Path) -> None:
        self.db, self.path, self.corrections = db, path, corrections
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, corrections: Path) -> "Store":
        path.parent.mkdir(parents=True, exist_ok=True)
        corrections.mkdir(parents=True, exist_ok=True)
        try:
            db = await aiosqlite.connect(path, timeout=10)
        except Exception as err:  # sqlite3.OperationalError and friends: the operator needs one sentence
            raise KimchiError(f"The database {path} cannot be opened: {err}.") from err
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA busy_timeout=5000")
        await db.execute("PRAGMA foreign_keys=ON")
        await db.execute("PRAGMA synchronous=NORMAL")
        store = cls(db, path, corrections)
        await store._migrate()
        return store

    async def _migrate(self) -> None:
        async with self.db.execute("PRAGMA user_version") as cur:
            (version,) = await cur.fetchone()
        for number, script in enumerate(MIGRATIONS[version:], version + 1):
            log.info("applying database migration %d", number)
            await self.db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")

    async def schema_version(self) -> int:
        async with self.db.execute("PRAGMA user_version") as cur:
            return (await cur.fetchone())[0]

    async def close(self) -> None:
        await self.db.close()

    # -- predictions ---------------------------------------------------------------------------
    async def record_prediction(self, p: PredictionRecord) -> PredictionRecord:
        created = stamp()
        async with self._write_lock:
            cur = await self.db.execute(
                "INSERT INTO predictions (chat_id, user_id, message_id, reply_message_id, file_id, file_unique_id,"
                " sha256, label, confidence, top_json, model_version, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (p.chat_id, p.user_id, p.message_id, p.reply_message_id, p.file_id, p.file_unique_id, p.sha256,
                 p.label, p.confidence, json.dumps(p.top, ensure_ascii=False), p.model_version, created))
            await self.db.commit()
        return PredictionRecord(**{**p.__dict__, "id": cur.lastrowid, "created_at": created})

    async def prediction_for_message(self, chat_id: int, message_id: int) -> PredictionRecord | None:
        """The prediction whose photo, or whose answer, is this message."""
        return await self._one("SELECT * FROM predictions WHERE chat_id=? AND (message_id=? OR reply_message_id=?)"
                               " ORDER BY id DESC LIMIT 1", (chat_id, message_id, message_id))

    async def latest_prediction(self, chat_id: int, user_id: int | None, within: timedelta) -> PredictionRecord | None:
        return await self._one("SELECT * FROM predictions WHERE chat_id=? AND user_id IS ? AND created_at >= ?"
                               " ORDER BY id DESC LIMIT 1", (chat_id, user_id, stamp(now() - within)))

    async def _one(self, sql: str, args: tuple) -> PredictionRecord | None:
        async with self.db.execute(sql, args) as cur:
            row = await cur.fetchone()
        return _prediction(row) if row else None

    # -- corrections ---------------------------------------------------------------------------
    async def save_correction(self, c: Correction, image: bytes) -> SavedCorrection:
        """Write the photo into corrections/<label>/<sha256>.jpg (fsynced), then the row; commit.

        Correcting the same prediction again updates its row and moves its file: never a duplicate.
        """
        p = c.prediction
        async with self._write_lock:
            async with self.db.execute("SELECT id, corrected_label, path FROM corrections WHERE prediction_id=?",
                                       (p.id,)) as cur:
                existing = await cur.fetchone()
            previous = existing["corrected_label"] if existing else None
            path = await asyncio.to_thread(self._place_image, p.sha256, c.corrected_label, image)
            stamp_now = stamp()
            try:
                await self.db.execute("PRAGMA synchronous=FULL")
                if existing:
                    await self.db.execute(
                        "UPDATE corrections SET corrected_label=?, confirmed=?, user_id=?, message_id=?, path=?,"
                        " updated_at=? WHERE id=?",
                        (c.corrected_label, int(c.confirmed), c.user_id, c.message_id, str(path), stamp_now, existing["id"]))
                    row_id = existing["id"]
                else:
                    cur = await self.db.execute(
                        "INSERT INTO corrections (prediction_id, user_id, chat_id, message_id, file_unique_id, sha256,"
                        " predicted_label, confidence, corrected_label, confirmed, model_version, path, created_at,"
                        " updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (p.id, c.user_id, p.chat_id, c.message_id, p.file_unique_id, p.sha256, p.label, p.confidence,
                         c.corrected_label, int(c.confirmed), p.model_version, str(path), stamp_now, stamp_now))
                    row_id = cur.lastrowid
                await self.db.commit()
            except BaseException:
                await self.db.rollback()
                raise
            finally:
                await self.db.execute("PRAGMA synchronous=NORMAL")
            if previous and previous != c.corrected_label:
                async with self.db.execute("SELECT COUNT(*) FROM corrections WHERE sha256=? AND corrected_label=?",
                                           (p.sha256, previous)) as cur:
                    (still_used,) = await cur.fetchone()
                if not still_used:  # the photo moved to its new label's folder
                    await asyncio.to_thread(self._remove_image, p.sha256, previous)
        return SavedCorrection(row_id, path, previous, existing is None)

    def _place_image(self, sha256: str, label: str, image: bytes) -> Path:
        """corrections/<label>/<sha256>.jpg, upright RGB JPEG, fsynced; another label's copy is moved."""
        target = self.corrections / label / f"{sha256}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_file():
            return target
        fsync_write(target, _as_upright_jpeg(image))
        return target

    def _remove_image(self, sha256: str, label: str) -> None:
        old = self.corrections / label / f"{sha256}.jpg"
        old.unlink(missing_ok=True)
        if old.parent.exists():
            fsync_dir(old.parent)

    # -- retraining ------------------------------------------------------------------------------
    async def splits(self) -> dict[str, str]:
        async with self.db.execute("SELECT sha256, split FROM splits") as cur:
            return {row[0]: row[1] for row in await cur.fetchall()}

    async def add_splits(self, decided: list[tuple[str, str, str]]) -> None:
        """Record (sha256, split, source) for images seen for the first time; earlier decisions stand."""
        if not decided:
            return
        at = stamp()
        async with self._write_lock:
            await self.db.executemany("INSERT OR IGNORE INTO splits (sha256, split, source, decided_at) VALUES (?,?,?,?)",
                                      [(sha, split, source, at) for sha, split, source in decided])
            await self.db.commit()

    async def start_run(self, started_by: int | None, chat_id: int | None, counts: dict[str, Any]) -> int:
        async with self._write_lock:
            cur = await self.db.execute(
                "INSERT INTO retrain_runs (started_by, chat_id, status, started_at, counts_json) VALUES (?,?,?,?,?)",
                (started_by, chat_id, "running", stamp(), json.dumps(counts, ensure_ascii=False)))
            await self.db.commit()
        return cur.lastrowid

    async def update_run(self, run_id: int, **fields: Any) -> None:
        allowed = {"status", "pid", "finished_at", "duration_s", "candidate", "baseline", "metrics_json", "decision",
                   "reason", "log_tail", "counts_json"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown retrain_runs columns: {unknown}")
        assignments = ", ".join(f"{name}=?" for name in fields)
        async with self._write_lock:
            await self.db.execute(f"UPDATE retrain_runs SET {assignments} WHERE id=?", (*fields.values(), run_id))
            await self.db.commit()

    async def runs(self, status: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM retrain_runs", ()
        if status:
            sql, args = sql + " WHERE status=?", (status,)
        async with self.db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)) as cur:
            return [dict(r) for r in await cur.fetchall()]

    async def latest_corrections(self) -> list[dict[str, Any]]:
        """The newest label of each corrected photo (by sha256): what /retrain trains on."""
        async with self.db.execute(
                "SELECT sha256, corrected_label, path, confirmed FROM corrections c WHERE updated_at ="
                " (SELECT MAX(updated_at) FROM corrections d WHERE d.sha256 = c.sha256) ORDER BY id") as cur:
            return [dict(r) for r in await cur.fetchall()]

    # -- admin -----------------------------------------------------------------------------------
    async def stats(self) -> Stats:
        s = Stats()
        async with self.db.execute("SELECT COUNT(*), COUNT(label) FROM predictions") as cur:
            s.predictions, s.labelled = await cur.fetchone()
        async with self.db.execute("SELECT corrected_label, COUNT(*) FROM corrections GROUP BY corrected_label"
                                   " ORDER BY COUNT(*) DESC") as cur:
            s.corrections_per_class = {row[0]: row[1] for row in await cur.fetchall()}
        async with self.db.execute(
                "SELECT SUM(confirmed), SUM(1 - confirmed), SUM(predicted_label IS NOT NULL),"
                " SUM(predicted_label IS NOT NULL AND predicted_label != corrected_label) FROM corrections") as cur:
            confirmed, fixes, judged, wrong = await cur.fetchone()
        s.confirmations, s.fixes = confirmed or 0, fixes or 0
        s.wrong_rate = (wrong or 0) / judged if judged else None
        return s


def _prediction(row: aiosqlite.Row) -> PredictionRecord:
    top = tuple(tuple(t) for t in json.loads(row["top_json"] or "[]"))
    return PredictionRecord(chat_id=row["chat_id"], user_id=row["user_id"], message_id=row["message_id"],
                            file_id=row["file_id"], file_unique_id=row["file_unique_id"], sha256=row["sha256"],
                            label=row["label"], confidence=row["confidence"], top=top,  # type: ignore[arg-type]
                            model_version=row["model_version"], reply_message_id=row["reply_message_id"],
                            id=row["id"], created_at=row["created_at"])


def _as_upright_jpeg(image: bytes) -> bytes:
    """The photo as training will read it: the original bytes when already an upright RGB JPEG
    (no recompression), otherwise decoded, EXIF-rotated and saved as JPEG quality 95."""
    header = open_checked(image)
    if header.format == "JPEG" and header.mode == "RGB" and exif_orientation(header) == 1:
        return image
    img = decode_rgb(image)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()
