"""One user's updates are handled one after another, in the order they reached the bot (polling: the order
Telegram numbered them); different users' updates run side by side.

Without this, a user's two quick corrections could commit in the order their downloads finished, and an older
label overwrite a newer one. PTB hands every update to `do_process_update` as soon as it is fetched, in
order; each waits here on its sender's lock (FIFO), and only then for one of the `max_running` places, so a
user who floods the bot queues behind themself and never holds places that others need.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable

from telegram import Update
from telegram.ext import BaseUpdateProcessor

from bot.services import sender_id

# PTB's own cap counts updates waiting for their sender too: it is set high, and the real one is ours.
WAITING_LIMIT = 1_000_000
# Updates one sender may have waiting; past that they are dropped unread (budgets refuse far fewer a minute).
BACKLOG_LIMIT = 500
log = logging.getLogger(__name__)


def order_key(update: object) -> tuple[str, int] | None:
    """Whose turn an update waits for: its user (the same across chats); else (a channel, an anonymous admin,
    Telegram's service accounts, which speak for many) its chat; else nobody's."""
    if isinstance(update, Update):
        who = sender_id(update)
        if who is not None:
            return ("user", who)
        if update.effective_chat is not None:
            return ("chat", update.effective_chat.id)
    return None


class PerUserOrder(BaseUpdateProcessor):
    """At most `max_running` updates at once, and one at a time per sender, in arrival order."""

    def __init__(self, max_running: int) -> None:
        super().__init__(WAITING_LIMIT)
        self._running = asyncio.Semaphore(max_running)
        self._turns: dict[tuple[str, int], tuple[asyncio.Lock, int]] = {}  # lock, updates holding or waiting

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        key = order_key(update)
        if key is None:
            async with self._running:
                await coroutine
            return
        lock, users = self._turns.get(key, (None, 0))
        if users >= BACKLOG_LIMIT:  # a flood past any budget: not worth holding in memory
            log.warning("dropped an update: %s %s already has %d waiting", *key, users)
            if asyncio.iscoroutine(coroutine):
                coroutine.close()  # never awaited: no "was never awaited" warning
            return
        lock = lock or asyncio.Lock()
        self._turns[key] = (lock, users + 1)
        try:
            async with lock:
                async with self._running:
                    await coroutine
        finally:
            lock, users = self._turns[key]
            if users == 1:
                del self._turns[key]  # a sender with nothing waiting costs no memory
            else:
                self._turns[key] = (lock, users - 1)

    async def initialize(self) -> None:
        """Nothing to set up."""

    async def shutdown(self) -> None:
        """Nothing to free."""
