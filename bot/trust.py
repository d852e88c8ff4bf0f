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

This module is the policy alone, with no SQL: bot.ledger reads the facts (a user's record, the votes on a
photo, earlier decisions) from the bot's SQLite file, asks it, and writes what it decides.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from bot.settings import Settings
from models.clock import stamp, utc_now
from models.status import Status

EARNED_TRUST_SHARE = 0.9
RELABELLED_AFTER_REJECTION = "relabelled by its author after an admin rejected their label"


class Basis(StrEnum):
    """What decided a label's status (corrections.basis)."""

    ADMIN = "admin"  # an admin gave it, or decided it in /review
    TRUSTED = "trusted"  # a trusted user gave it
    AGREEMENT = "agreement"  # seasoned people independently gave the photo this label
    OPEN = "open"  # the open policy uses every label
    BLOCK = "block"  # its author is blocked
    REPEATED = "repeated"  # its author gave again a label an admin had rejected
    # an admin accepted the photo under another label than its author gave (/review's or the desk's relabel):
    # trained on, but it earns its author nothing, as their own label was wrong
    RELABELLED = "relabelled"


EARNS_TRUST = (Basis.ADMIN, Basis.AGREEMENT)  # the only acceptances that count for their author's trust
STICKY = (Basis.ADMIN, Basis.REPEATED, Basis.BLOCK)  # rejections that a new label of the photo remembers


class Policy(StrEnum):
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

    status: Status
    basis: Basis | None = None
    audit_flag: str | None = None


def judge(policy: Policy, standing: Standing, *, is_admin: bool, trusted: bool, agreeing_users: int,
          dispute: bool) -> Verdict:
    """The status of a new label, before what earlier decisions on the photo add (`remembered`)."""
    if is_admin:
        return Verdict(Status.ACCEPTED, Basis.ADMIN)
    if standing.blocked:
        return Verdict(Status.REJECTED, Basis.BLOCK)
    if dispute or policy is Policy.REVIEW:
        return Verdict(Status.PENDING)
    if policy is Policy.OPEN:
        return Verdict(Status.ACCEPTED, Basis.OPEN)
    if trusted:
        return Verdict(Status.ACCEPTED, Basis.TRUSTED)
    if agreeing_users >= 2:
        return Verdict(Status.ACCEPTED, Basis.AGREEMENT)
    return Verdict(Status.PENDING)


def is_trusted(settings: Settings, user_id: int | None, standing: Standing) -> bool:
    """Given trust (KIMCHI_TRUSTED_IDS, /trust) or earned, never while blocked."""
    if user_id is None or standing.blocked:
        return False
    return user_id in settings.trusted_ids or standing.trusted or standing.earned(settings.trust_after)


def seasoned(settings: Settings, user_id: int | None, standing: Standing) -> bool:
    """May vouch for a photo's label: known for a while, and vetted by an admin."""
    if user_id is None or standing.blocked or standing.first_seen is None:
        return False
    old_enough = standing.first_seen <= stamp(utc_now() - timedelta(days=settings.agree_min_days))
    return old_enough and standing.vetted >= settings.agree_min_decided


def remembered(verdict: Verdict, user_id: int | None, rejected_before: Collection[int | None],
               existing: Mapping[str, Any] | None) -> Verdict:
    """A non-admin's verdict (not a rejection) with what earlier decisions on the photo add: the same label
    that an admin rejected (`rejected_before`: its authors) stays rejected for its author and waits for an
    admin for anyone else; the row it replaces keeps its audit flag, and an admin looks at a new label on a
    row an admin (or a block) rejected."""
    if user_id in rejected_before:
        return Verdict(Status.REJECTED, Basis.REPEATED)
    flag = existing["audit_flag"] if existing is not None else None
    if (existing is not None and existing["status"] == Status.REJECTED
            and existing["basis"] in (Basis.ADMIN, Basis.BLOCK) and not flag):
        flag = RELABELLED_AFTER_REJECTION  # the row forgets the rejected label: an admin looks at the new one
    if rejected_before or flag:
        return Verdict(Status.PENDING, None, flag)  # an admin decides this one
    return verdict
