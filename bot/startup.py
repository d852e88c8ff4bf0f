"""How `kimchi-bot` comes up and goes down, in polling or webhook mode.

Before anything else the bot asks the Bot API `getMe`, and turns what can go wrong there into one
sentence (a KimchiError): the API cannot be reached (and why, in a few words), the token was rejected,
or another instance holds the token (409). `run()` prints that sentence and returns exit status 2.

Then one lifecycle serves both modes, in one event loop: the Application starts; the HTTP server
(webhook, /healthz, /metrics; bot.web) starts when there is an address to listen on; polling starts, or
setWebhook is called. SIGTERM or SIGINT stops the intake (polling, or the HTTP server), lets the updates
in flight finish, runs post_stop and post_shutdown, and run() returns 0.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import ssl
import sys
import time

from telegram import Bot, User
from telegram.error import Conflict, InvalidToken, NetworkError, TelegramError, TimedOut
from telegram.ext import Application

from bot.botapi import bot_api_request
from bot.gate import ALLOWED_UPDATES
from bot.settings import Settings
from models.errors import KimchiError

log = logging.getLogger(__name__)

# bot.gate.ALLOWED_UPDATES: what polling asks getUpdates for is what setWebhook subscribes to.
# A short long-poll at start-up: another instance polling this token re-polls within a second or two of
# being cut off, and Telegram then answers our probe 409. No offset is sent, so nothing is confirmed.
CONFLICT_PROBE_S = 2
CONFLICT_LOG_INTERVAL_S = 60.0
FILE_LIMIT_TARGET = 65536  # the soft RLIMIT_NOFILE kimchi-bot asks for (up to the hard limit)


# ---------------------------------------------------------------------------------------------
# the start-up check

async def check_bot_api(bot: Bot, settings: Settings, *, polling: bool, probe_s: int = CONFLICT_PROBE_S) -> User:
    """getMe (initialising `bot`), then in polling mode look for a webhook and for another poller.

    Returns the bot's user; raises KimchiError with one sentence, after shutting `bot` down, on failure.
    """
    try:
        await bot.initialize()  # initialises the HTTP clients and calls getMe
        if polling:
            info = await bot.get_webhook_info()
            if info.url:
                raise KimchiError(webhook_set_sentence(info.url))
            if probe_s > 0:
                await bot.get_updates(limit=1, timeout=probe_s)
        return bot.bot
    except KimchiError:
        await bot.shutdown()
        raise
    except TelegramError as err:
        await bot.shutdown()
        raise KimchiError(_redact(explain(err, settings), settings)) from err


async def check_only(settings: Settings) -> User:
    """`kimchi-bot --check`: the same getMe and webhook check, without the probe that would interrupt a
    running instance's long poll."""
    bot = Bot(settings.token.get_secret_value(), base_url=settings.base_url, base_file_url=settings.file_url,
              local_mode=settings.local_mode,
              request=bot_api_request(settings.http_client))
    me = await check_bot_api(bot, settings, polling=not settings.webhook_mode, probe_s=0)
    await bot.shutdown()
    return me


def explain(err: TelegramError, settings: Settings) -> str:
    """One sentence for a failed start-up call."""
    where = settings.base_url
    if isinstance(err, InvalidToken):
        if "not found" in err.message.lower():
            return (f"The Bot API at {where} answered 404 Not Found to getMe: check TELEGRAM_API_BASE_URL "
                    f"(it ends in /bot, e.g. https://api.telegram.org/bot) and the token.")
        return ("Telegram rejected TELEGRAM_BOT_TOKEN (401 Unauthorized): the token was revoked or mistyped; "
                "copy the current one from @BotFather (/mybots, API Token).")
    if isinstance(err, Conflict):
        if "webhook" in err.message.lower():
            return webhook_set_sentence(None)
        return another_instance_sentence()
    if _no_answer(err):
        return (f"Cannot reach the Bot API at {where} ({reason(err)}): check the network, proxy and firewall, "
                f"and TELEGRAM_API_BASE_URL.")
    return f"The Bot API at {where} did not answer the start-up check as expected: {err.message.rstrip('.')}."


def webhook_set_sentence(url: str | None) -> str:
    at = f" ({url})" if url else ""
    return (f"A webhook is set for this bot{at}, so Telegram will not hand updates to polling (409 Conflict): "
            f"if no other instance runs in webhook mode, delete it with the Bot API's deleteWebhook method, or run "
            f"this one in webhook mode with KIMCHI_WEBHOOK_URL.")


def another_instance_sentence() -> str:
    return ("Another program is already polling Telegram with this token (409 Conflict: terminated by other "
            "getUpdates request): stop the other kimchi-bot instance, or whatever else uses the token, first.")


def _no_answer(err: TelegramError) -> bool:
    """No HTTP answer at all (transport errors, wrapped by PTB's request classes and bot.botapi), as opposed
    to an error the API sent."""
    transport = isinstance(err, NetworkError) and err.message.startswith(("httpx.", "aiohttp."))
    return isinstance(err, TimedOut) or transport


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and all(current is not e for e in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def reason(err: BaseException) -> str:
    """The underlying cause of a connection failure, in a few words."""
    chain = _chain(err)
    text = " ".join(str(e) for e in chain).lower()
    errnos = {getattr(e, "errno", None) for e in chain}

    def has(kind: type) -> bool:
        return any(isinstance(e, kind) for e in chain)

    if has(socket.gaierror) or "name or service not known" in text or "name resolution" in text \
            or "nodename nor servname" in text:
        return "DNS lookup failed"
    if has(ConnectionRefusedError) or errno.ECONNREFUSED in errnos or "connection refused" in text:
        return "connection refused"
    if has(ssl.SSLCertVerificationError) or "certificate verify failed" in text:
        return "TLS certificate not trusted"
    if has(ssl.SSLError) or "ssl" in text:
        return "TLS handshake failed"
    if errnos & {errno.ENETUNREACH, errno.EHOSTUNREACH} or "unreachable" in text or "no route to host" in text:
        return "network unreachable"
    if has(TimedOut) or has(TimeoutError) or "timed out" in text or "timeout" in text:
        return "timed out"
    first = next((line for line in str(err).splitlines() if line.strip()), err.__class__.__name__)
    return first[:80]


def _redact(text: str, settings: Settings) -> str:
    """The sentence without the token or the webhook secret (it goes to stderr, past the log's redaction)."""
    for secret, name in ((settings.token, "<token>"), (settings.webhook_secret, "<secret>")):
        text = text.replace(secret.get_secret_value(), name) if secret else text
    return text


# ---------------------------------------------------------------------------------------------
# the lifecycle

async def set_webhook(app: Application, settings: Settings) -> None:
    """Point Telegram at KIMCHI_WEBHOOK_URL, with the secret and the same allowed_updates as polling."""
    try:
        await app.bot.set_webhook(settings.webhook_url, secret_token=settings.webhook_secret.get_secret_value(),
                                  allowed_updates=ALLOWED_UPDATES, max_connections=settings.webhook_max_connections,
                                  drop_pending_updates=settings.drop_pending_updates)
    except TelegramError as err:
        raise KimchiError(_redact(f"Telegram refused the webhook {settings.webhook_url}: {err.message.rstrip('.')}.",
                                  settings)) from err
    log.info("webhook set: %s (max_connections %d)", settings.webhook_url, settings.webhook_max_connections)


class _PollingErrors:
    """getUpdates failures while running: one line in the log, not a traceback per retry."""

    def __init__(self) -> None:
        self.last_conflict = -1e9

    def __call__(self, err: TelegramError) -> None:
        if isinstance(err, Conflict):
            now = time.monotonic()
            if now - self.last_conflict >= CONFLICT_LOG_INTERVAL_S:
                self.last_conflict = now
                log.error("%s", webhook_set_sentence(None) if "webhook" in err.message.lower()
                          else another_instance_sentence())
            return
        log.warning("getUpdates failed (%s); retrying", err.message)


def _stop_on_signals(stop: asyncio.Event) -> list[int]:
    """SIGTERM and SIGINT set `stop` (main thread only; elsewhere, e.g. in tests, the caller sets it)."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    return installed


async def serve(app: Application, settings: Settings, stop: asyncio.Event | None = None,
                probe_s: int = CONFLICT_PROBE_S, ready: asyncio.Event | None = None, poll_timeout: int = 10) -> None:
    """Run `app` until `stop` is set (or SIGTERM/SIGINT): check, start, serve, drain, shut down.

    `ready` is set once updates are being taken (tests and benchmarks wait for it); `poll_timeout` is
    getUpdates' long-poll timeout (PTB's default).
    """
    from bot.web import WebServer  # uvicorn and starlette load only for a bot that runs

    stop = stop or asyncio.Event()
    signals = _stop_on_signals(stop)
    try:
        await check_bot_api(app.bot, settings, polling=not settings.webhook_mode, probe_s=probe_s)
        await _run(app, settings, stop, ready, WebServer, poll_timeout)
    finally:
        loop = asyncio.get_running_loop()
        for sig in signals:
            loop.remove_signal_handler(sig)


async def _run(app: Application, settings: Settings, stop: asyncio.Event, ready: asyncio.Event | None,
               web_server: type, poll_timeout: int) -> None:
    web = None
    try:
        await app.initialize()
        if app.post_init:
            await app.post_init(app)
        _bind_metrics(app)
        await app.start()
        try:
            address = settings.listen_address
            if address is not None:
                web = web_server(app, settings, address)
                await web.start()
            if settings.webhook_mode:
                await set_webhook(app, settings)
            else:
                await app.updater.start_polling(allowed_updates=ALLOWED_UPDATES, timeout=poll_timeout,
                                                drop_pending_updates=settings.drop_pending_updates,
                                                error_callback=_PollingErrors())
            log.info("taking updates by %s", "webhook" if settings.webhook_mode else "polling")
            if ready is not None:
                ready.set()
            await stop.wait()
            log.info("stopping: finishing the updates in flight")
        finally:
            if app.updater is not None and app.updater.running:
                await app.updater.stop()
            if web is not None:
                await web.stop()  # no new webhook posts; the ones accepted are in the update queue
            await app.stop()  # handles what is queued, waits for the handlers in flight
            if app.post_stop:
                await app.post_stop(app)
    finally:
        await app.shutdown()
        if app.post_shutdown:
            await app.post_shutdown(app)


def _bind_metrics(app: Application) -> None:
    metrics, svc = app.bot_data.get("metrics"), app.bot_data.get("services")
    if metrics is not None and svc is not None:
        metrics.bind(svc.classifier)


def raise_file_limit(target: int = FILE_LIMIT_TARGET) -> None:
    """The soft RLIMIT_NOFILE up to the hard one (at most `target`): systemd and many shells start programs with
    1024, which the HTTP server's connections, the Bot API's and the bot's files share (bot.web caps the
    server's connections under whatever limit there is)."""
    try:
        import resource
    except ImportError:  # Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = target if hard == resource.RLIM_INFINITY else min(hard, target)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError) as err:
            log.debug("the file limit stays at %d (%s)", soft, err)
        else:
            log.debug("file limit raised from %d to %d", soft, wanted)


def run(app: Application, settings: Settings) -> int:
    """`kimchi-bot`'s exit status: 0 after a clean stop, 2 with one sentence when it cannot start."""
    raise_file_limit()
    try:
        asyncio.run(serve(app, settings))
    except KimchiError as err:
        log.error("%s", err)
        print(f"kimchi-bot: {err}", file=sys.stderr)
        return 2
    return 0
