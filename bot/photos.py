"""The corrections folder: each labelled photo once, bounded and clean, at corrections/<label>/<sha256>.jpg.

A new photo is decoded (within a memory budget that all decodes share), bounded and re-encoded, then
staged in corrections/.incoming/ (invisible to training) before the store's write; during the write it
is moved into its label's folder. Every file is written through models.atomic (fsync, rename, fsync the
folder), so a photo the user is told is saved is on disk. The rows that name these files are bot.store's.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from pathlib import Path
from typing import AsyncIterator

from PIL import Image

from models.artifact import Preprocessing
from models.atomic import atomic_write, fsync_dir
from models.datafiles import jpeg_bytes
from models.errors import KimchiError
from models.preprocess import ImageLimits, decode_rgb, decoded_bytes, open_checked

log = logging.getLogger(__name__)

INCOMING = ".incoming"  # staged correction photos, not yet renamed into a class folder
STORED_SHORT_SIDE = Preprocessing().presize  # the recipe's Resize(460): a stored photo's shorter side at most
STORED_LONG_SIDE = 2 * STORED_SHORT_SIDE  # and its longer side at most twice that
STORED_QUALITY = 90  # JPEG quality of a stored photo (~60-120 KB at 613x460)
# Decodes of photos being stored hold at most this much at once (a 40-MP JPEG holds 120 MB while decoded).
DECODE_BUDGET_BYTES = 512 * 1024 * 1024


THUMBS = ".thumbs"


class Photos:
    """KIMCHI_HOME/data/corrections: staging, installing under a label, removing, and what no row names."""

    def __init__(self, root: Path, limits: ImageLimits = ImageLimits()) -> None:
        self.root, self.limits = root, limits
        # the review desk's thumbnails (bot/desk.py), one per photo by sha256; hidden, so backups leave them out,
        # and removed with their photo
        self.thumbs = root / THUMBS
        self._decoding = MemoryBudget(DECODE_BUDGET_BYTES)
        root.mkdir(parents=True, exist_ok=True)

    @property
    def incoming(self) -> Path:
        return self.root / INCOMING

    async def stage(self, sha256: str, image: bytes) -> Path:
        """The photo as training will read it (`bounded_jpeg`), fsynced into .incoming/. The decode runs in a
        thread, holding its memory in the shared budget."""
        cost = await asyncio.to_thread(lambda: decoded_bytes(open_checked(image, self.limits)))
        async with self._decoding.hold(cost):
            return await asyncio.to_thread(self._stage, sha256, image)

    def _stage(self, sha256: str, image: bytes) -> Path:
        data = bounded_jpeg(image, self.limits)
        self.incoming.mkdir(parents=True, exist_ok=True)
        staged = self.incoming / f"{sha256}.{uuid.uuid4().hex[:8]}.jpg"
        atomic_write(staged, data)
        return staged

    def install(self, staged: Path | None, stored: Path | None, sha256: str, label: str) -> Path:
        """Put the staged photo, or a copy of the one already stored for it, at <label>/<sha256>.jpg (kept as
        it is when already there)."""
        target = self.root / label / f"{sha256}.jpg"
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        if staged is None:
            atomic_write(target, stored.read_bytes())
        else:
            os.replace(staged, target)
            fsync_dir(target.parent)
        return target

    async def remove_unnamed(self, db, tx, paths: set[str]) -> list[Path]:
        """The files of `paths` that no row names once `tx` is committed: removed then (never on a rollback)."""
        marks = ",".join("?" * len(paths))
        still = {r[0] for r in await db.all(f"SELECT path FROM corrections WHERE path IN ({marks})",
                                            tuple(paths))} if paths else set()
        gone = [Path(p) for p in paths - still]
        if gone:
            tx.after_commit(lambda: asyncio.to_thread(lambda: [self.remove(p) for p in gone]))
        return gone

    def remove(self, path: Path) -> None:
        """A stored photo, and its thumbnail with it."""
        path.unlink(missing_ok=True)
        self.thumbnail(path.stem).unlink(missing_ok=True)
        if path.parent.exists():
            fsync_dir(path.parent)

    def thumbnail(self, sha256: str) -> Path:
        """Where the review desk keeps the photo's thumbnail."""
        return self.thumbs / f"{sha256}.jpg"

    def remove_orphans(self, named: set[Path]) -> int:
        """After a crash: remove the photos that no row names (`named`, resolved), what was staged, and what
        an interrupted write left. Returns how many files went."""
        orphans = [f for f in self.root.glob("*/*") if not f.parent.name.startswith(".") and f.is_file()
                   and ((f.suffix == ".jpg" and f.resolve() not in named)
                        or (f.name.startswith(".") and f.suffix == ".tmp"))]  # models.atomic's temp files
        orphans += [f for f in self.incoming.glob("*")] if self.incoming.is_dir() else []
        stems = {p.stem for p in named}  # a thumbnail whose photo went (a base image's is made again when seen)
        orphans += [f for f in self.thumbs.glob("*") if f.stem not in stems] if self.thumbs.is_dir() else []
        for orphan in orphans:
            orphan.unlink(missing_ok=True)
        return len(orphans)

    async def rebound(self, path: Path) -> int | None:
        """Rewrite a stored photo as `bounded_jpeg` makes it, in place and atomically; its new size, or None
        when it could not be read or written (logged)."""
        try:
            data = await asyncio.to_thread(path.read_bytes)
            async with self._decoding.hold(decoded_bytes(open_checked(data, self.limits))):
                await asyncio.to_thread(lambda: atomic_write(path, bounded_jpeg(data, self.limits)))
            return path.stat().st_size
        except (OSError, KimchiError):
            log.warning("could not rewrite the stored photo %s", path, exc_info=True)
            return None


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
    return jpeg_bytes(clean, STORED_QUALITY)


def is_bounded(path: Path) -> bool:
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
