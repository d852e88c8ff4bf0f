"""A fake Telegram Bot API server on 127.0.0.1 (aiohttp): real HTTP, real JSON, for the real PTB client.

It implements the methods the bot uses (getMe, getUpdates with long polling, sendMessage, editMessageText,
editMessageReplyMarkup, answerCallbackQuery, getFile and the file route, sendPhoto, setMyCommands,
deleteWebhook, …), serves files from bytes, and records every call. Tests act as Telegram users through
`send_photo`, `send_text`, `tap` and friends, and wait for the bot's calls with `wait_for`.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web

BOT_USER = {"id": 7000000001, "is_bot": True, "first_name": "Kimchi", "username": "kimchi_test_bot"}
JSON_FIELDS = {"reply_markup", "reply_parameters", "commands", "allowed_updates", "entities", "caption_entities",
               "link_preview_options", "scope"}
KNOWN_TRUE = {"deleteWebhook", "setMyCommands", "deleteMyCommands", "answerCallbackQuery", "sendChatAction",
              "setChatMenuButton", "close", "logOut"}


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float
    files: dict[str, bytes] = field(default_factory=dict)
    result: Any = None


def user(uid: int, lang: str = "ko", name: str = "user") -> dict[str, Any]:
    return {"id": uid, "is_bot": False, "first_name": f"{name}{uid}", "language_code": lang}


class FakeTelegram:
    """One fake Bot API for one token."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.calls: list[Call] = []
        self.files: dict[str, bytes] = {}
        self.messages: dict[tuple[int, int], dict[str, Any]] = {}
        self.fail_get_file = False
        # method -> (HTTP status, description): answer that method with this Bot API error instead
        self.failures: dict[str, tuple[int, str]] = {}
        self.webhook: dict[str, Any] | None = None  # setWebhook's parameters while a webhook is set
        self.deliveries: list[int] = []  # HTTP statuses the bot's webhook answered
        self.downloads: list[str] = []  # file ids fetched over HTTP from the file route
        self.download_delays: dict[str, float] = {}  # file id -> seconds its next download takes (once)
        self.local_dir: Any = None  # a Path: getFile answers with absolute paths there, like `telegram-bot-api --local`
        self._client: Any = None  # aiohttp.ClientSession for webhook posts
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._message_ids: dict[int, itertools.count] = {}
        self._file_ids = itertools.count(1)
        self._changed = asyncio.Condition()
        self._stopping = False
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- server ------------------------------------------------------------------------------
    async def start(self) -> "FakeTelegram":
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._file)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._stopping = True  # long polls still open (a bot process that was killed) answer now
        async with self._changed:
            self._changed.notify_all()
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def file_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/file/bot"

    async def _file(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        file_id = request.match_info["path"].split("/")[-1].rsplit(".", 1)[0]
        if file_id not in self.files:
            return web.Response(status=404)
        self.downloads.append(file_id)
        delay = self.download_delays.pop(file_id, 0.0)
        if delay:
            await asyncio.sleep(delay)
        return web.Response(body=self.files[file_id], content_type="application/octet-stream")

    async def _api(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        method = request.match_info["method"]
        params, files = await self._params(request)
        call = Call(method, params, time.monotonic(), files)
        if method in self.failures:
            status, description = self.failures[method]
            self.calls.append(call)
            return web.json_response({"ok": False, "error_code": status, "description": description}, status=status)
        handler = getattr(self, f"_m_{method}", None)
        if handler is not None:
            result = await handler(params, files)
        elif method in KNOWN_TRUE:
            result = True
        else:
            return web.json_response({"ok": False, "error_code": 404, "description": f"Not Found: {method}"}, status=404)
        if isinstance(result, web.Response):
            return result
        call.result = result
        if method != "getUpdates" or result:
            self.calls.append(call)
            async with self._changed:
                self._changed.notify_all()
        return web.json_response({"ok": True, "result": result})

    @staticmethod
    async def _params(request: web.Request) -> tuple[dict[str, Any], dict[str, bytes]]:
        params: dict[str, Any] = {}
        files: dict[str, bytes] = {}
        if request.content_type == "application/json":
            params = await request.json()
        elif request.can_read_body:
            form = await request.post()
            for key, value in form.items():
                if hasattr(value, "file"):
                    files[key] = value.file.read()
                    continue
                params[key] = json.loads(value) if key in JSON_FIELDS else value
        params.update({k: v for k, v in request.query.items()})
        return params, files

    # -- methods -------------------------------------------------------------------------------
    async def _m_getMe(self, params, files):
        return {**BOT_USER, "can_join_groups": True, "can_read_all_group_messages": False,
                "supports_inline_queries": False}

    async def _m_getUpdates(self, params, files):
        offset = int(params.get("offset") or 0)
        timeout = float(params.get("timeout") or 0)
        deadline = time.monotonic() + timeout
        async with self._changed:
            while True:
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
                if self._updates or time.monotonic() >= deadline or self._stopping:
                    return list(self._updates[: int(params.get("limit") or 100)])
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    pass

    async def _m_setWebhook(self, params, files):
        self.webhook = params
        return True

    async def _m_deleteWebhook(self, params, files):
        self.webhook = None
        return True

    async def _m_getWebhookInfo(self, params, files):
        return {"url": (self.webhook or {}).get("url", ""), "has_custom_certificate": False, "pending_update_count": 0}

    async def _m_sendMessage(self, params, files):
        return self._bot_message(params, text=params.get("text", ""))

    async def _m_sendPhoto(self, params, files):
        data = files.get("photo", b"")
        file_id = self.add_file(data) if data else str(params.get("photo"))
        photo = [{"file_id": file_id, "file_unique_id": f"u{file_id}", "width": 100, "height": 100,
                  "file_size": len(data)}]
        return self._bot_message(params, photo=photo, caption=params.get("caption"))

    async def _m_sendDocument(self, params, files):
        data = files.get("document", b"")
        file_id = self.add_file(data) if data else str(params.get("document"))
        document = {"file_id": file_id, "file_unique_id": f"u{file_id}", "file_size": len(data)}
        return self._bot_message(params, document=document, caption=params.get("caption"))

    async def _m_editMessageText(self, params, files):
        message = self.messages.get((int(params["chat_id"]), int(params["message_id"])))
        if message is None:
            return web.json_response({"ok": False, "error_code": 400, "description": "Bad Request: message not found"},
                                     status=400)
        message["text"] = params["text"]
        message["edit_date"] = int(time.time())
        self._set_markup(message, params)
        return message

    async def _m_editMessageReplyMarkup(self, params, files):
        message = self.messages.get((int(params["chat_id"]), int(params["message_id"])))
        if message is None:
            return web.json_response({"ok": False, "error_code": 400, "description": "Bad Request: message not found"},
                                     status=400)
        self._set_markup(message, params)
        return message

    async def _m_getFile(self, params, files):
        file_id = params["file_id"]
        if self.fail_get_file or file_id not in self.files:
            return web.json_response({"ok": False, "error_code": 400, "description": "Bad Request: invalid file_id"},
                                     status=400)
        if self.local_dir is not None:
            path = self.local_dir / f"{file_id}.jpg"
            path.write_bytes(self.files[file_id])
            return {"file_id": file_id, "file_unique_id": f"u{file_id}", "file_size": len(self.files[file_id]),
                    "file_path": str(path.resolve())}
        return {"file_id": file_id, "file_unique_id": f"u{file_id}", "file_size": len(self.files[file_id]),
                "file_path": f"photos/{file_id}.jpg"}

    @staticmethod
    def _set_markup(message: dict, params: dict) -> None:
        if "reply_markup" in params:
            message["reply_markup"] = params["reply_markup"]
        else:
            message.pop("reply_markup", None)

    def _bot_message(self, params: dict[str, Any], **content: Any) -> dict[str, Any]:
        chat_id = int(params["chat_id"])
        message = {"message_id": self._next_message_id(chat_id), "date": int(time.time()),
                   "chat": self._chat(chat_id), "from": BOT_USER, **{k: v for k, v in content.items() if v is not None}}
        reply = params.get("reply_parameters") or {}
        reply_to = reply.get("message_id") or params.get("reply_to_message_id")
        if reply_to:
            original = self.messages.get((chat_id, int(reply_to)))
            if original is not None:
                message["reply_to_message"] = {k: v for k, v in original.items() if k != "reply_to_message"}
        if "reply_markup" in params:
            message["reply_markup"] = params["reply_markup"]
        self.messages[(chat_id, message["message_id"])] = message
        return message

    def _next_message_id(self, chat_id: int) -> int:
        return next(self._message_ids.setdefault(chat_id, itertools.count(1)))

    @staticmethod
    def _chat(chat_id: int) -> dict[str, Any]:
        return {"id": chat_id, "type": "private" if chat_id > 0 else "group", "title": None if chat_id > 0 else "group"}

    # -- what users do -------------------------------------------------------------------------
    def add_file(self, data: bytes) -> str:
        file_id = f"file{next(self._file_ids)}"
        self.files[file_id] = data
        return file_id

    async def _push(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        update = {"update_id": next(self._update_ids), kind: payload}
        if self.webhook is not None:  # Telegram posts to the webhook instead of queueing for getUpdates
            await self.post_update(update)
            return payload
        async with self._changed:
            self._updates.append(update)
            self._changed.notify_all()
        return payload

    async def user_message(self, sender: dict, chat_id: int | None = None, reply_to: dict | None = None,
                           **content: Any) -> dict[str, Any]:
        chat_id = sender["id"] if chat_id is None else chat_id
        message = {"message_id": self._next_message_id(chat_id), "date": int(time.time()), "chat": self._chat(chat_id),
                   "from": sender, **content}
        if reply_to is not None:
            message["reply_to_message"] = {k: v for k, v in reply_to.items() if k != "reply_to_message"}
        self.messages[(chat_id, message["message_id"])] = message
        return await self._push("message", message)

    async def send_photo(self, sender: dict, data: bytes, thumb: bytes | None = None, **kw: Any) -> dict[str, Any]:
        """A photo as Telegram delivers it: a small thumbnail size and the full size."""
        small = self.add_file(thumb or data[:64])
        large = self.add_file(data)
        sizes = [{"file_id": small, "file_unique_id": f"u{small}", "width": 90, "height": 68, "file_size": len(thumb or b"")},
                 {"file_id": large, "file_unique_id": f"u{large}", "width": 1280, "height": 960, "file_size": len(data)}]
        return await self.user_message(sender, photo=sizes, **kw)

    async def send_document(self, sender: dict, data: bytes, mime: str, name: str, size: int | None = None,
                            **kw: Any) -> dict[str, Any]:
        file_id = self.add_file(data)
        document = {"file_id": file_id, "file_unique_id": f"u{file_id}", "file_name": name, "mime_type": mime,
                    "file_size": len(data) if size is None else size}
        return await self.user_message(sender, document=document, **kw)

    async def send_text(self, sender: dict, text: str, **kw: Any) -> dict[str, Any]:
        entities = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}] if text.startswith("/") else []
        return await self.user_message(sender, text=text, entities=entities, **kw)

    async def tap(self, sender: dict, message: dict[str, Any], data: str) -> dict[str, Any]:
        query = {"id": f"q{next(self._file_ids)}", "from": sender, "chat_instance": "ci", "data": data,
                 "message": self.messages[(message["chat"]["id"], message["message_id"])]}
        return await self._push("callback_query", query)

    async def post_update(self, update: dict[str, Any]) -> int:
        """POST an update to the webhook the bot set, with its secret, as Telegram does; the HTTP status."""
        import aiohttp

        if self._client is None:
            self._client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        headers = {}
        if self.webhook.get("secret_token"):
            headers["X-Telegram-Bot-Api-Secret-Token"] = self.webhook["secret_token"]
        async with self._client.post(self.webhook["url"], json=update, headers=headers) as response:
            self.deliveries.append(response.status)
            return response.status

    # -- what tests check ----------------------------------------------------------------------
    async def wait_for(self, predicate: Callable[[Call], bool], timeout: float = 20.0, count: int = 1) -> list[Call]:
        """The first `count` calls matching `predicate`, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        async with self._changed:
            while True:
                found = [c for c in self.calls if predicate(c)]
                if len(found) >= count:
                    return found[:count]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [(c.method, str(c.params.get("text", ""))[:60]) for c in self.calls[-10:]]
                    raise AssertionError(f"timed out waiting for {count} matching call(s); last calls: {seen}")
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=remaining)
                except asyncio.TimeoutError:
                    pass

    async def reply_to(self, message: dict[str, Any], timeout: float = 20.0, method: str = "sendMessage") -> Call:
        """The bot's message that replies to `message`."""
        chat_id, message_id = message["chat"]["id"], message["message_id"]

        def replies(call: Call) -> bool:
            reply = call.params.get("reply_parameters") or {}
            return (call.method == method and int(call.params.get("chat_id", 0)) == chat_id
                    and int(reply.get("message_id") or call.params.get("reply_to_message_id") or 0) == message_id)

        (call,) = await self.wait_for(replies, timeout)
        return call

    def sent(self, chat_id: int, method: str = "sendMessage") -> list[Call]:
        return [c for c in self.calls if c.method == method and int(c.params.get("chat_id", 0)) == chat_id]
