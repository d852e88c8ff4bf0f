"""Assembling a retrain's data: base images plus users' corrections, one per photo, each on its side of
the frozen holdout. Pure functions over paths and rows: the bot calls them, tests call them directly.

The rules:
* one item per sha256; a correction of a photo that is not in the base set adds it;
* a correction never silently changes a base image's label: a different label is a *dispute*, counted
  and left out until an admin decides it (the base label stands meanwhile; an admin's label replaces it);
* each image's side is decided once, by a keyed hash (the key lives in KIMCHI_HOME, so outsiders cannot
  predict it), and earlier decisions stand: the holdout stays frozen;
* holdout labels come only from the base set or from corrections an admin decided; other corrections that
  fall on the holdout side are held back (neither trained on nor scored) until one does;
* a class with fewer training images than the run's minimum is left out of the run, on both sides: not
  trained on, and its holdout images not scored (the candidate cannot name a class it never saw, so both
  models are compared on the photos of the classes it was trained on). It does not stop the other classes;
  its images keep their sides for a later run.
"""
from __future__ import annotations

import collections
import hashlib
import hmac
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from models.datafiles import file_sha256, image_files, label_of, read_manifest
from models.labels import folder_label

log = logging.getLogger(__name__)

TRAIN, HOLDOUT = "train", "holdout"
MAX_GROUP = 8  # the most copies of one photo a near-duplicate group may hold


def holdout_side(sha256: str, pct: float, key: bytes) -> str:
    """The frozen-holdout rule for an image seen for the first time: a keyed hash of its sha256."""
    digest = hmac.new(key, sha256.encode("ascii"), hashlib.sha256).digest()
    return HOLDOUT if int.from_bytes(digest[:4], "big") % 10_000 < pct * 100 else TRAIN


@dataclass(frozen=True)
class CorrectionRow:
    """A user's label for one photo, as the bot's store holds it."""

    sha256: str
    label: str
    path: Path
    admin_decided: bool = False


@dataclass(frozen=True)
class Item:
    sha256: str
    label: str
    path: Path
    source: str  # base | correction
    admin_decided: bool = True  # base labels are the dataset's own


@dataclass
class Collected:
    items: dict[str, Item]
    disputes: int = 0  # corrections that disagree with a base image's label, not (yet) decided by an admin
    relabelled: int = 0  # base images whose label an admin changed
    corrections: int = 0
    missing: int = 0  # correction rows whose file is gone


def base_items(base: Path) -> dict[str, Item]:
    """The base set by sha256: from its manifest, or by hashing the folders when there is none."""
    items: dict[str, Item] = {}
    rows = read_manifest(base)
    if rows:
        for row in rows:
            path = base / row["path"]
            if path.is_file():
                items[row["sha256"]] = Item(row["sha256"], folder_label(row["class"]), path, "base")
    elif base.is_dir():
        for path in image_files(base):
            sha = file_sha256(path)
            items[sha] = Item(sha, label_of(path), path, "base")
    return items


def collect_items(base: Path, corrections: Iterable[CorrectionRow]) -> Collected:
    """Base images and corrections, one per sha256. A label is a folder's name in the retrain's folder:
    not_kimchi (under any of its folder names) is a class like the others, and users' accepted not_kimchi
    labels are the retrain's negatives."""
    items = base_items(base)
    out = Collected(items)
    for row in corrections:
        row = CorrectionRow(row.sha256, folder_label(row.label), row.path, row.admin_decided)
        if not row.path.is_file():
            log.warning("correction image %s is missing; left out", row.path)
            out.missing += 1
            continue
        previous = items.get(row.sha256)
        if previous is not None and previous.source == "base":
            if previous.label == row.label:
                continue  # agrees with the base set: nothing to change
            if not row.admin_decided:
                out.disputes += 1
                continue  # the base label stands; a dispute waits for an admin
            out.relabelled += 1
        items[row.sha256] = Item(row.sha256, row.label, row.path, "correction", row.admin_decided)
        out.corrections += 1
    return out


@dataclass
class TrainingSet:
    run_dir: Path
    train_dir: Path
    holdout_file: Path
    train_counts: dict[str, int]
    holdout_counts: dict[str, int]
    corrections: int
    disputes: int
    held_back: int  # holdout-side corrections no admin has decided
    new_splits: list[tuple[str, str, str]] = field(default_factory=list)
    moved: int = 0  # images put on their near-duplicate group's side rather than their own
    left_out: dict[str, int] = field(default_factory=dict)  # class -> its training images, under the minimum
    min_per_class: int = 0  # the minimum this set was built with


def group_sides(groups: Iterable[Iterable[str]], splits: dict[str, str], holdout_pct: float,
                key: bytes) -> dict[str, str]:
    """One side per group of near-duplicates (the same dish, recompressed or resized), so no photo sits on
    both sides of the holdout. The side its members already have when they agree; the holdout when they
    disagree (a model that saw a held-out photo can only look better, never the candidate); for a new
    group, the keyed rule on its smallest sha256."""
    sides: dict[str, str] = {}
    for group in groups:
        members = sorted(set(group))
        if len(members) < 2:
            continue
        if len(members) > MAX_GROUP:
            # The same dish sent again comes in twos and threes; dozens of "duplicates" means the embedding
            # cannot tell these photos apart (a young model, a uniform class), not that they are one photo.
            log.warning("a near-duplicate group of %d images is too large to be one photo; left ungrouped",
                        len(members))
            continue
        recorded = {splits[m] for m in members if m in splits}
        side = (recorded.pop() if len(recorded) == 1 else HOLDOUT) if recorded else \
            holdout_side(members[0], holdout_pct, key)
        sides.update({m: side for m in members})
    return sides


def build_training_set(run_dir: Path, collected: Collected, splits: dict[str, str], holdout_pct: float,
                       key: bytes, groups: Iterable[Iterable[str]] = (), min_per_class: int = 0) -> TrainingSet:
    """Link training images into run_dir/train/<label>/, list the holdout in run_dir/holdout.jsonl.

    `new_splits` holds every side decided or changed by this run (a near-duplicate moved to its group's
    side counts in `moved`), for the caller to record. A class with fewer than `min_per_class` training
    images is in `left_out` (with its count) and on neither list; its images' sides are recorded all the
    same."""
    train_dir, holdout_file = run_dir / "train", run_dir / "holdout.jsonl"
    train_dir.mkdir(parents=True, exist_ok=True)
    new_splits: list[tuple[str, str, str]] = []
    train_items: list[tuple[str, Item]] = []
    holdout_rows, held_back, moved, labels = [], 0, 0, set()
    grouped = group_sides(groups, splits, holdout_pct, key)
    for sha, item in sorted(collected.items.items()):
        side = splits.get(sha)
        rule = grouped.get(sha) or side or holdout_side(sha, holdout_pct, key)
        if rule != side:
            moved += side is not None or rule != holdout_side(sha, holdout_pct, key)
            side = rule
            new_splits.append((sha, side, item.source))
        labels.add(item.label)
        if side == HOLDOUT:
            if not item.admin_decided:
                held_back += 1
                continue
            holdout_rows.append({"path": str(item.path), "label": item.label, "source": item.source, "sha256": sha})
            continue
        train_items.append((sha, item))
    per_class = collections.Counter(item.label for _, item in train_items)
    left_out = {label: per_class[label] for label in sorted(labels) if per_class[label] < min_per_class}
    if left_out:
        log.info("classes left out of this run, with fewer than %d training images: %s", min_per_class, left_out)
    train_counts: collections.Counter[str] = collections.Counter()
    for sha, item in train_items:
        if item.label not in left_out:
            link_into(train_dir / item.label / f"{sha}{item.path.suffix.lower() or '.jpg'}", item.path)
            train_counts[item.label] += 1
    holdout_rows = [r for r in holdout_rows if r["label"] not in left_out]
    holdout_counts = collections.Counter(r["label"] for r in holdout_rows)
    holdout_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in holdout_rows), encoding="utf-8")
    return TrainingSet(run_dir, train_dir, holdout_file, dict(train_counts), dict(holdout_counts),
                       collected.corrections, collected.disputes, held_back, new_splits, moved, left_out,
                       min_per_class)


def left_out_detail(left_out: dict[str, int]) -> str:
    """'갓김치 0, 백김치 2': the classes left out of a run, each with its training images."""
    return ", ".join(f"{label} {n}" for label, n in sorted(left_out.items()))


def link_into(link: Path, source: Path) -> None:
    """A hard link (a symlink across filesystems): the run's folder costs no copies."""
    link.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, link)
    except OSError:
        link.symlink_to(Path(source).resolve())
