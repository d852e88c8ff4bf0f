"""What the handlers share: settings, the store, the engine, the per-user rate limit and a photo cache."""
from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from telegram import Update
from telegram.ext import ContextTypes

from bot.settings import Settings
from bot.store import Store
from bot.texts import language, say
from models.engine import Classifier
from models.registry import Registry

if TYPE_CHECKING:
    from bot.retrain import RetrainManager


class RateLimiter:
    """At most `per_minute` events per user in any 60-second window (0: no limit)."""

    def __init__(self, per_minute: int, window_s: float = 60.0) -> None:
        self.per_minute, self.window = per_minute, window_s
        self._events: dict[int, deque[float]] = {}

    def allow(self, user_id: int | None) -> bool:
        if not self.per_minute or user_id is None:
            return True
        now = time.monotonic()
        events = self._events.setdefault(user_id, deque())
        while events and now - events[0] >= self.window:
            events.popleft()
        if len(events) >= self.per_minute:
            return False
        events.append(now)
        if len(self._events) > 10_000:  # forget idle users
            for uid in [u for u, e in self._events.items() if not e or now - e[-1] >= self.window]:
                del self._events[uid]
        return True


class PhotoCache:
    """Recent photos' bytes by Telegram file_unique_id, so a correction rarely downloads again."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0

    def put(self, key: str | None, data: bytes) -> None:
        if not key or len(data) > self.max_bytes:
            return
        if key in self._items:
            self._items.move_to_end(key)
            return
        self._items[key] = data
        self._size += len(data)
        while self._size > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self._size -= len(old)

    def get(self, key: str | None) -> bytes | None:
        if not key or key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]


@dataclass
class Services:
    settings: Settings
    store: Store
    classifier: Classifier
    registry: Registry
    limiter: RateLimiter
    photos: PhotoCache = field(default_factory=PhotoCache)
    retrain: "RetrainManager | None" = None


def services(context: ContextTypes.DEFAULT_TYPE) -> Services:
    return context.application.bot_data["services"]


def lang_of(update: Update) -> str:
    user = update.effective_user
    return language(user.language_code if user else None)


def admin_only(handler):
    """Run `handler` for admins; everyone else gets a polite refusal that reveals nothing."""

    async def guarded(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        user = update.effective_user
        if not services(context).settings.is_admin(user.id if user else None):
            await update.effective_message.reply_text(say("admin_only", lang_of(update)))
            return
        await handler(update, context)

    guarded.__doc__ = handler.__doc__
    guarded.__name__ = handler.__name__
    return guarded
