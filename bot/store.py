"""The bot's memory: one SQLite file (WAL, busy timeout, numbered migrations) and the corrections folder.

Predictions are logged with synchronous=NORMAL (a power cut may lose the last few; a crash of the bot
does not). Corrections, which the user is told are saved, are written file first (fsynced), then the
row, committed with synchronous=FULL, before the reply goes out.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, AsyncIterator

import aiosqlite
from PIL import Image

from models.atomic import atomic_write, fsync_dir
from models.clock import stamp, utc_now
from models.errors import KimchiError
from models.artifact import Preprocessing
from models.preprocess import ImageLimits, decode_rgb, decoded_bytes, open_checked
from models.schema import MIGRATIONS

log = logging.getLogger(__name__)

INCOMING = ".incoming"  # staged correction photos, not yet renamed into a class folder
STORED_SHORT_SIDE = Preprocessing().presize  # the recipe's Resize(460): a stored photo's shorter side at most
STORED_LONG_SIDE = 2 * STORED_SHORT_SIDE  # and its longer side at most twice that
STORED_QUALITY = 90  # JPEG quality of a stored photo (~60-120 KB at 613x460)
# Decodes of photos being stored hold at most this much at once (a 40-MP JPEG holds 120 MB while decoded).
DECODE_BUDGET_BYTES = 512 * 1024 * 1024
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


@dataclass(frozen=True)
class Correction:
    """A user's label for one prediction: a fix, or a confirmation (confirmed=True)."""

    prediction: PredictionRecord
    corrected_label: str
    user_id: int | None
    message_id: int | None
    confirmed: bool = False
    status: str = "accepted"  # what the correction policy decided (bot.trust)
    source: str = "correction"  # correction | confirm | ask | dispute | label
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


class Store:
    """aiosqlite over KIMCHI_HOME/kimchi.sqlite3, plus the corrections folder it keeps in step."""

    def __init__(self, db: aiosqlite.Connection, path: Path, corrections: Path,
                 limits: ImageLimits = ImageLimits(), quota_bytes: int = 0) -> None:
        self.db, self.path, self.corrections = db, path, corrections
        self.limits, self.quota_bytes = limits, quota_bytes  # quota 0: none
        self._write_lock = asyncio.Lock()
        self._decoding = MemoryBudget(DECODE_BUDGET_BYTES)
        # Predictions are written just after their reply; a correction racing that write waits for it.
        self._unwritten: collections.Counter[int] = collections.Counter()
        self._written = asyncio.Condition()

    @classmethod
    async def open(cls, path: Path, corrections: Path, limits: ImageLimits = ImageLimits(),
                   quota_bytes: int = 0) -> "Store":
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
        store = cls(db, path, corrections, limits, quota_bytes)
        await store._migrate()
        return store

    @property
    def write_lock(self) -> asyncio.Lock:
        """Held for every write: one writer at a time on the connection."""
        return self._write_lock

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
            if p.user_id is not None:  # first seen: agreement counts only users the bot has known a while
                await self.db.execute("INSERT OR IGNORE INTO users (user_id, first_seen, updated_at) VALUES (?,?,?)",
                                      (p.user_id, created, created))
            await self.db.commit()
        return PredictionRecord(**{**p.__dict__, "id": cur.lastrowid, "created_at": created})

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
        return await self._one("SELECT * FROM predictions WHERE chat_id=? AND (message_id=? OR reply_message_id=?)"
                               " ORDER BY id DESC LIMIT 1", (chat_id, message_id, message_id))

    async def latest_prediction(self, chat_id: int, user_id: int | None, within: timedelta) -> PredictionRecord | None:
        await self._settled(chat_id)
        return await self._one("SELECT * FROM predictions WHERE chat_id=? AND user_id IS ? AND created_at >= ?"
                               " ORDER BY id DESC LIMIT 1", (chat_id, user_id, stamp(utc_now() - within)))

    async def _one(self, sql: str, args: tuple) -> PredictionRecord | None:
        async with self.db.execute(sql, args) as cur:
            row = await cur.fetchone()
        return _prediction(row) if row else None

    # -- corrections ---------------------------------------------------------------------------
    async def stored_image(self, sha256: str) -> Path | None:
        """A file already stored for this photo (under any label): a further label reuses it, with no
        download and no decode."""
        async with self.db.execute("SELECT path FROM corrections WHERE sha256=? AND missing_file=0 ORDER BY id DESC",
                                   (sha256,)) as cur:
            for (path,) in await cur.fetchall():
                if Path(path).is_file():
                    return Path(path)
        return None

    async def existing_correction(self, prediction_id: int | None) -> aiosqlite.Row | None:
        async with self.db.execute("SELECT * FROM corrections WHERE prediction_id=?", (prediction_id,)) as cur:
            return await cur.fetchone()

    async def stored_bytes(self, user_id: int | None) -> int:
        """Disk the user's photos that are not (yet) used take: pending and rejected labels. Accepted ones are
        what the bot is for and do not count against the quota."""
        async with self.db.execute("SELECT COALESCE(SUM(bytes), 0) FROM corrections WHERE user_id IS ?"
                                   " AND status != 'accepted'", (user_id,)) as cur:
            return (await cur.fetchone())[0]

    async def save_correction(self, c: Correction, image: bytes | None, quota: bool = True) -> SavedCorrection:
        """Put the photo at corrections/<label>/<sha256>.jpg (fsynced), then write the row; commit.

        The photo is stored once, bounded and clean (`bounded_jpeg`); a further label of the same photo
        reuses that file (`image` may then be None). The decode happens before the write lock, in a
        thread, within a memory budget shared by all decodes. Correcting the same prediction again
        updates its row and moves its file: never a duplicate. A label from an older Telegram update than
        the row's (`update_seq`) changes nothing and comes back `stale`. `quota`: hold the user to
        KIMCHI_USER_QUOTA_MB (admins are not).
        """
        p = c.prediction
        reuse = await self.stored_image(p.sha256)
        staged: Path | None = None
        if reuse is None:
            if image is None:
                raise NoStoredImage(f"No photo is stored for {p.sha256[:12]} and none was given.")
            staged = await self._stage(p.sha256, image)
        try:
            async with self._write_lock:
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
                    mine = existing is not None and existing["user_id"] == c.user_id and existing["status"] != "accepted"
                    replaced = existing["bytes"] if mine else 0
                    used = await self.stored_bytes(c.user_id) - replaced
                    if c.status != "accepted" and used + size > self.quota_bytes:
                        raise QuotaExceeded(used, self.quota_bytes)
                path = await asyncio.to_thread(self._install_image, staged, reuse, p.sha256, c.corrected_label)
                row_id = await self._write_correction_row(c, path, size, existing["id"] if existing else None)
                old_path = existing["path"] if existing else None
                if old_path and old_path != str(path):
                    async with self.db.execute("SELECT COUNT(*) FROM corrections WHERE path=?", (old_path,)) as cur:
                        (still_used,) = await cur.fetchone()
                    if not still_used:  # the photo moved to its new label's folder, and no other row names it
                        await asyncio.to_thread(self._remove_file, Path(old_path))
        finally:
            if staged is not None:
                staged.unlink(missing_ok=True)
        return SavedCorrection(row_id, path, previous, existing is None)

    async def _stage(self, sha256: str, image: bytes) -> Path:
        """Decode, bound and re-encode in a thread, holding the decode's memory in the shared budget."""
        cost = await asyncio.to_thread(lambda: decoded_bytes(open_checked(image, self.limits)))
        async with self._decoding.hold(cost):
            return await asyncio.to_thread(self._stage_image, sha256, image)

    async def _write_correction_row(self, c: Correction, path: Path, size: int, existing_id: int | None) -> int:
        p, now_ = c.prediction, stamp()
        try:
            await self.db.execute("PRAGMA synchronous=FULL")
            if existing_id is not None:
                await self.db.execute(
                    "UPDATE corrections SET corrected_label=?, confirmed=?, user_id=?, message_id=?, path=?,"
                    " missing_file=0, status=?, source=?, basis=?, decided_by=NULL, decided_at=?, audit_flag=?,"
                    " update_seq=?, bytes=?, updated_at=? WHERE id=?",
                    (c.corrected_label, int(c.confirmed), c.user_id, c.message_id, str(path), c.status, c.source,
                     c.basis, now_ if c.basis else None, c.audit_flag, c.update_seq, size, now_, existing_id))
                row_id = existing_id
            else:
                cur = await self.db.execute(
                    "INSERT INTO corrections (prediction_id, user_id, chat_id, message_id, file_unique_id, sha256,"
                    " predicted_label, confidence, corrected_label, confirmed, model_version, path, status, source,"
                    " basis, decided_at, audit_flag, update_seq, bytes, created_at, updated_at)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (p.id, c.user_id, p.chat_id, c.message_id, p.file_unique_id, p.sha256, p.label, p.confidence,
                     c.corrected_label, int(c.confirmed), p.model_version, str(path), c.status, c.source, c.basis,
                     now_ if c.basis else None, c.audit_flag, c.update_seq, size, now_, now_))
                row_id = cur.lastrowid
            if c.user_id is not None:
                await self.db.execute("INSERT OR IGNORE INTO users (user_id, first_seen, updated_at) VALUES (?,?,?)",
                                      (c.user_id, now_, now_))
            await self.db.commit()
        except BaseException:
            await self.db.rollback()
            raise
        finally:
            await self.db.execute("PRAGMA synchronous=NORMAL")
        return row_id

    @property
    def _incoming(self) -> Path:
        return self.corrections / INCOMING

    def _stage_image(self, sha256: str, image: bytes) -> Path:
        """The photo as training will read it, fsynced into corrections/.incoming/ (invisible to training)."""
        data = bounded_jpeg(image, self.limits)
        self._incoming.mkdir(parents=True, exist_ok=True)
        staged = self._incoming / f"{sha256}.{uuid.uuid4().hex[:8]}.jpg"
        with open(staged, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return staged

    def _install_image(self, staged: Path | None, stored: Path | None, sha256: str, label: str) -> Path:
        """Put the staged photo, or a copy of the one already stored for it, at corrections/<label>/<sha256>.jpg
        (kept as is when already there)."""
        target = self.corrections / label / f"{sha256}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.is_file():
            if staged is None:
                staged = self._incoming / f"{sha256}.{uuid.uuid4().hex[:8]}.jpg"
                self._incoming.mkdir(parents=True, exist_ok=True)
                with open(stored, "rb") as src, open(staged, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                    dst.flush()
                    os.fsync(dst.fileno())
            os.replace(staged, target)
            fsync_dir(target.parent)
        return target

    @staticmethod
    def _remove_file(old: Path) -> None:
        old.unlink(missing_ok=True)
        if old.parent.exists():
            fsync_dir(old.parent)

    async def reconcile(self) -> tuple[int, int]:
        """After a crash: remove correction files that no row names (and staged leftovers); flag rows whose
        file is gone. Returns (files removed, rows flagged)."""
        async with self.db.execute("SELECT id, path FROM corrections") as cur:
            rows = [(r["id"], Path(r["path"])) for r in await cur.fetchall()]
        named = {path.resolve() for _, path in rows}
        orphans = [f for f in self.corrections.glob("*/*.jpg")
                   if not f.parent.name.startswith(".") and f.resolve() not in named]
        orphans += [f for f in self._incoming.glob("*")] if self._incoming.is_dir() else []
        for orphan in orphans:
            orphan.unlink(missing_ok=True)
        missing = [row_id for row_id, path in rows if not path.is_file()]
        async with self.db.execute("SELECT id, path FROM corrections WHERE bytes=0 AND missing_file=0") as cur:
            unsized = [(r["id"], Path(r["path"])) for r in await cur.fetchall()]
        sizes = [(path.stat().st_size, row_id) for row_id, path in unsized if path.is_file()]
        async with self._write_lock:
            await self.db.execute("UPDATE corrections SET missing_file=0")
            await self.db.executemany("UPDATE corrections SET missing_file=1 WHERE id=?", [(i,) for i in missing])
            await self.db.executemany("UPDATE corrections SET bytes=? WHERE id=?", sizes)  # rows from before quotas
            await self.db.commit()
        if orphans or missing:
            log.warning("corrections folder reconciled: %d file(s) without a row removed, %d row(s) without a file "
                        "flagged", len(orphans), len(missing))
        return len(orphans), len(missing)

    async def bound_legacy_photos(self) -> int:
        """Photos stored before photos were kept bounded and clean (originals, EXIF and GPS included) are
        rewritten as `bounded_jpeg` makes them; run in the background after start. Returns files rewritten."""
        async with self.db.execute("SELECT DISTINCT path FROM corrections WHERE missing_file=0") as cur:
            paths = [Path(r[0]) for r in await cur.fetchall()]
        legacy = await asyncio.to_thread(lambda: [p for p in paths if not _is_bounded(p)])
        done = 0
        for path in legacy:
            try:
                data = await asyncio.to_thread(path.read_bytes)
                async with self._decoding.hold(decoded_bytes(open_checked(data, self.limits))):
                    await asyncio.to_thread(lambda: atomic_write(path, bounded_jpeg(data, self.limits)))
            except (OSError, KimchiError):
                log.warning("could not rewrite the stored photo %s", path, exc_info=True)
                continue
            async with self._write_lock:
                await self.db.execute("UPDATE corrections SET bytes=? WHERE path=?", (path.stat().st_size, str(path)))
                await self.db.commit()
            done += 1
        if done:
            log.info("rewrote %d stored photo(s) from before photos were kept bounded and without metadata", done)
        return done

    # -- retraining ------------------------------------------------------------------------------
    async def splits(self) -> dict[str, str]:
        async with self.db.execute("SELECT sha256, split FROM splits") as cur:
            return {row[0]: row[1] for row in await cur.fetchall()}

    async def add_splits(self, decided: list[tuple[str, str, str]]) -> None:
        """Record (sha256, split, source): first decisions, and near-duplicates moved to their group's side."""
        if not decided:
            return
        at = stamp()
        async with self._write_lock:
            await self.db.executemany("INSERT INTO splits (sha256, split, source, decided_at) VALUES (?,?,?,?)"
                                      " ON CONFLICT(sha256) DO UPDATE SET split=excluded.split,"
                                      " decided_at=excluded.decided_at",
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


def bounded_jpeg(image: bytes, limits: ImageLimits = ImageLimits()) -> bytes:
    """The photo as it is kept: decoded (within `limits`), upright RGB, scaled down so that its shorter side is
    at most the recipe's presize (training's Resize(460) needs no more) and its longer side at most twice that,
    and saved as a JPEG of quality STORED_QUALITY with no metadata at all (no EXIF, GPS, ICC or comments)."""
    img = decode_rgb(image, limits, draft_to=STORED_SHORT_SIDE)
    scale = min(1.0, STORED_SHORT_SIDE / min(img.size), STORED_LONG_SIDE / max(img.size))
    if scale < 1.0:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.LANCZOS)
    clean = Image.new("RGB", img.size)  # a fresh image: nothing of the original's info travels
    clean.paste(img)
    buf = io.BytesIO()
    clean.save(buf, "JPEG", quality=STORED_QUALITY)
    return buf.getvalue()


def _is_bounded(path: Path) -> bool:
    """Whether a stored photo already is what `bounded_jpeg` makes (header only; unreadable counts as done)."""
    try:
        with Image.open(path) as img:
            return (img.format == "JPEG" and min(img.size) <= STORED_SHORT_SIDE and max(img.size) <= STORED_LONG_SIDE
                    and not img.info.get("exif") and not img.info.get("icc_profile") and len(img.getexif()) == 0)
    except Exception:  # a damaged file is reconcile's and training's problem, not this one's
        return True


class MemoryBudget:
    """Bytes that decodes in flight may hold together. A decode waits until its cost fits; one larger
    than the whole budget runs alone."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.used = capacity, 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, cost: int) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: self.used == 0 or self.used + cost <= self.capacity)
            self.used += cost
        try:
            yield
        finally:
            async with self._changed:
                self.used -= cost
                self._changed.notify_all()
