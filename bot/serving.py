"""What the bot serves and what `current` names move together, one change at a time.

Load, then point: a version is loaded and warmed beside the serving one first, and only then does the
registry's `current` move. A version that cannot be loaded leaves `current` where it was, so the bot can
always restart. `/promote`, `/rollback` and a retrain's conclusion all go through one lock.
"""
from __future__ import annotations

import asyncio
import logging

from models.engine import Classifier
from models.registry import Registry

log = logging.getLogger(__name__)


class Serving:
    def __init__(self, registry: Registry, classifier: Classifier) -> None:
        self.registry, self.classifier = registry, classifier
        self.lock = asyncio.Lock()

    @property
    def version(self) -> str | None:
        return self.classifier.version

    async def promote(self, version: str, reason: str, by: str | None) -> str | None:
        """Serve `version`; returns the version served before. Raises KimchiError, changing nothing, when
        the version is unknown or cannot be loaded."""
        async with self.lock:
            return await self.promote_locked(version, reason, by)

    async def promote_locked(self, version: str, reason: str, by: str | None) -> str | None:
        """promote() for a caller that already holds `lock` (a retrain deciding against what serves now)."""
        name = self.registry.resolve(version)
        before = self.classifier.version
        await self.classifier.aswap(name)  # ArtifactError here: nothing moved
        try:
            self.registry.promote(name, reason=reason, by=by)
        except BaseException:
            if before is not None:
                await self.classifier.aswap(before)
            raise
        log.info("serving %s (was %s): %s", name, before, reason)
        return before

    async def rollback(self, by: str | None) -> tuple[str, str | None]:
        """Serve the version that served before; returns (now, before)."""
        async with self.lock:
            target = self.registry.rollback_target()
            before = self.classifier.version
            await self.classifier.aswap(target)
            try:
                self.registry.rollback(by=by)
            except BaseException:
                if before is not None:
                    await self.classifier.aswap(before)
                raise
            return target, before
