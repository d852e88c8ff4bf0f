"""How the bot's calls share Telegram's overall limit of about 30 messages a second: by turns, chat by chat.

python-telegram-bot's AIORateLimiter keeps that limit with one leaky bucket that serves callers first come,
first served. When one user floods the bot, the answers to that user queue up in the bucket, and an
answer to anyone else waits behind all of them: in `bench/flood_bench.py` a bystander's `/start` took
up to 250 ms, 8 queued edits for the flooder at 33 ms each. Here the same budget is handed out in turns,
one call per chat with calls waiting, so a chat with one call waits for at most one call of each other
waiting chat. The turn is taken on each try, where AIORateLimiter took its bucket: after the group's own
limit and after any RetryAfter pause, so a retry counts again and a call parked at its group's limit holds no
turn. Those two, and paid broadcasts, stay AIORateLimiter's own.
"""
from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from aiolimiter import AsyncLimiter
from telegram.ext import AIORateLimiter


class FairRateLimiter(AIORateLimiter):
    """AIORateLimiter whose overall budget (`overall_max_rate` calls per `overall_time_period` seconds, for
    calls that name a chat, paid broadcasts aside) goes round-robin over the chats that have calls waiting."""

    def __init__(self, overall_max_rate: float = 30, overall_time_period: float = 1, **kwargs: Any) -> None:
        if overall_max_rate and overall_max_rate < 1:
            raise ValueError("overall_max_rate must be 0 (off) or at least 1")
        super().__init__(overall_max_rate=0, **kwargs)  # its own FIFO bucket off: ours takes its place
        self._overall = (AsyncLimiter(overall_max_rate, overall_time_period)
                         if overall_max_rate and overall_time_period else None)
        self._waiting: dict[str, deque[asyncio.Future]] = {}
        self._turns: deque[str] = deque()  # the chats with calls waiting, in the order their turns come
        self._dispatcher: asyncio.Task | None = None

    async def shutdown(self) -> None:
        """Like AIORateLimiter's (which lets its waiting calls carry on): calls still waiting go now."""
        task, self._dispatcher = self._dispatcher, None
        if task is not None:
            task.cancel()
        for queue in self._waiting.values():
            for ready in queue:
                if not ready.done():
                    ready.set_result(None)
        self._waiting.clear()
        self._turns.clear()
        await super().shutdown()

    async def process_request(self, callback, args, kwargs, endpoint, data, rate_limit_args):
        chat_id = data.get("chat_id")
        if self._overall is not None and chat_id is not None and not data.get("allow_paid_broadcast", False):
            callback = self._in_turn(callback, str(chat_id))
        return await super().process_request(callback, args, kwargs, endpoint, data, rate_limit_args)

    def _in_turn(self, send, chat: str):
        """`send` once `chat`'s turn has come: AIORateLimiter runs this on each try, inside its own limits."""
        async def in_turn(*args: Any, **kwargs: Any):
            await self._turn(chat)
            return await send(*args, **kwargs)
        return in_turn

    async def _turn(self, chat: str) -> None:
        """Wait for this chat's next turn at the overall budget."""
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        queue = self._waiting.setdefault(chat, deque())
        if not queue:
            self._turns.append(chat)
        queue.append(ready)
        if self._dispatcher is None or self._dispatcher.done() or self._dispatcher.get_loop() is not loop:
            self._dispatcher = asyncio.create_task(self._dispatch(), name="fair-rate-limiter")
        await ready

    async def _dispatch(self) -> None:
        while self._turns:
            await self._overall.acquire()
            while self._turns:  # the budget goes to the next chat's oldest call that still waits
                chat = self._turns.popleft()
                queue = self._waiting[chat]
                ready = queue.popleft()
                if queue:
                    self._turns.append(chat)
                else:
                    del self._waiting[chat]
                if not ready.done():  # a caller that gave up (cancelled) passes its turn on
                    ready.set_result(None)
                    # (one cancelled in the instant after this loses the turn: one call's worth, left alone)
                    break
