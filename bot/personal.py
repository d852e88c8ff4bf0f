"""What the bot keeps about one person, in SQLite and the corrections folder: a copy of it (`/mydata`), its
erasure (`/forget`), and the retention purge. The rows only; the words are in bot/texts.py, the commands in
bot/privacy.py.

Where a person's data is (models.schema): `predictions` (each photo the bot answered: chat, message and file
ids, the photo's sha256, the answer), `corrections` (each label or vote: the label, its status, and the stored
photo), `users` (first seen, given trust, a block). `retrain_runs` name only admins; `splits` and `erasures`
name nobody.
"""
from __future__ import annotations

import asyncio
import csv
import io
import json
import zipfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from bot.db import Database
from bot.photos import Photos
from models.clock import stamp, utc_now
from models.status import Status

# Every column of the schema, by table, that holds something of a person or points at it: /privacy's text
# covers these (tests/test_privacy.py fails when the schema grows a column this does not list).
PERSONAL = {
    "predictions": ("id", "chat_id", "user_id", "message_id", "reply_message_id", "file_id", "file_unique_id",
                    "sha256", "label", "confidence", "top_json", "model_version", "created_at"),
    "corrections": ("id", "prediction_id", "user_id", "chat_id", "message_id", "file_unique_id", "sha256",
                    "predicted_label", "confidence", "corrected_label", "confirmed", "model_version", "path",
                    "created_at", "updated_at", "missing_file", "status", "source", "decided_by", "decided_at",
                    "audit_flag", "update_seq", "basis", "bytes"),
    "users": ("user_id", "trusted", "blocked", "updated_at", "first_seen", "name"),
}
# Tables that name no user (admins' retrains name admins, who run the bot).
IMPERSONAL = ("retrain_runs", "splits", "erasures")


@dataclass(frozen=True)
class Erased:
    predictions: int
    labels: int
    files: int


@dataclass(frozen=True)
class Purged:
    predictions: int
    pending: int
    rejected: int
    files: int


class PersonalData:
    """One person's rows and photos, read for a copy, erased whole, and everyone's old rows purged."""

    def __init__(self, db: Database, photos: Photos) -> None:
        self.db, self.photos = db, photos

    async def file_unique_ids(self, user_id: int) -> set[str]:
        """Telegram's file_unique_ids of the person's photos (the bot's photo cache forgets them with the rows)."""
        return {r[0] for r in await self.db.all("SELECT file_unique_id FROM predictions WHERE user_id=?"
                                                " AND file_unique_id IS NOT NULL", (user_id,))}

    async def export_zip(self, user_id: int) -> tuple[bytes, int, int]:
        """A zip of everything kept about the person (predictions.csv, labels.csv, user.json and their photos),
        built in a thread; with the number of predictions and labels in it."""
        predictions = await self.db.all("SELECT * FROM predictions WHERE user_id=? ORDER BY id", (user_id,))
        labels = await self.db.all("SELECT * FROM corrections WHERE user_id=? ORDER BY id", (user_id,))
        user = await self.db.one("SELECT * FROM users WHERE user_id=?", (user_id,))
        return await asyncio.to_thread(_zip, predictions, labels, user), len(predictions), len(labels)

    async def forget(self, user_id: int) -> Erased:
        """Erase the person: their predictions, every label on their photos or by them, their user row (a block
        stays, as the bare fact, so that an erasure cannot undo it). One transaction; the photo files no row
        names any more go after the commit (a crash between the two leaves files that the next start's
        reconcile removes)."""
        async with self.db.write(durable=True) as tx:
            doomed = await self.db.all(
                "SELECT id, path FROM corrections WHERE user_id=? OR prediction_id IN"
                " (SELECT id FROM predictions WHERE user_id=?)", (user_id, user_id))
            ids = [r["id"] for r in doomed]
            await tx.executemany("DELETE FROM corrections WHERE id=?", [(i,) for i in ids])
            predictions = (await tx.execute("DELETE FROM predictions WHERE user_id=?", (user_id,))).rowcount
            # decided inside the erase: a /block meanwhile is not lost
            await tx.execute("UPDATE users SET trusted=0, first_seen=NULL, name=NULL, updated_at=?"
                             " WHERE user_id=? AND blocked=1", (stamp(), user_id))
            await tx.execute("DELETE FROM users WHERE user_id=? AND blocked=0", (user_id,))
            await tx.execute("INSERT INTO erasures (erased_at, predictions, labels) VALUES (?,?,?)",
                             (stamp(), predictions, len(ids)))
            gone = await self.photos.remove_unnamed(self.db, tx, {r["path"] for r in doomed})
        return Erased(predictions, len(ids), len(gone))

    async def purge(self, retention_days: float, pending_days: float) -> Purged:
        """Everyone's rows past their time: predictions older than `retention_days` that never became a label,
        labels still pending after `pending_days` (no admin ever decided them), and rejected labels older than
        `retention_days`, with the photos no row names any more."""
        old = stamp(utc_now() - timedelta(days=retention_days))
        stale = stamp(utc_now() - timedelta(days=pending_days))
        async with self.db.write() as tx:
            doomed = await self.db.all(
                "SELECT id, path, status FROM corrections WHERE (status=? AND created_at < ?) OR"
                " (status=? AND updated_at < ?)", (Status.PENDING, stale, Status.REJECTED, old))
            await tx.executemany("DELETE FROM corrections WHERE id=?", [(r["id"],) for r in doomed])
            predictions = (await tx.execute(
                "DELETE FROM predictions WHERE created_at < ? AND id NOT IN (SELECT prediction_id FROM corrections)",
                (old,))).rowcount
            gone = await self.photos.remove_unnamed(self.db, tx, {r["path"] for r in doomed})
        return Purged(predictions, sum(r["status"] == Status.PENDING for r in doomed),
                      sum(r["status"] == Status.REJECTED for r in doomed), len(gone))

    async def erasures(self) -> int:
        return (await self.db.one("SELECT COUNT(*) FROM erasures"))[0]


def _csv(rows) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.writer(buf)
        writer.writerow(rows[0].keys())
        writer.writerows(tuple(r) for r in rows)
    return buf.getvalue()


def _zip(predictions, labels, user) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("predictions.csv", _csv(predictions))
        z.writestr("labels.csv", _csv(labels))
        z.writestr("user.json", json.dumps(dict(user) if user else {}, ensure_ascii=False, indent=1))
        for row in labels:
            path = Path(row["path"])
            if path.is_file():
                z.write(path, f"photos/{row['id']}-{row['corrected_label']}.jpg", zipfile.ZIP_STORED)
        z.writestr("README.txt", "What the kimchi bot keeps about you: predictions.csv (each photo it answered),\n"
                                 "labels.csv (each label you gave, with its status), user.json (your record),\n"
                                 "photos/ (the photos of yours it keeps, as it keeps them).\n")
    return buf.getvalue()
