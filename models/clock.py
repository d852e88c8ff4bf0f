"""The one way this project writes a moment in time: UTC, ISO 8601, milliseconds."""
from __future__ import annotations

from datetime import datetime, timezone


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def stamp(moment: datetime | None = None) -> str:
    """`moment` (default now) as an ISO 8601 UTC string that sorts as text, e.g. 2026-11-30T02:22:07.123+00:00."""
    return (moment or utc_now()).isoformat(timespec="milliseconds")
