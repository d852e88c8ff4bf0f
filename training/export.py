"""`kimchi-train export-dataset`: what the bot has learnt, in the shape other tools read.

    OUT/<split>/<label>/<sha256>.jpg      torchvision's ImageFolder, one tree per split
    OUT/metadata.csv                      file_name,label,split,source,sha256,status (Hugging Face imagefolder)

`not_kimchi` is a label like the classes: negatives of the base set and users' accepted "not kimchi" labels are
exported into OUT/<split>/not_kimchi/, which `kimchi-train import` and `train` read back as the class.

The split is each image's side of the bot's frozen holdout (`train` or `holdout`): the side recorded by a
retrain, or, for an image no retrain has seen yet, the same keyed rule the bot will apply.

Every image is a copy (a reflink, sharing blocks copy-on-write, where the filesystem can), never a hard link:
the export is handed to other tools and people, and editing it in place must not edit the bot's photos.
"""
from __future__ import annotations

import csv
import fcntl
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from models.corpus import STATUSES, read_labels, read_splits
from models.errors import KimchiError
from models.home import Home, holdout_key
from models.trainset import base_items, holdout_side

log = logging.getLogger(__name__)

COLUMNS = ("file_name", "label", "split", "source", "sha256", "status")
FICLONE = getattr(fcntl, "FICLONE", 0x40049409)  # Linux's ioctl (linux/fs.h); in fcntl from Python 3.12


def copy_into(target: Path, source: Path) -> None:
    """`source`'s bytes in a new file `target`: a reflink where the filesystem shares blocks copy-on-write
    (btrfs, XFS), else a plain copy. Either way a separate file: writing to one never changes the other."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "rb") as src, open(target, "xb") as dst:
        try:
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
            return
        except OSError:  # another filesystem, or one without reflinks (ext4, tmpfs)
            pass
        shutil.copyfileobj(src, dst, 1 << 20)


@dataclass(frozen=True)
class Row:
    path: Path
    label: str
    source: str
    sha256: str
    status: str


def dataset_rows(home: Home, statuses: tuple[str, ...], admins: frozenset[int] = frozenset()) -> list[Row]:
    """Base images and users' labels with the wanted statuses, one row per photo.

    A base image keeps its label unless an admin decided otherwise; users' labels of photos that are not
    in the base set follow, newest per photo.
    """
    unknown = sorted(set(statuses) - set(STATUSES))
    if unknown:
        raise KimchiError(f"Unknown status {', '.join(unknown)}; use accepted, pending or rejected.")
    base = base_items(home.base)
    rows = {sha: Row(item.path, item.label, "base", sha, "accepted") for sha, item in base.items()}
    if "accepted" not in statuses:
        rows = {}
    for label in read_labels(home.database):
        if label.status not in statuses:
            continue
        base_item = base.get(label.sha256)
        if base_item is not None:
            if base_item.label == label.label:
                continue  # agrees with the base set
            if label.status == "accepted" and label.decided_by is None and label.user_id not in admins:
                continue  # a dispute no admin decided: the base label stands
        rows[label.sha256] = Row(label.path, label.label, label.source, label.sha256, label.status)
    return sorted(rows.values(), key=lambda r: (r.label, r.sha256))


def export_dataset(home: Home, out: Path, statuses: tuple[str, ...] = ("accepted",), holdout_pct: float = 10.0,
                   as_zip: bool = False) -> tuple[Path, dict[str, int]]:
    """Write the tree and metadata.csv into `out` (which must be empty or absent); returns where and counts."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise KimchiError(f"{out} is not empty; choose a new folder.")
    rows = dataset_rows(home, statuses)
    if not rows:
        raise KimchiError(f"There is nothing to export from {home.root} with status {', '.join(statuses)}.")
    splits, key = read_splits(home.database), holdout_key(home)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with open(out / "metadata.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for row in rows:
            split = splits.get(row.sha256) or holdout_side(row.sha256, holdout_pct, key)
            name = f"{split}/{row.label}/{row.sha256}{row.path.suffix.lower() or '.jpg'}"
            if not row.path.is_file():
                log.warning("%s is missing; left out of the export", row.path)
                continue
            copy_into(out / name, row.path)
            writer.writerow((name, row.label, split, row.source, row.sha256, row.status))
            counts[split] = counts.get(split, 0) + 1
    if as_zip:
        archive = shutil.make_archive(str(out), "zip", root_dir=out)
        return Path(archive), counts
    return out, counts
