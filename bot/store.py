"""The bot's memory: the rows of its SQLite file (bot.db), beside the corrections folder (bot.photos).

Predictions are logged with synchronous=NORMAL (a power cut may lose the last few; a crash of the bot
does not). Corrections, which the user is told are saved, are written file first (fsynced), then the
row, committed with synchronous=FULL, before the reply goes out. Every write is one `db.write` block.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, AsyncIterator

import aiosqlite

from bot.db import Database, Transaction
from bot.photos import Photos, is_bounded
from models.clock import stamp, utc_now
from models.errors import KimchiError
from models.preprocess import ImageLimits
from models.status import Source, Status

log = logging.getLogger(__name__)

STALE_WINDOW = timedelta(days=1)  # how long an update's number orders a photo's labels


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
    user_name: str | None = None  # the sender's Telegram name as sent with this photo (the desk shows it)


@dataclass(frozen=True)
class Correction:
    """A user's label for one prediction: a fix, or a confirmation (confirmed=True)."""

    prediction: PredictionRecord
    corrected_label: str
    user_id: int | None
    message_id: int | None
    confirmed: bool = False
    status: Status = Status.ACCEPTED  # what the correction policy decided (bot.trust)
    source: Source = Source.CORRECTION
    basis: str | None = None  # what decided the status (bot.trust.Basis); None while pending
    audit_flag: str | None = None  # kept from the row this label replaces: only an admin clears it
    update_seq: int | None = None  # Telegram's update_id of the message or tap: an older one never wins


@dataclass(frozen=True)
class SavedCorrection:
    id: int
    path: Path
    previous_label: str | None  # the label an earlier correction of this photo had, if any
    created: bool
    stale: bool = False  # a newer message of the user already labelled this photo: nothing was changed


class QuotaExceeded(KimchiError):
    """The user's stored photos would pass their disk quota."""

    def __init__(self, used: int, quota: int) -> None:
        super().__init__(f"The user's stored photos take {used / 1e6:.1f} MB of a {quota / 1e6:.0f}-MB quota.")
        self.used, self.quota = used, quota


class NoStoredImage(KimchiError):
    """A label needs the photo's bytes: none are stored for it yet."""


@dataclass
class Stats:
    predictions: int = 0
    labelled: int = 0
    corrections_per_class: dict[str, int] = field(default_factory=dict)
    confirmations: int = 0
    fixes: int = 0
    wrong_rate: float | None = None  # among corrected/confirmed photos with a model prediction


NAME_CHARS = 64


class Store:
    """The rows of KIMCHI_HOME/kimchi.sqlite3, and the corrections folder they name (`photos`)."""

    def __init__(self, db: Database, photos: Photos, quota_bytes: int = 0) -> None:
        self.db, self.photos = db, photos
        self.quota_bytes = quota_bytes  # 0: none
        # Predictions are written just after their reply; a correction racing that write waits for it.
        self._unwritten: collections.Counter[int] = collections.Counter()
        self._written = asyncio.Condition()

    @classmethod
    async def open(cls, path: Path, corrections: Path, limits: ImageLimits = ImageLimits(),
                   quota_bytes: int = 0) -> "Store":
        photos = Photos(corrections, limits)
        return cls(await Database.open(path), photos, quota_bytes)

    @property
    def limits(self) -> ImageLimits:
        return self.photos.limits

    async def schema_version(self) -> int:
        return await self.db.schema_version()

    async def close(self) -> None:
        await self.db.close()

    # -- predictions ---------------------------------------------------------------------------
    async def record_prediction(self, p: PredictionRecord) -> PredictionRecord:
        created = stamp()
        async with self.db.write() as tx:
            done = await tx.execute(
                "INSERT INTO predictions (chat_id, user_id, message_id, reply_message_id, file_id, file_unique_id,"
                " sha256, label, confidence, top_json, model_version, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (p.chat_id, p.user_id, p.message_id, p.reply_message_id, p.file_id, p.file_unique_id, p.sha256,
                 p.label, p.confidence, json.dumps(p.top, ensure_ascii=False), p.model_version, created))
            if p.user_id is not None:  # first seen: agreement counts only users the bot has known a while
                await _seen(tx, p.user_id, created, p.user_name)
        return PredictionRecord(**{**p.__dict__, "id": done.lastrowid, "created_at": created})

    @contextlib.asynccontextmanager
    async def prediction_pending(self, chat_id: int) -> AsyncIterator[None]:
        """Around a reply and its record_prediction: lookups in this chat wait until the row is written."""
        self._unwritten[chat_id] += 1
        try:
            yield
        finally:
            self._unwritten[chat_id] -= 1
            if not self._unwritten[chat_id]:
                del self._unwritten[chat_id]
            async with self._written:
                self._written.notify_all()

    async def _settled(self, chat_id: int, timeout: float = 10.0) -> None:
        if chat_id not in self._unwritten:
            return
        async with self._written:
            try:
                await asyncio.wait_for(self._written.wait_for(lambda: chat_id not in self._unwritten), timeout)
            except asyncio.TimeoutError:
                log.warning("a prediction in chat %s is still unwritten after %.0f s", chat_id, timeout)

    async def prediction_for_message(self, chat_id: int, message_id: int) -> PredictionRecord | None:
        """The prediction whose photo, or whose answer, is this message."""
        await self._settled(chat_id)
        return await self._prediction(
            "SELECT * FROM predictions WHERE chat_id=? AND (message_id=? OR reply_message_id=?)"
            " ORDER BY id DESC LIMIT 1", (chat_id, message_id, message_id))

    async def latest_prediction(self, chat_id: int, user_id: int | None, within: timedelta) -> PredictionRecord | None:
        await self._settled(chat_id)
        return await self._prediction("SELECT * FROM predictions WHERE chat_id=? AND user_id IS ? AND created_at >= ?"
                                      " ORDER BY id DESC LIMIT 1", (chat_id, user_id, stamp(utc_now() - within)))

    async def _prediction(self, sql: str, args: tuple) -> PredictionRecord | None:
        row = await self.db.one(sql, args)
        return _prediction(row) if row else None

    # -- corrections ---------------------------------------------------------------------------
    async def stored_image(self, sha256: str) -> Path | None:
        """A file already stored for this photo (under any label): a further label reuses it, with no
        download and no decode."""
        for (path,) in await self.db.all("SELECT path FROM corrections WHERE sha256=? AND missing_file=0"
                                         " ORDER BY id DESC", (sha256,)):
            if Path(path).is_file():
                return Path(path)
        return None

    async def existing_correction(self, prediction_id: int | None) -> aiosqlite.Row | None:
        return await self.db.one("SELECT * FROM corrections WHERE prediction_id=?", (prediction_id,))

    async def stored_bytes(self, user_id: int | None) -> int:
        """Disk the user's photos that are not (yet) used take: pending and rejected labels. Accepted ones are
        what the bot is for and do not count against the quota."""
        return (await self.db.one("SELECT COALESCE(SUM(bytes), 0) FROM corrections WHERE user_id IS ?"
                                  " AND status != ?", (user_id, Status.ACCEPTED)))[0]

    async def save_correction(self, c: Correction, image: bytes | None, quota: bool = True) -> SavedCorrection:
        """Put the photo at corrections/<label>/<sha256>.jpg (fsynced), then write the row; commit.

        The photo is stored once, bounded and clean (`bot.photos.bounded_jpeg`); a further label of the same
        photo reuses that file (`image` may then be None). The decode happens before the write, in a thread,
        within a memory budget shared by all decodes. Correcting the same prediction again updates its row
        and moves its file: never a duplicate. A label from an older Telegram update than the row's
        (`update_seq`) changes nothing and comes back `stale`. `quota`: hold the user to
        KIMCHI_USER_QUOTA_MB (admins are not).
        """
        p = c.prediction
        reuse = await self.stored_image(p.sha256)
        staged: Path | None = None
        if reuse is None:
            if image is None:
                raise NoStoredImage(f"No photo is stored for {p.sha256[:12]} and none was given.")
            staged = await self.photos.stage(p.sha256, image)
        try:
            async with self.db.write(durable=True) as tx:
                if staged is None and not reuse.is_file():  # moved by another label since: look again
                    reuse = await self.stored_image(p.sha256)
                    if reuse is None:
                        raise NoStoredImage(f"The stored photo {p.sha256[:12]} went away; it is needed again.")
                existing = await self.existing_correction(p.id)
                previous = existing["corrected_label"] if existing else None
                seen = existing["update_seq"] if existing else None
                # Telegram numbers updates in order, but restarts at random after a week without any: only
                # a recent row's number is compared.
                if (seen is not None and c.update_seq is not None and c.update_seq < seen
                        and existing["updated_at"] >= stamp(utc_now() - STALE_WINDOW)):
                    return SavedCorrection(existing["id"], Path(existing["path"]), previous, False, stale=True)
                size = (staged or reuse).stat().st_size
                if quota and self.quota_bytes:
                    mine = (existing is not None and existing["user_id"] == c.user_id
                            and existing["status"] != Status.ACCEPTED)
                    used = await self.stored_bytes(c.user_id) - (existing["bytes"] if mine else 0)
                    if c.status != Status.ACCEPTED and used + size > self.quota_bytes:
                        raise QuotaExceeded(used, self.quota_bytes)
                path = await asyncio.to_thread(self.photos.install, staged, reuse, p.sha256, c.corrected_label)
                row_id = await _write_correction_row(tx, c, path, size, existing["id"] if existing else None)
                if existing and existing["path"] != str(path):  # the photo moved to its new label's folder
                    await self.photos.remove_unnamed(self.db, tx, {existing["path"]})
        finally:
            if staged is not None:
                staged.unlink(missing_ok=True)
        return SavedCorrection(row_id, path, previous, existing is None)

    async def reconcile(self) -> tuple[int, int]:
        """After a crash: remove correction files that no row names (and staged leftovers); flag rows whose
        file is gone. Returns (files removed, rows flagged)."""
        rows = [(r["id"], Path(r["path"])) for r in await self.db.all("SELECT id, path FROM corrections")]
        removed = self.photos.remove_orphans({path.resolve() for _, path in rows})
        missing = [row_id for row_id, path in rows if not path.is_file()]
        unsized = await self.db.all("SELECT id, path FROM corrections WHERE bytes=0 AND missing_file=0")
        sizes = [(Path(r["path"]).stat().st_size, r["id"]) for r in unsized if Path(r["path"]).is_file()]
        async with self.db.write() as tx:
            await tx.execute("UPDATE corrections SET missing_file=0")
            await tx.executemany("UPDATE corrections SET missing_file=1 WHERE id=?", [(i,) for i in missing])
            await tx.executemany("UPDATE corrections SET bytes=? WHERE id=?", sizes)  # rows from before quotas
        if removed or missing:
            log.warning("corrections folder reconciled: %d file(s) without a row removed, %d row(s) without a file "
                        "flagged", removed, len(missing))
        return removed, len(missing)

    async def bound_legacy_photos(self) -> int:
        """Photos stored before photos were kept bounded and clean (originals, EXIF and GPS included) are
        rewritten as `bounded_jpeg` makes them; run in the background after start. Returns files rewritten."""
        paths = [Path(r[0]) for r in await self.db.all("SELECT DISTINCT path FROM corrections WHERE missing_file=0")]
        legacy = await asyncio.to_thread(lambda: [p for p in paths if not is_bounded(p)])
        done = 0
        for path in legacy:
            size = await self.photos.rebound(path)
            if size is None:
                continue
            async with self.db.write() as tx:
                await tx.execute("UPDATE corrections SET bytes=? WHERE path=?", (size, str(path)))
            done += 1
        if done:
            log.info("rewrote %d stored photo(s) from before photos were kept bounded and without metadata", done)
        return done

    # -- retraining ------------------------------------------------------------------------------
    async def splits(self) -> dict[str, str]:
        return {row[0]: row[1] for row in await self.db.all("SELECT sha256, split FROM splits")}

    async def add_splits(self, decided: list[tuple[str, str, str]]) -> None:
        """Record (sha256, split, source): first decisions, and near-duplicates moved to their group's side."""
        if not decided:
            return
        at = stamp()
        async with self.db.write() as tx:
            await tx.executemany("INSERT INTO splits (sha256, split, source, decided_at) VALUES (?,?,?,?)"
                                 " ON CONFLICT(sha256) DO UPDATE SET split=excluded.split,"
                                 " decided_at=excluded.decided_at",
                                 [(sha, split, source, at) for sha, split, source in decided])

    async def start_run(self, started_by: int | None, chat_id: int | None, counts: dict[str, Any]) -> int:
        async with self.db.write() as tx:
            done = await tx.execute(
                "INSERT INTO retrain_runs (started_by, chat_id, status, started_at, counts_json) VALUES (?,?,?,?,?)",
                (started_by, chat_id, "running", stamp(), json.dumps(counts, ensure_ascii=False)))
        return done.lastrowid

    async def update_run(self, run_id: int, **fields: Any) -> None:
        allowed = {"status", "pid", "finished_at", "duration_s", "candidate", "baseline", "metrics_json", "decision",
                   "reason", "log_tail", "counts_json"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown retrain_runs columns: {unknown}")
        assignments = ", ".join(f"{name}=?" for name in fields)
        async with self.db.write() as tx:
            await tx.execute(f"UPDATE retrain_runs SET {assignments} WHERE id=?", (*fields.values(), run_id))

    async def runs(self, status: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM retrain_runs", ()
        if status:
            sql, args = sql + " WHERE status=?", (status,)
        return [dict(r) for r in await self.db.all(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))]

    # -- admin -----------------------------------------------------------------------------------
    async def stats(self) -> Stats:
        s = Stats()
        s.predictions, s.labelled = await self.db.one("SELECT COUNT(*), COUNT(label) FROM predictions")
        s.corrections_per_class = {row[0]: row[1] for row in await self.db.all(
            "SELECT corrected_label, COUNT(*) FROM corrections GROUP BY corrected_label ORDER BY COUNT(*) DESC")}
        confirmed, fixes, judged, wrong = await self.db.one(
            "SELECT SUM(confirmed), SUM(1 - confirmed), SUM(predicted_label IS NOT NULL),"
            " SUM(predicted_label IS NOT NULL AND predicted_label != corrected_label) FROM corrections")
        s.confirmations, s.fixes = confirmed or 0, fixes or 0
        s.wrong_rate = (wrong or 0) / judged if judged else None
        return s


async def _seen(tx: Transaction, user_id: int, at: str, name: str | None = None) -> None:
    """A user's first sighting (agreement counts only users the bot has known a while), and their name as they
    last sent it (bounded to NAME_CHARS)."""
    await tx.execute("INSERT OR IGNORE INTO users (user_id, first_seen, updated_at) VALUES (?,?,?)", (user_id, at, at))
    if name:
        await tx.execute("UPDATE users SET name=? WHERE user_id=? AND COALESCE(name, '') != ?",
                         (name[:NAME_CHARS], user_id, name[:NAME_CHARS]))


async def _write_correction_row(tx: Transaction, c: Correction, path: Path, size: int, existing_id: int | None) -> int:
    p, now_ = c.prediction, stamp()
    if existing_id is not None:
        await tx.execute(
            "UPDATE corrections SET corrected_label=?, confirmed=?, user_id=?, message_id=?, path=?,"
            " missing_file=0, status=?, source=?, basis=?, decided_by=NULL, decided_at=?, audit_flag=?,"
            " update_seq=?, bytes=?, updated_at=? WHERE id=?",
            (c.corrected_label, int(c.confirmed), c.user_id, c.message_id, str(path), c.status, c.source,
             c.basis, now_ if c.basis else None, c.audit_flag, c.update_seq, size, now_, existing_id))
        row_id = existing_id
    else:
        done = await tx.execute(
            "INSERT INTO corrections (prediction_id, user_id, chat_id, message_id, file_unique_id, sha256,"
            " predicted_label, confidence, corrected_label, confirmed, model_version, path, status, source,"
            " basis, decided_at, audit_flag, update_seq, bytes, created_at, updated_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (p.id, c.user_id, p.chat_id, c.message_id, p.file_unique_id, p.sha256, p.label, p.confidence,
             c.corrected_label, int(c.confirmed), p.model_version, str(path), c.status, c.source, c.basis,
             now_ if c.basis else None, c.audit_flag, c.update_seq, size, now_, now_))
        row_id = done.lastrowid
    if c.user_id is not None:
        await _seen(tx, c.user_id, now_)
    return row_id


def _prediction(row: aiosqlite.Row) -> PredictionRecord:
    top = tuple(tuple(t) for t in json.loads(row["top_json"] or "[]"))
    return PredictionRecord(chat_id=row["chat_id"], user_id=row["user_id"], message_id=row["message_id"],
                            file_id=row["file_id"], file_unique_id=row["file_unique_id"], sha256=row["sha256"],
                            label=row["label"], confidence=row["confidence"], top=top,  # type: ignore[arg-type]
                            model_version=row["model_version"], reply_message_id=row["reply_message_id"],
                            id=row["id"], created_at=row["created_at"])
