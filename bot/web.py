"""The bot's own HTTP server: the webhook, `GET /healthz` and `GET /metrics`.

PTB's custom-webhook pattern: a small Starlette app, served by uvicorn in the Application's event loop,
puts each posted update on `application.update_queue`; PTB handles it as if it came from polling.

A webhook POST is checked before its body is read: a wrong or missing X-Telegram-Bot-Api-Secret-Token
gets 403, a Content-Length over 1 MB gets 413. The body is then read in chunks and cut off at 1 MB
(413), and what is not a JSON update gets 400. None of these reach a handler.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
from typing import Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from telegram import Update
from telegram.ext import Application

from bot.metrics import BotMetrics, Health
from bot.settings import Settings
from models.errors import KimchiError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def build_web_app(app: Application, settings: Settings) -> Starlette:
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
        routes.append(Route(settings.webhook_path, webhook_endpoint(app, settings.webhook_secret, metrics),
                            methods=["POST"]))
    return Starlette(routes=routes)


def webhook_endpoint(app: Application, secret: str, metrics: BotMetrics | None):
    """The POST handler for Telegram's updates."""
    expected = secret.encode()

    def answer(status: int, text: str = "") -> Response:
        if metrics is not None:
            metrics.webhook_requests.labels(status=str(status)).inc()
        return PlainTextResponse(text, status_code=status)

    async def webhook(request: Request) -> Response:
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, expected):
            return answer(403, "forbidden\n")  # the body is never read
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit()):
            return answer(400, "bad Content-Length\n")
        if length is not None and int(length) > MAX_BODY_BYTES:
            return answer(413, "too large\n")
        body = await read_limited(request, MAX_BODY_BYTES)
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

    def __init__(self, app: Application, settings: Settings, address: tuple[str, int]) -> None:
        self.address = address
        self.webhook = settings.webhook_mode
        config = uvicorn.Config(build_web_app(app, settings), lifespan="off", log_config=None, access_log=False,
                                server_header=False, timeout_graceful_shutdown=10)
        self.server = _Server(config)
        self.socket: socket.socket | None = None
        self.task: asyncio.Task | None = None

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1] if self.socket is not None else self.address[1]

    async def start(self) -> None:
        self.socket = bind_socket(*self.address)
        self.task = asyncio.create_task(self.server.serve(sockets=[self.socket]))
        while not self.server.started:
            if self.task.done():  # uvicorn logs why and exits
                exc = self.task.exception()
                raise KimchiError(f"The HTTP server on {self.address[0]}:{self.port} did not start "
                                  f"({exc.__class__.__name__ if exc else 'stopped'}).")
            await asyncio.sleep(0.01)
        log.info("HTTP server on %s:%d (/healthz, /metrics%s)", self.address[0], self.port,
                 ", the webhook" if self.webhook else "")

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
