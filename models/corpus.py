"""Everything the bot has learnt to label, in one read: the base set, users' corrections with their status,
and each image's side of the frozen holdout. The bot's retrain and `kimchi-train export-dataset` both
read it from here, so they agree on what the dataset is.

It reads KIMCHI_HOME/kimchi.sqlite3 read-only (the schema is models.schema) and the base folder.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from models.home import Home
from models.labels import folder_label
from models.status import Source, Status
from models.trainset import CorrectionRow

STATUSES = tuple(Status)


@dataclass(frozen=True)
class Labelled:
    """One user's label for one photo, as the store holds it."""

    id: int
    sha256: str
    label: str
    path: Path
    user_id: int | None
    status: str  # a models.status.Status word
    source: str  # a models.status.Source word
    decided_by: int | None
    audit_flag: str | None
    updated_at: str


def read_labels(database: Path) -> list[Labelled]:
    """Every correction row whose file exists, oldest change first; [] before the bot has run."""
    if not Path(database).is_file():
        return []
    con = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        con.row_factory = sqlite3.Row
        names = {r[1] for r in con.execute("PRAGMA table_info(corrections)")}
        if "status" not in names:  # a database from before trusted corrections: everything was used
            rows = con.execute("SELECT id, sha256, corrected_label, path, user_id, ? AS status, ? AS source,"
                               " NULL AS decided_by, NULL AS audit_flag, updated_at FROM corrections"
                               " ORDER BY updated_at, id", (Status.ACCEPTED, Source.CORRECTION)).fetchall()
        else:
            rows = con.execute("SELECT id, sha256, corrected_label, path, user_id, status, source, decided_by,"
                               " audit_flag, updated_at FROM corrections WHERE missing_file=0"
                               " ORDER BY updated_at, id").fetchall()
    finally:
        con.close()
    # folder_label: NFC, and not_kimchi whatever name of it a row holds, so a retrain and an export see one class
    return [Labelled(r["id"], r["sha256"], folder_label(r["corrected_label"]), Path(r["path"]), r["user_id"],
                     r["status"], r["source"], r["decided_by"], r["audit_flag"], r["updated_at"]) for r in rows]


def read_splits(database: Path) -> dict[str, str]:
    if not Path(database).is_file():
        return {}
    con = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "splits" not in tables:
            return {}
        return {sha: side for sha, side in con.execute("SELECT sha256, split FROM splits")}
    finally:
        con.close()


def accepted_rows(labels: Iterable[Labelled], is_admin: Callable[[int | None], bool]) -> list[CorrectionRow]:
    """The newest accepted label of each photo: what a retrain trains on and scores with."""
    newest: dict[str, Labelled] = {}
    for row in labels:
        if row.status == Status.ACCEPTED:
            newest[row.sha256] = row  # rows come oldest first: the last one wins
    return [CorrectionRow(r.sha256, r.label, r.path, admin_decided=r.decided_by is not None or is_admin(r.user_id))
            for r in newest.values()]


def corpus_rows(home: Home, is_admin: Callable[[int | None], bool]) -> list[CorrectionRow]:
    """accepted_rows from the home's database."""
    return accepted_rows(read_labels(home.database), is_admin)
