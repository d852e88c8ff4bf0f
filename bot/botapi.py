"""How the bot talks HTTP to the Bot API: python-telegram-bot's request interface over aiohttp.

On 2 cores a bare HTTP exchange with a local server costs 2.2 ms through httpx (httpx, httpcore, anyio,
h11) and 0.9 ms through aiohttp, both ends counted; through PTB's Bot (request building, rate limiter,
JSON) a getFile is 4.3 vs 3.4 ms and a 200 KB download 3.9 vs 2.6 ms (bench/bot_profile.py). A photo
makes three such calls on its way to an answer, plus the long poll that brought it.
`KIMCHI_HTTP_CLIENT=httpx` goes back to PTB's own client.

Proxies come from the environment (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY), read once per Bot API
origin, as httpx reads them once per client. aiohttp's own `trust_env` reads them, and ~/.netrc, in a
worker thread on every request: two thread hops a call, 1.12 against 0.47 ms an exchange here.

Errors follow HTTPXRequest's contract: no answer within a timeout is `TimedOut`, any other transport
failure `NetworkError("aiohttp.<Kind>: …")` raised from the original (bot.startup reads the chain for
its one sentence); an HTTP answer, whatever its status, goes back to PTB, which maps it.
"""
from __future__ import annotations

import asyncio

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL
from telegram.error import NetworkError, TimedOut
from telegram.request import BaseRequest, HTTPXRequest, RequestData

HTTP_CLIENTS = ("aiohttp", "httpx")
_DEFAULT = type(BaseRequest.DEFAULT_NONE)  # what PTB passes for "no timeout given: use yours"


class AiohttpRequest(BaseRequest):
    """One aiohttp session with up to `connection_pool_size` connections; timeouts as PTB passes them."""

    def __init__(self, connection_pool_size: int = 1, read_timeout: float | None = 5.0,
                 write_timeout: float | None = 5.0, connect_timeout: float | None = 5.0,
                 pool_timeout: float | None = 1.0, media_write_timeout: float | None = 20.0) -> None:
        self._pool_size = connection_pool_size
        self._defaults = {"read": read_timeout, "write": write_timeout, "connect": connect_timeout,
                          "pool": pool_timeout, "media_write": media_write_timeout}
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[URL, tuple[URL | None, aiohttp.BasicAuth | None]] = {}

    @property
    def read_timeout(self) -> float | None:
        return self._defaults["read"]

    async def initialize(self) -> None:
        if self._session is None or self._session.closed:
            # no trust_env: _proxy() reads the environment's proxies once per origin instead of every call
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self._pool_size),
                                                  headers={"User-Agent": self.USER_AGENT},
                                                  timeout=aiohttp.ClientTimeout(total=None))

    async def shutdown(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    async def do_request(self, url: str, method: str, request_data: RequestData | None = None,
                         read_timeout=BaseRequest.DEFAULT_NONE, write_timeout=BaseRequest.DEFAULT_NONE,
                         connect_timeout=BaseRequest.DEFAULT_NONE,
                         pool_timeout=BaseRequest.DEFAULT_NONE) -> tuple[int, bytes]:
        session = self._session
        if session is None or session.closed:
            raise RuntimeError("This AiohttpRequest is not initialized!")
        files = request_data.multipart_data if request_data else None
        fields = request_data.json_parameters if request_data else None
        read = self._default(read_timeout, "read")
        connect = self._default(connect_timeout, "connect")
        pool = self._default(pool_timeout, "pool")
        write = self._default(write_timeout, "media_write" if files else "write")
        # aiohttp has no write timeout: an upload (files) is bounded as a whole instead, by the sum of the
        # four; everything else by its waits for a connection and between reads, as httpx bounds them.
        limits = (pool, connect, write, read)
        bound = sum(limits) if files and None not in limits else None  # type: ignore[arg-type]
        timeout = aiohttp.ClientTimeout(total=bound, connect=None if None in (pool, connect) else pool + connect,
                                        sock_connect=connect, sock_read=read)
        body: aiohttp.FormData | dict[str, str] | None = fields
        if files:
            body = aiohttp.FormData()
            for name, value in (fields or {}).items():
                body.add_field(name, value)
            for name, (filename, content, mimetype) in files.items():
                body.add_field(name, content, filename=filename, content_type=mimetype)
        proxy, proxy_auth = self._proxy(url)
        try:
            async with session.request(method, url, data=body, timeout=timeout, proxy=proxy,
                                       proxy_auth=proxy_auth) as response:
                return response.status, await response.read()
        except asyncio.TimeoutError as err:  # aiohttp's own timeout errors are subclasses
            raise TimedOut from err
        except aiohttp.ClientError as err:
            raise NetworkError(f"aiohttp.{err.__class__.__name__}: {err}") from err

    def _proxy(self, url: str) -> tuple[URL | None, aiohttp.BasicAuth | None]:
        """The environment's proxy for `url`'s origin, or (None, None): NO_PROXY names it, or none is set."""
        origin = URL(url).origin()
        if origin not in self._proxies:
            try:
                self._proxies[origin] = get_env_proxy_for_url(origin)
            except LookupError:
                self._proxies[origin] = (None, None)
        return self._proxies[origin]

    def _default(self, value, name: str) -> float | None:
        return self._defaults[name] if isinstance(value, _DEFAULT) else value


def bot_api_request(client: str, connection_pool_size: int = 1, pool_timeout: float | None = 1.0) -> BaseRequest:
    """The request object for KIMCHI_HTTP_CLIENT `client` (one of HTTP_CLIENTS), PTB's defaults otherwise."""
    kind = AiohttpRequest if client == "aiohttp" else HTTPXRequest
    return kind(connection_pool_size=connection_pool_size, pool_timeout=pool_timeout)
