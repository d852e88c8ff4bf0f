"""The bot's own HTTP server: the webhook, `GET /healthz`, `GET /metrics` and the review desk (bot/desk.py).

PTB's custom-webhook pattern: a small Starlette app, served by uvicorn in the Application's event loop,
puts each posted update on `application.update_queue`; PTB handles it as if it came from polling.

A webhook POST is checked before its body is read: a wrong or missing X-Telegram-Bot-Api-Secret-Token
gets 403, a Content-Length over 1 MB gets 413. The body is then read in chunks and cut off at 1 MB
(413), and what is not a JSON update gets 400. None of these reach a handler.

The server also holds up against clients that connect and then say little or nothing (GuardedH11Protocol):
a request head must be complete within a few seconds of connecting (HEADER_TIMEOUT_S), a connection between
requests is closed after KEEP_ALIVE_S however it trickles bytes, a webhook body must arrive within
BODY_TIMEOUT_S, and the number of open connections stays under a cap below the process's file limit
(ConnectionGuard): at the cap a new connection closes the one idle longest, so a flood of half-open
connections can neither starve the bot of file descriptors nor keep /healthz and Telegram out.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import socket
import time
from typing import Any, Iterator

import h11
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from telegram import Update
from telegram.ext import Application
from uvicorn.protocols.http.h11_impl import H11Protocol

from bot.desk import desk_routes
from bot.metrics import BotMetrics, Health
from bot.settings import Settings
from models.errors import KimchiError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"

HEADER_TIMEOUT_S = 5.0  # from connecting (or a keep-alive request's first byte) to the end of the request head
KEEP_ALIVE_S = 5  # an idle connection between requests; also bounds a next request's head or a discarded body
BODY_TIMEOUT_S = 10.0  # a webhook POST's body, once its head is in
MAX_CONNECTIONS = 1000  # open connections at most; lower when the file limit leaves less room (connection_cap)
# asyncio accepts up to `backlog` connections a loop turn, and their protocols (which the guard counts) exist
# two turns later: the cap leaves room for three turns' worth. The kernel's queue of connections waiting to
# be accepted is set larger afterwards (LISTEN_BACKLOG): a full queue drops new connections for a second.
ACCEPT_BACKLOG = 64
LISTEN_BACKLOG = 2048
# the bot's own descriptors beyond those open at start: Bot API connections (up to 64), downloads, SQLite,
# logs, a retrain's pipes
OWN_FILES_HEADROOM = 256
MIN_CONNECTIONS = 16
GUARD_LOG_INTERVAL_S = 60.0


def build_web_app(app: Application, settings: Settings, body_timeout: float = BODY_TIMEOUT_S) -> Starlette:
    """Routes: /healthz and /metrics always; the webhook path in webhook mode."""
    health = Health(app)
    metrics: BotMetrics | None = app.bot_data.get("metrics")

    async def healthz(request: Request) -> Response:
        status, body = await health.report()
        return JSONResponse(body, status_code=status)

    async def metrics_page(request: Request) -> Response:
        if metrics is None:
            return PlainTextResponse("metrics are off\n", status_code=404)
        return Response(metrics.exposition(), media_type=PROMETHEUS_TEXT)

    routes = [Route("/healthz", healthz, methods=["GET"]), Route("/metrics", metrics_page, methods=["GET"])]
    if settings.webhook_mode:
        endpoint = webhook_endpoint(app, settings.webhook_secret.get_secret_value(), metrics, body_timeout)
        routes.append(Route(settings.webhook_path, endpoint, methods=["POST"]))
    routes += desk_routes(app, settings)  # the review desk, when KIMCHI_DESK_URL turns it on
    return Starlette(routes=routes)


def webhook_endpoint(app: Application, secret: str, metrics: BotMetrics | None,
                     body_timeout: float = BODY_TIMEOUT_S):
    """The POST handler for Telegram's updates."""
    expected = secret.encode()

    def answer(status: int, text: str = "", close: bool = False) -> Response:
        if metrics is not None:
            metrics.webhook_requests.labels(status=str(status)).inc()
        return PlainTextResponse(text, status_code=status, headers={"Connection": "close"} if close else None)

    async def webhook(request: Request) -> Response:
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, expected):
            return answer(403, "forbidden\n")  # the body is never read
        length = request.headers.get("content-length")
        if length is not None and (not (length.isascii() and length.isdigit())):
            return answer(400, "bad Content-Length\n")
        if length is not None and int(length) > MAX_BODY_BYTES:
            return answer(413, "too large\n")
        try:
            body = await asyncio.wait_for(read_limited(request, MAX_BODY_BYTES), body_timeout)
        except asyncio.TimeoutError:
            return answer(408, "the body took too long\n", close=True)  # the rest is never read
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read it
        if body is None:
            return answer(413, "too large\n")
        update = parse_update(body, app)
        if update is None:
            return answer(400, "not a Telegram update\n")
        if not app.running:
            return answer(503, "stopping\n")  # Telegram retries later
        await app.update_queue.put(update)
        return answer(200)

    return webhook


async def read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it grows past `limit` (a lying or absent Content-Length)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def parse_update(body: bytes, app: Application) -> Update | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
        return None
    try:
        return Update.de_json(data, app.bot)
    except Exception:  # PTB's parsers raise KeyError, TypeError, ValueError… on malformed objects
        log.warning("a webhook update could not be parsed", exc_info=True)
        return None


class ConnectionGuard:
    """The server's open connections, the least recently active first, and the cap on their number.

    At the cap a new connection closes the connection idle longest (one waiting for its request head, or
    kept alive between requests); when every open connection has a request in progress, the new one is
    closed instead. Either way the server's descriptors stay under the file limit, so asyncio's accept()
    never fails and the bot's own sockets and files can still be opened.
    """

    def __init__(self, cap: int, header_timeout: float) -> None:
        self.cap, self.header_timeout = cap, header_timeout
        self.open: dict[GuardedH11Protocol, None] = {}
        self.closed_idle = self.refused = self.timed_out = 0  # since the last report
        self.last_report = -GUARD_LOG_INTERVAL_S

    def admit(self, conn: GuardedH11Protocol) -> bool:
        while len(self.open) >= self.cap:
            victim = next((c for c in self.open if c.idle), None)
            if victim is None:
                self.refused += 1
                self.report()
                return False
            self.forget(victim)
            victim.close_idle()
            self.closed_idle += 1
            self.report()
        self.open[conn] = None
        return True

    def touch(self, conn: GuardedH11Protocol) -> None:
        if conn in self.open:  # to the end: the most recently active
            del self.open[conn]
            self.open[conn] = None

    def forget(self, conn: GuardedH11Protocol) -> None:
        self.open.pop(conn, None)

    def report(self) -> None:
        """One line a minute at most while the cap is being hit."""
        now = time.monotonic()
        if now - self.last_report < GUARD_LOG_INTERVAL_S:
            return
        self.last_report = now
        log.warning("the HTTP server is at its cap of %d connections: each new one closes the one idle longest "
                    "(at most one such line a minute; since the last: %d closed to make room, %d refused with all "
                    "busy, %d closed for no request head within %g s)", self.cap, self.closed_idle, self.refused,
                    self.timed_out, self.header_timeout)
        self.closed_idle = self.refused = self.timed_out = 0


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the deadlines it lacks, its connections counted by a ConnectionGuard.

    uvicorn closes a connection kept alive between requests after `timeout_keep_alive`, but waits for a
    first request head for ever, and any byte restarts the wait for a next one. Here a request head must be
    complete within `guard.header_timeout` of connecting, and between requests the keep-alive timer runs
    until the next head is complete, whatever trickles in meanwhile (a head, or a body nobody reads).
    """

    guard: ConnectionGuard  # set per server by guarded_protocol()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.admit(self):
            transport.abort()
            return
        self.head_timer = self.loop.call_later(self.guard.header_timeout, self.head_timed_out)

    def data_received(self, data: bytes) -> None:
        # uvicorn's own data_received first cancels the keep-alive timer, on any byte; here only a complete
        # request head does (handle_events calls _unset_keepalive_if_required on an h11.Request)
        self.conn.receive_data(data)
        self.handle_events()

    def _unset_keepalive_if_required(self) -> None:
        # uvicorn calls this when a request head is complete, when a response is and when the connection is
        # lost: the first head's deadline ends there too
        super()._unset_keepalive_if_required()
        self.cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.guard.touch(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.forget(self)
        self.cancel_head_timer()
        super().connection_lost(exc)

    @property
    def idle(self) -> bool:
        """No request in progress: waiting for a first request head, or kept alive after a response."""
        return self.cycle is None or self.cycle.response_complete

    def close_idle(self) -> None:
        if self.transport.is_closing():
            return
        with contextlib.suppress(h11.LocalProtocolError):
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()

    def head_timed_out(self) -> None:
        self.head_timer = None
        self.guard.timed_out += 1
        self.close_idle()

    def cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None


def guarded_protocol(guard: ConnectionGuard) -> type[GuardedH11Protocol]:
    """The protocol class for one server (uvicorn builds protocols from a class and its Config alone)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"guard": guard})


def open_files() -> int | None:
    """How many file descriptors this process has open (Linux, macOS), or None."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            return len(os.listdir(folder))
    return None


def file_limit() -> int | None:
    """The soft RLIMIT_NOFILE, or None when there is none (or no way to know)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def connection_cap(wanted: int, limit: int | None = None, in_use: int | None = None) -> int:
    """`wanted`, or less so that the server's connections, the connections asyncio has accepted but not yet
    handed over, and the bot's own files all fit under the file limit."""
    limit = file_limit() if limit is None else limit
    if limit is None:
        return wanted
    in_use = (open_files() or 64) if in_use is None else in_use
    room = limit - in_use - OWN_FILES_HEADROOM - 3 * ACCEPT_BACKLOG
    return max(MIN_CONNECTIONS, min(wanted, room))


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: kimchi-bot stops the server itself, in its order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    """A bound socket for `host:port` (port 0: any free one); KimchiError when it cannot be had."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                              flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as err:
        raise KimchiError(f"KIMCHI_LISTEN {host}:{port} cannot be used: {err.strerror or err}.") from err
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise KimchiError(f"KIMCHI_LISTEN {host}:{port} cannot be used: {err.strerror or err}.") from err
    return sock


class WebServer:
    """uvicorn serving build_web_app() on the running event loop."""

    def __init__(self, app: Application, settings: Settings, address: tuple[str, int], *,
                 header_timeout: float = HEADER_TIMEOUT_S, keep_alive: float = KEEP_ALIVE_S,
                 body_timeout: float = BODY_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS) -> None:
        self.address = address
        self.webhook = settings.webhook_mode
        self.max_connections = max_connections
        self.guard = ConnectionGuard(max_connections, header_timeout)  # the cap is set at start (file limit)
        config = uvicorn.Config(build_web_app(app, settings, body_timeout), http=guarded_protocol(self.guard),
                                ws="none", lifespan="off", log_config=None, access_log=False, server_header=False,
                                timeout_graceful_shutdown=10, timeout_keep_alive=keep_alive,  # type: ignore[arg-type]
                                backlog=ACCEPT_BACKLOG)
        self.server = _Server(config)
        self.socket: socket.socket | None = None
        self.task: asyncio.Task | None = None

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1] if self.socket is not None else self.address[1]

    async def start(self) -> None:
        self.guard.cap = connection_cap(self.max_connections)
        self.socket = bind_socket(*self.address)
        self.task = asyncio.create_task(self.server.serve(sockets=[self.socket]))
        while not self.server.started:
            if self.task.done():  # uvicorn logs why and exits
                exc = self.task.exception()
                raise KimchiError(f"The HTTP server on {self.address[0]}:{self.port} did not start "
                                  f"({exc.__class__.__name__ if exc else 'stopped'}).")
            await asyncio.sleep(0.01)
        self.socket.listen(LISTEN_BACKLOG)  # asyncio listened with ACCEPT_BACKLOG, its batch size
        log.info("HTTP server on %s:%d (/healthz, /metrics%s; at most %d connections, file limit %s)",
                 self.address[0], self.port, ", the webhook" if self.webhook else "", self.guard.cap,
                 file_limit() or "none")

    async def stop(self) -> None:
        """Stop accepting connections and let the requests in progress finish."""
        if self.task is None:
            return
        self.server.should_exit = True
        try:
            await self.task
        except (Exception, SystemExit):  # already stopping; uvicorn logged it
            log.warning("the HTTP server stopped with an error", exc_info=True)
        finally:
            if self.socket is not None:
                self.socket.close()
