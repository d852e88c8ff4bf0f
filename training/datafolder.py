"""A data folder as training reads it: images per class (or one sentence on what is wrong), a fingerprint of
the file list, and presized copies of large images for a retrain's linked folder."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from PIL import Image

from models.atomic import atomic_write
from models.datafiles import file_sha256, image_files, jpeg_bytes, label_of, presized
from models.errors import ImageRejected, KimchiError
from models.preprocess import decode_rgb
from models.trainset import link_into
from training.importer import IMPORT_LIMITS

log = logging.getLogger(__name__)


def count_classes(data_dir: Path) -> dict[str, int]:
    """Images per class folder, or one sentence on what is wrong with `data_dir`."""
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise KimchiError(f"The data folder {data_dir} does not exist; import images first (kimchi-train import SRC).")
    if not data_dir.is_dir():
        raise KimchiError(f"{data_dir} is not a folder.")
    counts: dict[str, int] = {}
    for path in image_files(data_dir):
        counts[label_of(path)] = counts.get(label_of(path), 0) + 1
    if not counts:
        raise KimchiError(f"{data_dir} holds no images; expected {data_dir}/<class>/<image>.jpg.")
    if len(counts) < 2:
        raise KimchiError(f"{data_dir} holds only one class ({next(iter(counts))}); a classifier needs at least two.")
    return counts


def fingerprint(data_dir: Path) -> str:
    """A short hash of the file list (relative path, size): two runs on the same data share it."""
    h = hashlib.sha256()
    for path in image_files(data_dir):
        h.update(f"{path.relative_to(data_dir)}\0{path.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def presize_large(data_dir: Path, presize: int, cache: Path) -> int:
    """Replace images in `data_dir` whose shorter side exceeds `presize` by presized copies kept in `cache`.

    A retrain's folder links users' full-size phone photos; presizing them once (by content hash, so the
    next retrain reuses the copy) spares every epoch a full-size decode. Returns how many were replaced.
    """
    if not presize:
        return 0
    folder = Path(cache) / f"presized-{presize}"
    replaced = 0
    for path in image_files(data_dir):
        try:
            with Image.open(path) as header:
                if min(header.size) <= presize:
                    continue
            target = folder / f"{file_sha256(path)}.jpg"
            if not target.is_file():
                folder.mkdir(parents=True, exist_ok=True)
                atomic_write(target, jpeg_bytes(presized(decode_rgb(path.read_bytes(), IMPORT_LIMITS), presize)))
        except (ImageRejected, OSError) as err:
            log.warning("%s cannot be read (%s); left out", path, err)
            path.unlink(missing_ok=True)
            continue
        path.unlink()
        link_into(path, target)
        replaced += 1
    return replaced
