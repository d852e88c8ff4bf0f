"""The dataset on disk, as both the trainer and the bot read it: folder-per-class images, the import
manifest, and the presized copies training reads."""
from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path

from PIL import Image

from models.labels import folder_label

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".jfif", ".mpo"})
JPEG_QUALITY = 95


def image_files(folder: Path | str) -> list[Path]:
    """Image files below `folder` by suffix, sorted, hidden ones left out: a dataset's items.

    Sorted, so that RandomSplitter's seed means the same split on every filesystem.
    """
    folder = Path(folder)
    return sorted((p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts) and p.is_file()),
                  key=str)


def label_of(path: Path | str) -> str:
    """The parent folder's label: its name in NFC (a macOS (NFD) folder must not become a 12th class), and
    `not_kimchi` for a negatives folder (김치아님, 기타, other …; models.labels.NEGATIVE_FOLDERS)."""
    return folder_label(Path(path).parent.name)


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes: an image's identity for deduplication."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_manifest(folder: Path) -> list[dict]:
    """Rows of `folder`/manifest.jsonl (path relative to `folder`, class, sha256, source, crop, size)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                log.warning("ignoring a damaged manifest line in %s", path)
    return rows


def presized(img: Image.Image, presize: int) -> Image.Image:
    """The shorter side brought down to `presize` (never up), bilinear like fastai's Resize."""
    if not presize or min(img.size) <= presize:
        return img
    ratio = presize / min(img.size)
    return img.resize((max(1, round(img.width * ratio)), max(1, round(img.height * ratio))), Image.Resampling.BILINEAR)


def jpeg_bytes(img: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    """`img` as JPEG bytes; only what `img` carries is saved (a fresh image carries no metadata)."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()
