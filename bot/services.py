"""What the handlers share: settings, the store, the engine, per-sender quotas, a photo cache and people's data."""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
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
    from bot.personal import PersonalData
    from bot.serving import Serving
    from bot.supervisor import RetrainSupervisor
    from bot.ledger import Ledger


SHARED = -1  # the bucket of every sender without a user of their own (channels, anonymous admins)
# Telegram's service accounts: many people speak through them, so none of them is one person.
SERVICE_IDS = frozenset({777000, 1087968824, 136817688})  # Telegram, GroupAnonymousBot, Channel_Bot


def sender_id(update: Update) -> int | None:
    """The user who sent this update, or None when it speaks for a channel or an anonymous admin."""
    message, user = update.effective_message, update.effective_user
    if user is None or user.id in SERVICE_IDS:
        return None
    if message is not None and message.sender_chat is not None and update.callback_query is None:
        return None
    return user.id


def sender_name(update: Update) -> str | None:
    """The sender's Telegram name as they show it (first and last name, @username), for the review desk; None
    when the update speaks for no one person (see sender_id)."""
    if sender_id(update) is None:
        return None
    user = update.effective_user
    name = user.full_name or ""
    if user.username:
        name = f"{name} (@{user.username})" if name else f"@{user.username}"
    return name or None


class _Events:
    """One sender's recent events (oldest first, from `head` on) and when a refusal was last told."""

    __slots__ = ("times", "head", "told")

    def __init__(self) -> None:
        self.times: list[float] = []
        self.head = 0
        self.told = float("-inf")

    def last(self) -> float:
        return max(self.times[-1] if self.times else float("-inf"), self.told)


class Quota:
    """A quota: at most `per_window` events per sender in any sliding window (0: no limit); it refuses, never
    delays (bot.sendrate is what delays). Senders without a user
    id share one bucket. A refusal is worth telling the sender once a window, not once per message.

    Each check costs O(1) amortised, whatever the number of senders: senders are kept least recently seen
    first, and those idle for a whole window are forgotten from the front as others arrive. Memory holds
    the senders of one window (about 150 bytes each plus 8 per event), and never more than `max_senders`:
    past that the least recently seen are forgotten, which can only let them through again.
    """

    def __init__(self, per_window: int, window_s: float = 60.0, max_senders: int = 200_000) -> None:
        self.per_window, self.window, self.max_senders = per_window, window_s, max_senders
        self._senders: OrderedDict[int, _Events] = OrderedDict()

    def __len__(self) -> int:
        return len(self._senders)

    def _events(self, user_id: int | None, now: float) -> _Events:
        key = SHARED if user_id is None else user_id
        events = self._senders.get(key)
        if events is None:
            events = self._senders[key] = _Events()
        else:
            self._senders.move_to_end(key)
        # Forget from the front: the least recently seen, idle for a window, or past the cap.
        while len(self._senders) > 1:
            oldest_key, oldest = next(iter(self._senders.items()))
            if now - oldest.last() < self.window and len(self._senders) <= self.max_senders:
                break
            del self._senders[oldest_key]
        return events

    def allow(self, user_id: int | None) -> bool:
        if not self.per_window:
            return True
        now = time.monotonic()
        events = self._events(user_id, now)
        times, head = events.times, events.head
        while head < len(times) and now - times[head] >= self.window:
            head += 1
        if head > 16 and 2 * head > len(times):  # drop the expired prefix now and then: O(1) amortised
            del times[:head]
            head = 0
        events.head = head
        if len(times) - head >= self.per_window:
            return False
        times.append(now)
        return True

    def tell_refusal(self, user_id: int | None) -> bool:
        """True the first time in a window that this sender is refused: reply then, stay silent after."""
        now = time.monotonic()
        events = self._events(user_id, now)
        if now - events.told < self.window:
            return False
        events.told = now
        return True


class PhotoCache:
    """Recent photos' bytes by Telegram file_unique_id, so a correction rarely downloads again."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._cached_at: dict[str, float] = {}
        self._size = 0

    def put(self, key: str | None, data: bytes) -> None:
        if not key or len(data) > self.max_bytes:
            return
        if key in self._items:
            self._items.move_to_end(key)
            return
        self._items[key] = data
        self._cached_at[key] = time.monotonic()
        self._size += len(data)
        while self._size > self.max_bytes:
            self.forget(next(iter(self._items)))

    def forget(self, key: str) -> None:
        data = self._items.pop(key, None)
        self._cached_at.pop(key, None)
        if data is not None:
            self._size -= len(data)

    def get(self, key: str | None) -> bytes | None:
        if not key or key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def expire(self, max_age_s: float) -> int:
        """Forget photos first cached more than `max_age_s` ago (the retention period); how many went."""
        cutoff = time.monotonic() - max_age_s
        old = [key for key, at in self._cached_at.items() if at < cutoff]
        for key in old:
            self.forget(key)
        return len(old)


@dataclass
class Services:
    settings: Settings
    store: Store
    photo_quota: Quota
    serving: "Serving"  # the engine and the registry, which move together
    retrain: "RetrainSupervisor"
    ledger: "Ledger"
    base_labels: dict[str, str] = field(default_factory=dict)  # sha256 -> label of the base set
    actions: Quota = field(default_factory=lambda: Quota(0))
    corrections: Quota = field(default_factory=lambda: Quota(0))
    photos: PhotoCache = field(default_factory=PhotoCache)
    personal: "PersonalData | None" = None  # /mydata, /forget and the retention purge
    copies: Quota = field(default_factory=lambda: Quota(1, window_s=24 * 3600))  # /mydata once a day
    # Downloads in flight at once: each may hold up to the download cap in memory.
    downloads: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(8))

    @property
    def classifier(self) -> Classifier:
        return self.serving.classifier

    @property
    def registry(self) -> Registry:
        return self.serving.registry


def services(context: ContextTypes.DEFAULT_TYPE) -> Services:
    return context.application.bot_data["services"]


def lang_of(update: Update) -> str:
    user = update.effective_user
    return language(user.language_code if user else None)


def admin_only(handler):
    """Run `handler` for admins; everyone else gets a polite refusal that reveals nothing."""

    async def guarded(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if not services(context).settings.is_admin(sender_id(update)):
            await update.effective_message.reply_text(say("admin_only", lang_of(update)))
            return
        await handler(update, context)

    guarded.__doc__ = handler.__doc__
    guarded.__name__ = handler.__name__
    return guarded
