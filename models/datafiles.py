"""The dataset on disk, as both the trainer and the bot read it: folder-per-class images, the import
manifest, and the presized copies training reads."""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path

from PIL import Image

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".jfif", ".mpo"})
JPEG_QUALITY = 95


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


def jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()
