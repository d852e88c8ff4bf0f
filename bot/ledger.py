"""The review ledger: labels' statuses, the votes on a photo, users' standing, and admins' decisions, in the
bot's SQLite file.

It reads the facts, asks bot.trust (the policy) what a new label's status is, and writes every decision
through the store's one door (`db.write`): a decision of several statements is committed whole or not at
all. `/review` reads its items from here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import aiosqlite

from bot.settings import Settings
from bot.store import Store
from bot.trust import EARNS_TRUST, STICKY, Basis, Policy, Standing, Verdict, is_trusted, judge, remembered, seasoned
from models.clock import stamp
from models.status import Source, Status

_SAME_PHOTO = "(sha256=? OR (file_unique_id IS NOT NULL AND file_unique_id=?))"  # of one table's rows


class Ledger:
    """The statuses, votes and users of the store's database (`store.db`)."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.db, self.settings = store.db, settings

    async def standing(self, user_id: int | None) -> Standing:
        if user_id is None:
            return Standing()
        return (await self.standings({user_id}))[user_id]

    async def standings(self, user_ids: set[int]) -> dict[int, Standing]:
        """Each user's standing in two queries however many users (agreement asks for every voter of a photo)."""
        ids = sorted(user_ids)
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        users = {r["user_id"]: r for r in await self.db.all(
            f"SELECT user_id, trusted, blocked, first_seen FROM users WHERE user_id IN ({marks})", ids)}
        counts = {r[0]: r[1:] for r in await self.db.all(
            "SELECT user_id, SUM(status=? AND basis IN (?, ?) AND source NOT IN (?, ?)"
            " AND corrected_label != COALESCE(predicted_label, '')),"
            f" SUM(status=? AND basis=?), SUM(status=? AND basis=?) FROM corrections WHERE user_id IN ({marks})"
            " GROUP BY user_id",
            (Status.ACCEPTED, *EARNS_TRUST, Source.CONFIRM, Source.ASK, Status.REJECTED, Basis.ADMIN,
             Status.ACCEPTED, Basis.ADMIN, *ids))}
        out = {}
        for uid in ids:
            row, (accepted, rejected, vetted) = users.get(uid), counts.get(uid, (0, 0, 0))
            out[uid] = Standing(bool(row and row["trusted"]), bool(row and row["blocked"]), accepted or 0,
                                rejected or 0, vetted or 0, row["first_seen"] if row else None)
        return out

    async def agreeing_users(self, sha256: str, file_unique_id: str | None, label: str,
                             voter: int | None) -> int:
        """Distinct seasoned, unblocked people who gave `label` to this photo (same bytes or same Telegram
        file), counting `voter`, whose label is being saved, if seasoned too."""
        users = {r[0] for r in await self.db.all(
            f"SELECT DISTINCT user_id FROM corrections WHERE {_SAME_PHOTO} AND corrected_label=?"
            " AND user_id IS NOT NULL AND status != ?", (sha256, file_unique_id, label, Status.REJECTED))}
        if voter is not None:
            users.add(voter)
        return sum(seasoned(self.settings, uid, standing) for uid, standing in (await self.standings(users)).items())

    async def verdict(self, user_id: int | None, sha256: str, file_unique_id: str | None, label: str,
                      dispute: bool, existing: aiosqlite.Row | None = None) -> Verdict:
        """What the policy makes of a new label from `user_id`, with what earlier decisions on the photo add:
        an admin's rejection of the same label, and an audit flag on the row it replaces."""
        standing = await self.standing(user_id)
        is_admin = self.settings.is_admin(user_id)
        verdict = judge(Policy(self.settings.correction_policy), standing, is_admin=is_admin,
                        trusted=is_trusted(self.settings, user_id, standing), dispute=dispute,
                        agreeing_users=await self.agreeing_users(sha256, file_unique_id, label, user_id))
        if is_admin or verdict.status == Status.REJECTED:
            return verdict
        rejected_before = {r[0] for r in await self.db.all(
            f"SELECT user_id FROM corrections WHERE {_SAME_PHOTO} AND corrected_label=?"
            " AND status=? AND basis IN (?, ?, ?)", (sha256, file_unique_id, label, Status.REJECTED, *STICKY))}
        return remembered(verdict, user_id, rejected_before, existing)

    async def accept_agreement(self, sha256: str, file_unique_id: str | None, label: str) -> int:
        """Pending labels of this photo that now have agreement become accepted, except those an admin must
        see (disputes, audit flags, a label an admin rejected before); returns how many."""
        async with self.db.write() as tx:
            done = await tx.execute(
                "UPDATE corrections SET status=?, basis=?, decided_at=? WHERE status=?"
                " AND source != ? AND audit_flag IS NULL AND corrected_label=?"
                f" AND {_SAME_PHOTO} AND COALESCE(user_id, 0) NOT IN (SELECT user_id FROM users WHERE blocked=1)",
                (Status.ACCEPTED, Basis.AGREEMENT, stamp(), Status.PENDING, Source.DISPUTE, label, sha256,
                 file_unique_id))
        return done.rowcount

    # -- admins -------------------------------------------------------------------------------
    async def decide(self, correction_id: int, status: Status, admin_id: int | None, label: str | None = None) -> bool:
        """An admin's decision on one pending label (`decide_many` of one); False when it was decided meanwhile
        (in the review desk, or by another admin)."""
        return await self.decide_many([correction_id], status, admin_id, label) == 1

    async def decide_many(self, correction_ids: list[int], status: Status, admin_id: int | None,
                          label: str | None = None, seen: dict[int, str] | None = None) -> int:
        """An admin's one decision on the labels of `correction_ids` that are still pending, in one transaction
        (the desk's bulk action; `/review`'s one): it clears an audit flag, a rejection takes given trust from
        the label's author, and a relabel to another label earns its author nothing (Basis.RELABELLED). Returns
        how many it decided; the others were decided meanwhile. `seen` (id -> label), when given: the labels the
        admin saw, so that a label its author changed since is not decided unseen (it is left pending)."""
        ids = sorted(set(correction_ids))
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        at = stamp()
        update = ("UPDATE corrections SET status=?, basis=CASE WHEN ? IS NULL OR ? = corrected_label THEN ? ELSE ? END,"
                  " decided_by=?, decided_at=?, audit_flag=NULL, corrected_label=COALESCE(?, corrected_label)"
                  " WHERE status=?")
        values = (status, label, label, Basis.ADMIN, Basis.RELABELLED, admin_id, at, label, Status.PENDING)
        async with self.db.write() as tx:
            if seen is None:
                done = (await tx.execute(f"{update} AND id IN ({marks})", (*values, *ids))).rowcount
            else:
                done = await tx.executemany(f"{update} AND id=? AND corrected_label=?",
                                            [(*values, i, seen.get(i, "")) for i in ids])
            if status == Status.REJECTED and done:
                await tx.execute(f"UPDATE users SET trusted=0, updated_at=? WHERE user_id IN (SELECT user_id FROM"
                                 f" corrections WHERE decided_at=? AND id IN ({marks}))", (at, at, *ids))
        return done

    async def authors_of(self, correction_ids: list[int]) -> set[int]:
        """The users who gave these labels."""
        ids = sorted(set(correction_ids))
        marks = ",".join("?" * len(ids))
        return {r[0] for r in await self.db.all(
            f"SELECT DISTINCT user_id FROM corrections WHERE id IN ({marks}) AND user_id IS NOT NULL", ids)}

    async def set_user(self, user_id: int, *, trusted: bool | None = None, blocked: bool | None = None) -> int:
        """Trust, block or unblock a user. Blocking rejects all their labels, accepted ones included, and sends
        labels that were accepted by agreement with them back to review; `/unblock` restores none of it.
        Returns the user's labels rejected."""
        now = stamp()
        rejected = 0
        async with self.db.write() as tx:
            await tx.execute("INSERT OR IGNORE INTO users (user_id, first_seen, updated_at) VALUES (?, ?, ?)",
                             (user_id, now, now))
            if trusted is not None:
                await tx.execute("UPDATE users SET trusted=?, updated_at=? WHERE user_id=?",
                                 (int(trusted), now, user_id))
            if blocked is not None:
                await tx.execute("UPDATE users SET blocked=?, trusted=CASE WHEN ? THEN 0 ELSE trusted END,"
                                 " updated_at=? WHERE user_id=?", (int(blocked), int(blocked), now, user_id))
            if blocked:
                rejected = (await tx.execute(
                    "UPDATE corrections SET status=?, basis=?, decided_at=? WHERE user_id=? AND status != ?",
                    (Status.REJECTED, Basis.BLOCK, now, user_id, Status.REJECTED))).rowcount
                await tx.execute(
                    "UPDATE corrections SET status=?, basis=NULL, decided_at=NULL WHERE status=? AND basis=?"
                    " AND sha256 IN (SELECT sha256 FROM corrections WHERE user_id=?)",
                    (Status.PENDING, Status.ACCEPTED, Basis.AGREEMENT, user_id))
        return rejected

    async def flag(self, flagged: dict[str, str]) -> int:
        """Accepted labels (by sha256) that the audit flagged go back to pending with the flag, unless an admin
        gave or decided them; returns how many moved."""
        admins = sorted(self.settings.admin_ids) or [0]
        marks = ",".join("?" * len(admins))
        at = stamp()
        async with self.db.write() as tx:
            return await tx.executemany(
                f"UPDATE corrections SET status=?, basis=NULL, audit_flag=?, decided_at=? WHERE sha256=?"
                f" AND status=? AND decided_by IS NULL AND COALESCE(user_id, 0) NOT IN ({marks})",
                [(Status.PENDING, flag, at, sha, Status.ACCEPTED, *admins) for sha, flag in flagged.items()])

    async def counts(self) -> dict[str, int]:
        """Labels by status, each status named (0 when none)."""
        found = {r[0]: r[1] for r in await self.db.all("SELECT status, COUNT(*) FROM corrections GROUP BY status")}
        return {s.value: found.get(s, 0) for s in Status}


@dataclass(frozen=True)
class ReviewItem:
    """One pending label as an admin reviews it."""

    id: int
    user_id: int | None
    label: str
    path: str
    source: str
    top: list[tuple[str, float]]
    votes_for: int
    votes_against: int
    standing: Standing
    audit_flag: str | None
    left: int


async def next_pending(ledger: Ledger, after_id: int = 0) -> ReviewItem | None:
    """The oldest pending label (after `after_id`, so a skipped one does not come straight back)."""
    db = ledger.db
    row = await db.one(
        "SELECT c.id, c.user_id, c.corrected_label, c.path, c.source, c.sha256, c.file_unique_id, c.audit_flag,"
        " p.top_json FROM corrections c JOIN predictions p ON p.id = c.prediction_id"
        " WHERE c.status=? AND c.id > ? ORDER BY c.id LIMIT 1", (Status.PENDING, after_id))
    if row is None:
        return None if after_id == 0 else await next_pending(ledger, 0)
    votes = {bool(same): n for same, n in await db.all(
        f"SELECT corrected_label = ?, COUNT(DISTINCT user_id) FROM corrections c WHERE status != ?"
        f" AND user_id IS NOT NULL AND {_SAME_PHOTO} GROUP BY corrected_label = ?",
        (row["corrected_label"], Status.REJECTED, row["sha256"], row["file_unique_id"], row["corrected_label"]))}
    (left,) = await db.one("SELECT COUNT(*) FROM corrections WHERE status=?", (Status.PENDING,))
    return ReviewItem(row["id"], row["user_id"], row["corrected_label"], row["path"], row["source"],
                      [tuple(t) for t in json.loads(row["top_json"] or "[]")][:3], votes.get(True, 0),
                      votes.get(False, 0), await ledger.standing(row["user_id"]), row["audit_flag"], left)


async def author_of(ledger: Ledger, correction_id: int) -> int | None:
    row = await ledger.db.one("SELECT user_id FROM corrections WHERE id=?", (correction_id,))
    return row[0] if row else None
