"""Who may teach the model what: the correction policy, users' standing, and agreement between users.

Under the default `trusted` policy a label is used at once when an admin or a trusted user gave it, or when
two different *seasoned* people (not blocked) gave the same label to the same photo; otherwise it waits for an
admin's `/review`. A seasoned user was first seen at least KIMCHI_AGREE_MIN_DAYS ago and has at least
KIMCHI_AGREE_MIN_DECIDED labels an admin accepted: accounts made together cannot vouch for each other.
A label that disputes a base image's label always waits for an admin.

Decisions stick: a blocked user's labels, all of them, are rejected and stay so after `/unblock`; a label an
admin rejected stays rejected when its author gives it again, and waits for an admin when anyone else does;
an audit flag is cleared only by an admin. Trust is given (KIMCHI_TRUSTED_IDS, `/trust`) or earned: enough
labels that an admin accepted or that others independently confirmed (a ✅ on the model's own answer never
counts), nearly all of them accepted; an admin's rejection takes given trust away.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum

import aiosqlite

from bot.settings import Settings
from bot.store import Store
from models.clock import stamp, utc_now

ACCEPTED, PENDING, REJECTED = "accepted", "pending", "rejected"
EARNED_TRUST_SHARE = 0.9
# What decided a label's status (corrections.basis). Only ADMIN and AGREEMENT earn their author trust.
ADMIN, TRUSTED, AGREEMENT, OPEN, BLOCK, REPEATED = "admin", "trusted", "agreement", "open", "block", "repeated"
_SAME_PHOTO = "(c.sha256=? OR (c.file_unique_id IS NOT NULL AND c.file_unique_id=?))"
RELABELLED_AFTER_REJECTION = "relabelled by its author after an admin rejected their label"


class Policy(str, Enum):
    OPEN = "open"  # every label is used: a private bot among friends
    TRUSTED = "trusted"  # admins, trusted users and agreement decide; the rest waits for review
    REVIEW = "review"  # only admins decide


@dataclass(frozen=True)
class Standing:
    """A user's record: given trust, a block, and how their labels fared where it counts for trust (accepted
    by an admin or by independent agreement, never a ✅ on the model's answer; rejected by an admin)."""

    trusted: bool = False
    blocked: bool = False
    accepted: int = 0
    rejected: int = 0
    vetted: int = 0  # labels an admin accepted
    first_seen: str | None = None

    def earned(self, after: int) -> bool:
        decided = self.accepted + self.rejected
        return decided >= after and self.accepted >= EARNED_TRUST_SHARE * decided


@dataclass(frozen=True)
class Verdict:
    """What the policy makes of a new label: its status, what decided it, and an audit flag it keeps."""

    status: str
    basis: str | None = None
    audit_flag: str | None = None


def judge(policy: Policy, standing: Standing, *, is_admin: bool, trusted: bool, agreeing_users: int,
          dispute: bool) -> Verdict:
    """The status of a new label, before what earlier decisions on the photo add (Ledger.verdict)."""
    if is_admin:
        return Verdict(ACCEPTED, ADMIN)
    if standing.blocked:
        return Verdict(REJECTED, BLOCK)
    if dispute or policy is Policy.REVIEW:
        return Verdict(PENDING)
    if policy is Policy.OPEN:
        return Verdict(ACCEPTED, OPEN)
    if trusted:
        return Verdict(ACCEPTED, TRUSTED)
    if agreeing_users >= 2:
        return Verdict(ACCEPTED, AGREEMENT)
    return Verdict(PENDING)


class Ledger:
    """The statuses, votes and users in the bot's SQLite file (the store's connection and write lock)."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store, self.settings = store, settings

    @property
    def db(self):
        return self.store.db

    async def standing(self, user_id: int | None) -> Standing:
        if user_id is None:
            return Standing()
        async with self.db.execute("SELECT trusted, blocked, first_seen FROM users WHERE user_id=?",
                                   (user_id,)) as cur:
            row = await cur.fetchone()
        async with self.db.execute(
                "SELECT SUM(status='accepted' AND basis IN ('admin', 'agreement') AND source NOT IN ('confirm', 'ask')"
                " AND corrected_label != COALESCE(predicted_label, '')),"
                " SUM(status='rejected' AND basis='admin'), SUM(status='accepted' AND basis='admin')"
                " FROM corrections WHERE user_id=?", (user_id,)) as cur:
            accepted, rejected, vetted = await cur.fetchone()
        return Standing(bool(row and row["trusted"]), bool(row and row["blocked"]), accepted or 0, rejected or 0,
                        vetted or 0, row["first_seen"] if row else None)

    def is_trusted(self, user_id: int | None, standing: Standing) -> bool:
        if user_id is None or standing.blocked:
            return False
        return (user_id in self.settings.trusted_ids or standing.trusted
                or standing.earned(self.settings.trust_after))

    def seasoned(self, user_id: int | None, standing: Standing) -> bool:
        """May vouch for a photo's label: known for a while, and vetted by an admin."""
        if user_id is None or standing.blocked or standing.first_seen is None:
            return False
        old_enough = standing.first_seen <= stamp(utc_now() - timedelta(days=self.settings.agree_min_days))
        return old_enough and standing.vetted >= self.settings.agree_min_decided

    async def agreeing_users(self, sha256: str, file_unique_id: str | None, label: str,
                             voter: int | None) -> int:
        """Distinct seasoned, unblocked people who gave `label` to this photo (same bytes or same Telegram
        file), counting `voter`, whose label is being saved, if seasoned too."""
        async with self.db.execute(
                f"SELECT DISTINCT c.user_id FROM corrections c WHERE {_SAME_PHOTO} AND c.corrected_label=?"
                " AND c.user_id IS NOT NULL AND c.status != 'rejected'", (sha256, file_unique_id, label)) as cur:
            users = {r[0] for r in await cur.fetchall()}
        if voter is not None:
            users.add(voter)
        return sum([self.seasoned(u, await self.standing(u)) for u in users])

    async def verdict(self, user_id: int | None, sha256: str, file_unique_id: str | None, label: str,
                      dispute: bool, existing: aiosqlite.Row | None = None) -> Verdict:
        """What the policy makes of a new label from `user_id`, with what earlier decisions on the photo add:
        an admin's rejection of the same label, and an audit flag on the row it replaces."""
        standing = await self.standing(user_id)
        is_admin = self.settings.is_admin(user_id)
        verdict = judge(Policy(self.settings.correction_policy), standing, is_admin=is_admin,
                        trusted=self.is_trusted(user_id, standing), dispute=dispute,
                        agreeing_users=await self.agreeing_users(sha256, file_unique_id, label, user_id))
        if is_admin or verdict.status == REJECTED:
            return verdict
        async with self.db.execute(
                f"SELECT c.user_id FROM corrections c WHERE {_SAME_PHOTO} AND c.corrected_label=?"
                " AND c.status='rejected' AND c.basis IN ('admin', 'repeated', 'block')",
                (sha256, file_unique_id, label)) as cur:
            rejected_before = {r[0] for r in await cur.fetchall()}
        if user_id in rejected_before:
            return Verdict(REJECTED, REPEATED)
        flag = existing["audit_flag"] if existing is not None else None
        if (existing is not None and existing["status"] == REJECTED and existing["basis"] in (ADMIN, BLOCK)
                and not flag):
            flag = RELABELLED_AFTER_REJECTION  # the row forgets the rejected label: an admin looks at the new one
        if rejected_before or flag:
            return Verdict(PENDING, None, flag)  # an admin decides this one
        return verdict

    async def accept_agreement(self, sha256: str, file_unique_id: str | None, label: str) -> int:
        """Pending labels of this photo that now have agreement become accepted, except those an admin must
        see (disputes, audit flags, a label an admin rejected before); returns how many."""
        async with self.store.write_lock:
            cur = await self.db.execute(
                "UPDATE corrections SET status='accepted', basis='agreement', decided_at=? WHERE status='pending'"
                " AND source != 'dispute' AND audit_flag IS NULL AND corrected_label=?"
                " AND (sha256=? OR (file_unique_id IS NOT NULL AND file_unique_id=?))"
                " AND COALESCE(user_id, 0) NOT IN (SELECT user_id FROM users WHERE blocked=1)",
                (stamp(), label, sha256, file_unique_id))
            await self.db.commit()
        return cur.rowcount

    # -- admins -------------------------------------------------------------------------------
    async def decide(self, correction_id: int, status: str, admin_id: int | None, label: str | None = None) -> None:
        """An admin's decision on one label (it clears an audit flag); a rejection takes given trust from its
        author."""
        async with self.store.write_lock:
            await self.db.execute(
                "UPDATE corrections SET status=?, basis='admin', decided_by=?, decided_at=?, audit_flag=NULL,"
                " corrected_label=COALESCE(?, corrected_label) WHERE id=?",
                (status, admin_id, stamp(), label, correction_id))
            if status == REJECTED:
                await self.db.execute("UPDATE users SET trusted=0, updated_at=? WHERE user_id ="
                                      " (SELECT user_id FROM corrections WHERE id=?)", (stamp(), correction_id))
            await self.db.commit()

    async def set_user(self, user_id: int, *, trusted: bool | None = None, blocked: bool | None = None) -> int:
        """Trust, block or unblock a user. Blocking rejects all their labels, accepted ones included, and sends
        labels that were accepted by agreement with them back to review; `/unblock` restores none of it.
        Returns the user's labels rejected."""
        now = stamp()
        async with self.store.write_lock:
            await self.db.execute("INSERT OR IGNORE INTO users (user_id, first_seen, updated_at) VALUES (?, ?, ?)",
                                  (user_id, now, now))
            if trusted is not None:
                await self.db.execute("UPDATE users SET trusted=?, updated_at=? WHERE user_id=?",
                                      (int(trusted), now, user_id))
            rejected = 0
            if blocked is not None:
                await self.db.execute("UPDATE users SET blocked=?, trusted=CASE WHEN ? THEN 0 ELSE trusted END,"
                                      " updated_at=? WHERE user_id=?", (int(blocked), int(blocked), now, user_id))
                if blocked:
                    cur = await self.db.execute("UPDATE corrections SET status='rejected', basis='block',"
                                                " decided_at=? WHERE user_id=? AND status != 'rejected'",
                                                (now, user_id))
                    rejected = cur.rowcount
                    await self.db.execute(
                        "UPDATE corrections SET status='pending', basis=NULL, decided_at=NULL WHERE status='accepted'"
                        " AND basis='agreement' AND sha256 IN (SELECT sha256 FROM corrections WHERE user_id=?)",
                        (user_id,))
            await self.db.commit()
        return rejected

    async def flag(self, flagged: dict[str, str]) -> int:
        """Accepted labels (by sha256) that the audit flagged go back to pending with the flag, unless an admin
        gave or decided them; returns how many moved."""
        admins = sorted(self.settings.admin_ids) or [0]
        marks = ",".join("?" * len(admins))
        moved = 0
        async with self.store.write_lock:
            for sha, flag in flagged.items():
                cur = await self.db.execute(
                    f"UPDATE corrections SET status='pending', basis=NULL, audit_flag=?, decided_at=? WHERE sha256=?"
                    f" AND status='accepted' AND decided_by IS NULL AND COALESCE(user_id, 0) NOT IN ({marks})",
                    (flag, stamp(), sha, *admins))
                moved += cur.rowcount
            await self.db.commit()
        return moved

    async def counts(self) -> dict[str, int]:
        async with self.db.execute("SELECT status, COUNT(*) FROM corrections GROUP BY status") as cur:
            found = {r[0]: r[1] for r in await cur.fetchall()}
        return {s: found.get(s, 0) for s in (ACCEPTED, PENDING, REJECTED)}


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
    async with ledger.db.execute(
            "SELECT c.id, c.user_id, c.corrected_label, c.path, c.source, c.sha256, c.file_unique_id, c.audit_flag,"
            " p.top_json FROM corrections c JOIN predictions p ON p.id = c.prediction_id"
            " WHERE c.status='pending' AND c.id > ? ORDER BY c.id LIMIT 1", (after_id,)) as cur:
        row = await cur.fetchone()
    if row is None:
        return None if after_id == 0 else await next_pending(ledger, 0)
    async with ledger.db.execute(
            "SELECT corrected_label = ?, COUNT(DISTINCT user_id) FROM corrections WHERE status != 'rejected'"
            " AND user_id IS NOT NULL AND (sha256=? OR (file_unique_id IS NOT NULL AND file_unique_id=?))"
            " GROUP BY corrected_label = ?",
            (row["corrected_label"], row["sha256"], row["file_unique_id"], row["corrected_label"])) as cur:
        votes = {bool(same): n for same, n in await cur.fetchall()}
    async with ledger.db.execute("SELECT COUNT(*) FROM corrections WHERE status='pending'") as cur:
        (left,) = await cur.fetchone()
    return ReviewItem(row["id"], row["user_id"], row["corrected_label"], row["path"], row["source"],
                      [tuple(t) for t in json.loads(row["top_json"] or "[]")][:3], votes.get(True, 0),
                      votes.get(False, 0), await ledger.standing(row["user_id"]), row["audit_flag"], left)


async def author_of(ledger: Ledger, correction_id: int) -> int | None:
    async with ledger.db.execute("SELECT user_id FROM corrections WHERE id=?", (correction_id,)) as cur:
        row = await cur.fetchone()
    return row[0] if row else None
