"""The bot's Bot API client (bot/botapi.py, aiohttp under PTB): what PTB sends arrives whole, a silent server
is a TimedOut, a closed port a NetworkError with its cause, and PTB's httpx client is still one setting away."""
import asyncio

import pytest
from aiohttp import web
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup
from telegram.error import NetworkError, TimedOut
from telegram.request import HTTPXRequest

from bot.app import build_application
from bot.botapi import AiohttpRequest
from bot.settings import Settings
from bot.startup import reason
from models.errors import KimchiError
from tests.botkit import TOKEN, bot_env, until
from tests.imagegen import draw, encode


async def test_fields_json_and_uploads_reach_the_api(fake):
    bot = Bot(TOKEN, base_url=fake.base_url, base_file_url=fake.file_url, request=AiohttpRequest())
    png = encode(draw(2, (64, 48)), "PNG")
    async with bot:
        me = await bot.get_me()
        keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("깍두기", callback_data="c:1:4")]])
        sent = await bot.send_message(42, "깍두기 — 94%", reply_markup=keyboard)
        photo = await bot.send_photo(42, png, caption="의심스러운 라벨", filename="suspects.png")
        file = await bot.get_file(photo.photo[-1].file_id)
        downloaded = await file.download_as_bytearray()
    assert me.username == "kimchi_test_bot" and sent.text == "깍두기 — 94%"
    call = next(c for c in fake.calls if c.method == "sendMessage")
    assert call.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == "c:1:4"
    upload = next(c for c in fake.calls if c.method == "sendPhoto")
    assert upload.files["photo"] == png and upload.params["caption"] == "의심스러운 라벨"
    assert bytes(downloaded) == png


async def test_a_silent_server_times_out_and_a_closed_port_says_why(unused_tcp_port):
    async def never(request):
        await asyncio.sleep(1)  # far beyond the client's 0.3 s; the server's cleanup waits for it
        return web.json_response({"ok": True, "result": True})

    app = web.Application()
    app.router.add_route("*", "/bot{token}/{method}", never)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        slow = Bot(TOKEN, base_url=f"http://127.0.0.1:{port}/bot", request=AiohttpRequest(read_timeout=0.3))
        with pytest.raises(TimedOut):
            async with slow:
                pass  # initialize() calls getMe
    finally:
        await runner.cleanup()
    closed = Bot(TOKEN, base_url=f"http://127.0.0.1:{unused_tcp_port}/bot", request=AiohttpRequest())
    with pytest.raises(NetworkError) as err:
        async with closed:
            pass
    assert err.value.message.startswith("aiohttp.") and reason(err.value) == "connection refused"


async def test_a_proxy_from_the_environment_carries_the_calls_unless_no_proxy_names_the_host(monkeypatch):
    """HTTP(S)_PROXY and NO_PROXY, read once per origin rather than per call (aiohttp's trust_env rereads
    them in a thread every time). The API host does not resolve: only the proxy can answer for it."""
    seen: list[str] = []
    me = b'{"ok": true, "result": {"id": 1, "is_bot": true, "first_name": "K", "username": "kimchi_test_bot"}}'

    async def proxy(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head.split(b"\r\n")[0].decode())
        length = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
        await reader.readexactly(length[0] if length else 0)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(me), me))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    api = "http://api.kimchi.invalid/bot"
    try:
        async with Bot(TOKEN, base_url=api, request=AiohttpRequest()) as bot:  # initialize() calls getMe
            await bot.get_me()
        assert seen == [f"POST {api}{TOKEN}/getMe HTTP/1.1"] * 2
        monkeypatch.setenv("NO_PROXY", "api.kimchi.invalid")
        with pytest.raises(NetworkError):  # straight to a host that does not resolve
            async with Bot(TOKEN, base_url=api, request=AiohttpRequest()):
                pass
        assert len(seen) == 2
    finally:
        server.close()
        await server.wait_closed()


async def test_the_client_is_a_setting(fake, home):
    for name, kind in (("aiohttp", AiohttpRequest), ("httpx", HTTPXRequest)):
        app = build_application(Settings.load(environ=bot_env(home, fake, KIMCHI_HTTP_CLIENT=name), env_file=None))
        assert isinstance(app.bot.request, kind)
        calls = len(fake.calls)
        async with app:  # initialize: getMe over that client
            assert app.bot.username == "kimchi_test_bot"
        assert [c.method for c in fake.calls[calls:]] == ["getMe"]
    with pytest.raises(KimchiError, match="KIMCHI_HTTP_CLIENT"):
        Settings.load(environ=bot_env(home, fake, KIMCHI_HTTP_CLIENT="requests"), env_file=None)


async def test_the_overall_budget_goes_by_turns_and_a_call_given_up_passes_its_turn_on(fake):
    from telegram.ext import ExtBot

    from bot.sendrate import FairRateLimiter

    limiter = FairRateLimiter(overall_max_rate=1, overall_time_period=0.3)
    bot = ExtBot(TOKEN, base_url=fake.base_url, request=AiohttpRequest(connection_pool_size=4), rate_limiter=limiter)
    async with bot:
        await bot.send_message(1, "a")  # the bucket's one call
        b = asyncio.create_task(bot.send_message(1, "b"))
        c = asyncio.create_task(bot.send_message(1, "c"))
        d = asyncio.create_task(bot.send_message(2, "d"))
        await until(lambda: sum(map(len, limiter._waiting.values())) == 3, "b, c and d waiting for their turns")
        b.cancel()  # its chat's next call takes its place in the ring; d, the other chat, comes first
        await asyncio.gather(c, d)
        with pytest.raises(asyncio.CancelledError):
            await b
    assert [c.params["text"] for c in fake.calls if c.method == "sendMessage"] == ["a", "d", "c"]
