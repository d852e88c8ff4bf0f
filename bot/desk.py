"""The review desk: a page for admins, served by the bot's own HTTP server (bot/web.py) under /desk, that
opens as a Telegram Mini App or in any browser.

Who gets in:

* a Mini App sends Telegram's signed `initData`: its hash must be the HMAC-SHA256 of the sorted data-check
  string under the key HMAC-SHA256("WebAppData", bot token), compared in constant time; `auth_date` at most
  an hour old; the user one of KIMCHI_ADMIN_IDS;
* a browser opens a one-time login link that `/desk` sent to the admin's chat: random, 10 minutes, once;
  it sets an HttpOnly, SameSite=Strict cookie (Secure behind HTTPS).

Either way the page gets a session: a bearer token, kept in the page's memory, and a CSRF token every request
that changes something must carry. A refusal is 403 with one sentence, and the log says why. Photos are served
by their sha256 (an opaque id, never a path) to signed-in admins only; thumbnails are made once and cached on
disk. The page's script and style ship in the package (bot/desk_static/); a Content-Security-Policy allows only
them. Decisions go through the ledger (bot/ledger.py), the same code as `/review`.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from telegram.ext import Application

from bot.settings import Settings
from bot.texts import kimchi_name, language, say
from models.datafiles import read_manifest
from models.errors import KimchiError
from models.labels import LABELS, NOT_KIMCHI, by_name
from models.status import Source, Status

log = logging.getLogger(__name__)

PREFIX = "/desk"
STATIC = Path(__file__).with_name("desk_static")
COOKIE = "kimchi_desk"
LOGIN_TTL_S = 600  # a login link's life
INIT_DATA_MAX_AGE_S = 3600  # how old a Mini App's initData may be
MAX_SESSIONS = 256
MAX_LINKS = 256
THUMB_PX = 256
PAGE_LIMIT = 200  # the most items one grid request returns
MAX_BODY = 64 * 1024
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'self' https://web.telegram.org https://*.telegram.org")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "Cross-Origin-Resource-Policy": "same-origin"}
REPORT_PICTURES = ("confusion_matrix.png", "confusion_matrix_normalized.png", "top_losses.png", "openset.png",
                   "show_results.png")
_SHA = re.compile(r"[0-9a-f]{64}", re.ASCII)
_TOKEN = re.compile(r"[A-Za-z0-9_-]{20,100}", re.ASCII)
SOURCES = tuple(s.value for s in Source)
FLAGS = ("label", "outlier", "near_duplicate", "not_kimchi", "flood")


class Refused(Exception):
    """Why a request may not go on: an HTTP status, a sentence for the page, and what the log says."""

    def __init__(self, status: int, text: str, why: str = "") -> None:
        super().__init__(why or text)
        self.status, self.text, self.why = status, text, why or text


# ---------------------------------------------------------------------------------------------
# who gets in

def sign_init_data(fields: dict[str, str], token: str) -> str:
    """`fields` as Telegram would send them to a Mini App, with their hash (tests and the bench sign with it)."""
    check = "\n".join(f"{k}={v}" for k, v in sorted(fields.items()))
    secret = hmac.new(b"WebAppData", token.encode(), hashlib.sha256).digest()
    digest = hmac.new(secret, check.encode(), hashlib.sha256).hexdigest()
    from urllib.parse import urlencode

    return urlencode({**fields, "hash": digest})


@dataclass
class Session:
    token: str
    csrf: str
    admin_id: int
    name: str
    lang: str
    expires: float


@dataclass
class Link:
    admin_id: int
    lang: str
    expires: float
    used: bool = False


@dataclass
class DeskAuth:
    """Mini App sign-ins, one-time links and sessions, in memory (a restart signs everyone out)."""

    token: str
    admin_ids: frozenset[int]
    session_s: float
    clock: Callable[[], float] = time.time
    sessions: OrderedDict[str, Session] = field(default_factory=OrderedDict)
    links: OrderedDict[str, Link] = field(default_factory=OrderedDict)

    def check_init_data(self, raw: str) -> tuple[int, str, str]:
        """(user id, name, language) from a Mini App's initData, or Refused saying why not."""
        if not raw or len(raw) > 8192:
            raise Refused(403, "desk_refused_signature", "initData missing or too long")
        try:
            pairs = parse_qsl(raw, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise Refused(403, "desk_refused_signature", "initData is not a query string") from None
        fields = dict(pairs)
        if len(fields) != len(pairs):
            raise Refused(403, "desk_refused_signature", "initData repeats a field")
        given = fields.pop("hash", "")
        check = "\n".join(f"{k}={v}" for k, v in sorted(fields.items()))
        secret = hmac.new(b"WebAppData", self.token.encode(), hashlib.sha256).digest()
        expected = hmac.new(secret, check.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise Refused(403, "desk_refused_signature", "initData's hash does not match (forged, or another bot's)")
        try:
            auth_date = int(fields.get("auth_date", ""))
            user = json.loads(fields.get("user", ""))
            user_id = int(user["id"])
        except (ValueError, TypeError, KeyError):
            raise Refused(403, "desk_refused_signature", "initData lacks auth_date or the user") from None
        age = self.clock() - auth_date
        if age > INIT_DATA_MAX_AGE_S or age < -60:
            raise Refused(403, "desk_refused_expired", f"initData is {age:.0f} s old")
        if user_id not in self.admin_ids:
            raise Refused(403, "desk_refused_not_admin", f"user {user_id} is not an admin")
        name = " ".join(str(user.get(k) or "") for k in ("first_name", "last_name")).strip()
        return user_id, name[:64], language(user.get("language_code"))

    def issue_link(self, admin_id: int, lang: str) -> str:
        """A new one-time login link's token for `admin_id`."""
        self._expire()
        token = secrets.token_urlsafe(32)
        self.links[token] = Link(admin_id, lang, self.clock() + LOGIN_TTL_S)
        while len(self.links) > MAX_LINKS:
            self.links.popitem(last=False)
        return token

    def redeem(self, token: str) -> Link:
        """The link's admin, once; Refused when it is unknown, used or expired."""
        link = self.links.get(token) if _TOKEN.fullmatch(token or "") else None
        if link is None:
            raise Refused(403, "desk_refused_link", "unknown login link")
        if link.used:
            raise Refused(403, "desk_refused_link", f"login link of admin {link.admin_id} used again")
        link.used = True  # kept until it expires, so a replay is told apart from a typo in the log
        if link.expires < self.clock():
            raise Refused(403, "desk_refused_link", f"login link of admin {link.admin_id} expired")
        if link.admin_id not in self.admin_ids:
            raise Refused(403, "desk_refused_not_admin", f"user {link.admin_id} is no longer an admin")
        return link

    def open_session(self, admin_id: int, name: str, lang: str) -> Session:
        self._expire()
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), admin_id, name, lang,
                          self.clock() + self.session_s)
        self.sessions[session.token] = session
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)
        return session

    def session_of(self, request: Request) -> Session:
        """The request's session (bearer header, else the cookie), or Refused (401)."""
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(COOKIE, "")
        session = self.sessions.get(token) if _TOKEN.fullmatch(token or "") else None
        if session is None or session.expires < self.clock():
            raise Refused(401, "desk_signed_out", "no session, or it expired")
        if session.admin_id not in self.admin_ids:
            raise Refused(403, "desk_refused_not_admin", f"user {session.admin_id} is no longer an admin")
        return session

    def check_csrf(self, request: Request, session: Session) -> None:
        given = request.headers.get("x-csrf-token", "")
        if not hmac.compare_digest(given.encode(), session.csrf.encode()):
            raise Refused(403, "desk_refused_csrf", "a write without its CSRF token")

    def _expire(self) -> None:
        now = self.clock()
        for store in (self.sessions, self.links):
            for key in [k for k, v in store.items() if v.expires < now]:
                del store[key]


# ---------------------------------------------------------------------------------------------
# what the grid shows

def label_entries(lang: str) -> list[dict]:
    """Every label an admin may give, as the page names them (not_kimchi last, marked 🚫)."""
    return [{"name": c.name, "id": c.id, "shown": ("🚫 " if c.name == NOT_KIMCHI else "") + kimchi_name(c.name, lang)}
            for c in LABELS]


async def pending_page(svc, args: dict[str, str]) -> dict:
    """The pending labels matching the filters, sorted, one page of them with votes and their users."""
    where, params = ["c.status=?"], [Status.PENDING.value]
    label = args.get("label") or ""
    if label:
        if by_name(label) is None:
            raise Refused(400, "desk_bad_request", f"unknown label filter {label!r}")
        where.append("c.corrected_label=?")
        params.append(by_name(label).name)
    if args.get("user"):
        if not args["user"].isdigit():
            raise Refused(400, "desk_bad_request", "user filter is not a number")
        where.append("c.user_id=?")
        params.append(int(args["user"]))
    if args.get("source"):
        if args["source"] not in SOURCES:
            raise Refused(400, "desk_bad_request", "unknown source filter")
        where.append("c.source=?")
        params.append(args["source"])
    flag = args.get("flag") or ""
    if flag == "any":
        where.append("c.audit_flag IS NOT NULL")
    elif flag:
        where.append("c.audit_flag LIKE ?")
        params.append(f"%{flag.replace('%', '')}%")
    if args.get("dispute") in ("1", "true"):
        where.append("c.source=?")
        params.append(Source.DISPUTE.value)
    offset, limit = _int(args.get("offset"), 0, 0, 10**9), _int(args.get("limit"), 60, 1, PAGE_LIMIT)
    db = svc.store.db
    rows = await db.all(
        "SELECT c.id, c.user_id, c.corrected_label, c.sha256, c.file_unique_id, c.source, c.audit_flag, c.created_at,"
        " p.top_json FROM corrections c JOIN predictions p ON p.id = c.prediction_id"
        f" WHERE {' AND '.join(where)}", params)
    items = []
    for row in rows:
        top = [(str(t[0]), float(t[1])) for t in json.loads(row["top_json"] or "[]")][:3]
        items.append((row, top, dict(top).get(row["corrected_label"], 0.0)))
    if args.get("sort") == "age":
        items.sort(key=lambda it: it[0]["id"])
    else:  # the model's disagreement: the lowest probability of the user's label first
        items.sort(key=lambda it: (it[2], it[0]["id"]))
    page = items[offset:offset + limit]
    users = await users_of(svc, {row["user_id"] for row, _, _ in page if row["user_id"] is not None})
    votes = await votes_of(db, [(row["sha256"], row["corrected_label"]) for row, _, _ in page])
    counts: dict[str, dict[str, int]] = {"label": {}, "source": {}, "flag": {}}
    for column, key in (("corrected_label", "label"), ("source", "source"), ("audit_flag", "flag")):
        for value, n in await db.all(f"SELECT {column}, COUNT(*) FROM corrections WHERE status=? AND {column} IS NOT"
                                     f" NULL GROUP BY {column}", (Status.PENDING.value,)):
            # an audit flag may name several reasons ("not_kimchi,outlier"): each is counted
            for part in (str(value).replace(";", ",").split(",") if key == "flag" else [str(value)]):
                if part.strip():
                    counts[key][part.strip()] = counts[key].get(part.strip(), 0) + n
    return {"total": len(items), "offset": offset, "items": [{
        "id": row["id"], "photo": row["sha256"], "label": row["corrected_label"], "top": top,
        "votes_for": votes.get((row["sha256"], row["corrected_label"]), (0, 0))[0],
        "votes_against": votes.get((row["sha256"], row["corrected_label"]), (0, 0))[1],
        "user": users.get(row["user_id"]) if row["user_id"] is not None else None, "source": row["source"],
        "flag": row["audit_flag"], "dispute": row["source"] == Source.DISPUTE.value, "created_at": row["created_at"],
        "agreement": round(p, 4)} for row, top, p in page], "counts": counts}


async def votes_of(db, photos: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, int]]:
    """(for, against) per (sha256, label): distinct users whose live label of the photo is that label, or another."""
    shas = sorted({sha for sha, _ in photos})
    if not shas:
        return {}
    marks = ",".join("?" * len(shas))
    by_photo: dict[str, dict[str, set]] = {}
    for sha, label, user in await db.all(
            f"SELECT sha256, corrected_label, user_id FROM corrections WHERE sha256 IN ({marks}) AND status != ?"
            " AND user_id IS NOT NULL", (*shas, Status.REJECTED.value)):
        by_photo.setdefault(sha, {}).setdefault(label, set()).add(user)
    out = {}
    for sha, label in photos:
        labels = by_photo.get(sha, {})
        same = labels.get(label, set())
        others = set().union(*(users for other, users in labels.items() if other != label)) if labels else set()
        out[(sha, label)] = (len(same), len(others - same))
    return out


async def users_of(svc, ids: set[int]) -> dict[int, dict]:
    """Each user's name and record, as the grid and the users tab show them."""
    if not ids:
        return {}
    standings = await svc.ledger.standings(ids)
    marks = ",".join("?" * len(ids))
    rows = {r["user_id"]: r for r in await svc.store.db.all(
        f"SELECT user_id, name, first_seen FROM users WHERE user_id IN ({marks})", sorted(ids))}
    pending = {r[0]: r[1] for r in await svc.store.db.all(
        f"SELECT user_id, COUNT(*) FROM corrections WHERE status=? AND user_id IN ({marks}) GROUP BY user_id",
        (Status.PENDING.value, *sorted(ids)))}
    out = {}
    for uid in ids:
        standing, row = standings[uid], rows.get(uid)
        out[uid] = {"id": uid, "name": (row["name"] if row else None) or "", "accepted": standing.accepted,
                    "rejected": standing.rejected, "pending": pending.get(uid, 0), "trusted": standing.trusted,
                    "blocked": standing.blocked, "first_seen": row["first_seen"] if row else None}
    return out


def _int(raw: str | None, default: int, low: int, high: int) -> int:
    if raw is None or raw == "":
        return default
    if not raw.isdigit():
        raise Refused(400, "desk_bad_request", f"{raw[:20]!r} is not a number")
    return max(low, min(high, int(raw)))


# ---------------------------------------------------------------------------------------------
# photos

def thumbnail(source: Path, target: Path) -> None:
    """A JPEG of at most THUMB_PX on its longer side, written once (atomic)."""
    from PIL import Image

    from models.atomic import atomic_write
    from models.datafiles import jpeg_bytes

    with Image.open(source) as img:
        img.draft("RGB", (THUMB_PX, THUMB_PX))
        img = img.convert("RGB")
        img.thumbnail((THUMB_PX, THUMB_PX))
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, jpeg_bytes(img, quality=82))


# ---------------------------------------------------------------------------------------------
# the routes

def desk_routes(app: Application, settings: Settings, metrics=None) -> list[Route]:
    """The desk's routes for bot/web.py; none when the desk is off."""
    if not settings.desk:
        return []
    auth = DeskAuth(settings.token.get_secret_value(), settings.admin_ids, settings.desk_session_hours * 3600)
    app.bot_data["desk"] = auth
    secure = settings.desk_mini_app
    making: dict[str, asyncio.Lock] = {}  # one thumbnail made at a time per photo

    def svc():
        return app.bot_data["services"]

    def refusal(err: Refused, lang: str = "en") -> Response:
        level = logging.WARNING if err.status in (401, 403) else logging.INFO
        log.log(level, "desk: %s (%d)", err.why, err.status)
        return JSONResponse({"error": say(err.text, lang)}, status_code=err.status,
                            headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})

    def answer(body: Any, status: int = 200) -> Response:
        return JSONResponse(body, status_code=status, headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})

    def api(write: bool = False):
        """A JSON endpoint for a signed-in admin; writes also need the CSRF token."""
        def wrap(handler):
            async def endpoint(request: Request) -> Response:
                session = None
                try:
                    session = auth.session_of(request)
                    if write:
                        auth.check_csrf(request, session)
                        body = await _json_body(request)
                    else:
                        body = None
                    return await handler(request, session, body)
                except Refused as err:
                    return refusal(err, session.lang if session else "en")
                except KimchiError as err:
                    log.warning("desk: %s", err)
                    return answer({"error": str(err)}, 409)
            return endpoint
        return wrap

    async def page(request: Request) -> Response:
        path = STATIC / "desk.html"
        if not path.is_file():
            return Response("the desk's page is missing from this installation\n", status_code=404)
        return FileResponse(path, media_type="text/html; charset=utf-8",
                            headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})

    # the page's own files, listed once: a request names one of them or gets 404 (never a path)
    files = {p.name: p for p in STATIC.iterdir() if p.is_file()} if STATIC.is_dir() else {}

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in files or name == "desk.html":
            return Response(status_code=404)
        kind = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".svg": "image/svg+xml", ".png": "image/png"}.get(files[name].suffix, "application/octet-stream")
        return FileResponse(files[name], media_type=kind, headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})

    async def login(request: Request) -> Response:
        try:
            link = auth.redeem(request.path_params["token"])
        except Refused as err:
            log.warning("desk: %s (403)", err.why)
            return Response(say(err.text, "ko") + "\n" + say(err.text, "en") + "\n", status_code=403,
                            media_type="text/plain; charset=utf-8", headers=SECURITY_HEADERS)
        session = auth.open_session(link.admin_id, "", link.lang)
        response = RedirectResponse(f"{PREFIX}/", status_code=303, headers=SECURITY_HEADERS)
        response.set_cookie(COOKIE, session.token, max_age=int(settings.desk_session_hours * 3600), path=PREFIX,
                            httponly=True, samesite="strict", secure=secure or request.url.scheme == "https")
        log.info("desk: admin %d signed in with a login link", link.admin_id)
        return response

    async def open_session(request: Request) -> Response:
        try:
            body = await _json_body(request)
            init_data = body.get("init_data") if isinstance(body, dict) else None
            if init_data:
                admin_id, name, lang = auth.check_init_data(str(init_data))
                session = auth.open_session(admin_id, name, lang)
                log.info("desk: admin %d signed in from the Mini App", admin_id)
            else:
                session = auth.session_of(request)  # the cookie a login link set
        except Refused as err:
            return refusal(err)
        from bot.desk_texts import desk_texts  # the page's own strings

        names = await users_of(svc(), {session.admin_id})
        return answer({"token": session.token, "csrf": session.csrf, "lang": session.lang,
                       "admin": {"id": session.admin_id, "name": session.name or names[session.admin_id]["name"]},
                       "texts": desk_texts(session.lang), "labels": label_entries(session.lang),
                       "sources": list(SOURCES), "flags": list(FLAGS)})

    @api()
    async def pending(request: Request, session: Session, body) -> Response:
        started = time.perf_counter()
        result = await pending_page(svc(), dict(request.query_params))
        response = answer(result)
        response.headers["Server-Timing"] = f"app;dur={1000 * (time.perf_counter() - started):.1f}"
        return response

    @api(write=True)
    async def decide(request: Request, session: Session, body) -> Response:
        ids, action = body.get("ids"), body.get("action")
        if (not isinstance(ids, list) or not ids or len(ids) > 500
                or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)):
            raise Refused(400, "desk_bad_request", "decide needs 1 to 500 label ids")
        if action not in ("accept", "reject", "relabel", "block"):
            raise Refused(400, "desk_bad_request", f"unknown action {str(action)[:20]!r}")
        seen = body.get("seen")  # the labels the admin saw: a row a user has relabelled since is left alone
        if seen is not None and (not isinstance(seen, list) or len(seen) != len(ids)
                                 or not all(isinstance(x, str) and len(x) <= 64 for x in seen)):
            raise Refused(400, "desk_bad_request", "seen must give one label per id")
        ledger = svc().ledger
        blocked_users = rejected_by_block = 0
        if action == "block":
            authors = await ledger.authors_of(ids)
            for author in sorted(authors):
                rejected_by_block += await ledger.set_user(author, blocked=True)
            blocked_users, decided, skipped = len(authors), rejected_by_block, 0
        else:
            label = None
            if action == "relabel":
                found = by_name(str(body.get("label") or ""))
                if found is None:
                    raise Refused(400, "desk_bad_request", "relabel needs a label")
                label = found.name
            status = Status.REJECTED if action == "reject" else Status.ACCEPTED
            decided = await ledger.decide_many(ids, status, session.admin_id, label=label,
                                               seen=dict(zip(ids, seen)) if seen is not None else None)
            skipped = len(set(ids)) - decided
        left = (await ledger.counts())[Status.PENDING.value]
        log.info("desk: admin %d %s %d labels (%d skipped)", session.admin_id, action, decided, skipped)
        return answer({"decided": decided, "skipped": skipped, "blocked_users": blocked_users,
                       "rejected_by_block": rejected_by_block, "pending_left": left})

    @api()
    async def photo(request: Request, session: Session, body) -> Response:
        sha = request.path_params["sha"]
        if not _SHA.fullmatch(sha):
            raise Refused(404, "desk_not_found", "not a photo id")
        source = await photo_path(svc(), settings, sha)
        if source is None:
            raise Refused(404, "desk_not_found", f"no photo {sha[:12]}")
        if request.query_params.get("size") == "full":
            target = source
        else:
            target = svc().store.photos.thumbnail(sha)
            if not target.is_file():
                lock = making.setdefault(sha, asyncio.Lock())
                try:
                    async with lock:
                        if not target.is_file():
                            await asyncio.to_thread(thumbnail, source, target)
                finally:
                    if not lock.locked():
                        making.pop(sha, None)
        etag = f'"{sha[:32]}-{"f" if target == source else "t"}"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        return FileResponse(target, media_type="image/jpeg",
                            headers={**SECURITY_HEADERS, "Cache-Control": "private, max-age=86400", "ETag": etag})

    @api()
    async def dataset(request: Request, session: Session, body) -> Response:
        return answer(await dataset_summary(svc(), settings))

    @api()
    async def models(request: Request, session: Session, body) -> Response:
        return answer(await models_summary(svc()))

    @api()
    async def picture(request: Request, session: Session, body) -> Response:
        version, name = request.path_params["version"], request.path_params["name"]
        registry = svc().registry
        if name not in REPORT_PICTURES or version not in registry.versions():
            raise Refused(404, "desk_not_found", f"no picture {name[:40]!r} of {version[:16]!r}")
        path = registry.path(version) / "report" / name
        if not path.is_file():
            raise Refused(404, "desk_not_found", f"{version} has no {name}")
        return FileResponse(path, media_type="image/png", headers={**SECURITY_HEADERS, "Cache-Control": "private"})

    @api(write=True)
    async def promote(request: Request, session: Session, body) -> Response:
        version = str(body.get("version") or "")[:16]
        serving = svc().serving
        previous = await serving.promote(version, reason="desk", by=str(session.admin_id))
        return answer({"current": serving.version, "previous": previous})

    @api(write=True)
    async def rollback(request: Request, session: Session, body) -> Response:
        version, before = await svc().serving.rollback(by=str(session.admin_id))
        return answer({"current": version, "previous": before})

    @api(write=True)
    async def retrain(request: Request, session: Session, body) -> Response:
        from bot.admin import refusal_text
        from bot.supervisor import RetrainRefused

        supervisor = svc().retrain
        try:
            run = await supervisor.prepare(session.admin_id, session.admin_id, session.lang)
        except RetrainRefused as refused:  # the sentence /retrain gives, with its numbers
            log.info("desk: retrain refused: %s", refused.code.value)
            return answer({"error": refusal_text(refused, supervisor.run, session.lang)}, 409)
        supervisor.start(run)
        log.info("desk: admin %d started retrain %d", session.admin_id, run.id)
        return answer({"id": run.id})

    @api()
    async def users(request: Request, session: Session, body) -> Response:
        args = request.query_params
        offset, limit = _int(args.get("offset"), 0, 0, 10**9), _int(args.get("limit"), 100, 1, 500)
        ids = [r[0] for r in await svc().store.db.all(
            "SELECT user_id FROM corrections WHERE user_id IS NOT NULL GROUP BY user_id"
            " ORDER BY MAX(created_at) DESC LIMIT ? OFFSET ?", (limit, offset))]
        found = await users_of(svc(), set(ids))
        return answer({"users": [found[i] for i in ids]})

    @api(write=True)
    async def user(request: Request, session: Session, body) -> Response:
        raw = request.path_params["user_id"]
        if not raw.isdigit() or len(raw) > 15:
            raise Refused(400, "desk_bad_request", "not a user id")
        change = {"trust": {"trusted": True}, "untrust": {"trusted": False}, "block": {"blocked": True},
                  "unblock": {"blocked": False}}.get(body.get("action"))
        if change is None:
            raise Refused(400, "desk_bad_request", "unknown user action")
        rejected = await svc().ledger.set_user(int(raw), **change)
        log.info("desk: admin %d: %s user %s", session.admin_id, body.get("action"), raw)
        return answer({"ok": True, "rejected": rejected})

    async def bare(request: Request) -> Response:
        return RedirectResponse(f"{PREFIX}/", status_code=308)

    return [
        Route(PREFIX, bare, methods=["GET"]),
        Route(f"{PREFIX}/", page, methods=["GET"]),
        Route(f"{PREFIX}/static/{{name}}", static, methods=["GET"]),
        Route(f"{PREFIX}/login/{{token}}", login, methods=["GET"]),
        Route(f"{PREFIX}/api/session", open_session, methods=["POST"]),
        Route(f"{PREFIX}/api/pending", pending, methods=["GET"]),
        Route(f"{PREFIX}/api/decide", decide, methods=["POST"]),
        Route(f"{PREFIX}/api/photo/{{sha}}", photo, methods=["GET"]),
        Route(f"{PREFIX}/api/dataset", dataset, methods=["GET"]),
        Route(f"{PREFIX}/api/models", models, methods=["GET"]),
        Route(f"{PREFIX}/api/models/{{version}}/pictures/{{name}}", picture, methods=["GET"]),
        Route(f"{PREFIX}/api/promote", promote, methods=["POST"]),
        Route(f"{PREFIX}/api/rollback", rollback, methods=["POST"]),
        Route(f"{PREFIX}/api/retrain", retrain, methods=["POST"]),
        Route(f"{PREFIX}/api/users", users, methods=["GET"]),
        Route(f"{PREFIX}/api/users/{{user_id}}", user, methods=["POST"]),
    ]


async def _json_body(request: Request) -> dict:
    length = request.headers.get("content-length")
    if length and (not length.isdigit() or int(length) > MAX_BODY):
        raise Refused(400, "desk_bad_request", "body too large")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise Refused(400, "desk_bad_request", "body too large")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise Refused(400, "desk_bad_request", "body is not JSON") from None
    if not isinstance(body, dict):
        raise Refused(400, "desk_bad_request", "body is not a JSON object")
    return body


async def photo_path(svc, settings: Settings, sha: str) -> Path | None:
    """The stored file of the photo with this sha256: a user's label's, else a base image's."""
    row = await svc.store.db.one("SELECT path FROM corrections WHERE sha256=? ORDER BY id DESC LIMIT 1", (sha,))
    if row is not None:
        return await asyncio.to_thread(_inside, Path(row[0]), settings.home.corrections)
    return await asyncio.to_thread(_base_image, settings.home.base, sha)


def _inside(path: Path, root: Path) -> Path | None:
    """`path`, resolved, when it is a file under `root`; else None."""
    resolved = path.resolve()
    return resolved if resolved.is_file() and resolved.is_relative_to(root.resolve()) else None


def _base_image(base: Path, sha: str) -> Path | None:
    """The base image named by `sha` (imported as <class>/<sha256>.jpg), or None."""
    folders = [folder for folder in base.iterdir() if folder.is_dir()] if base.is_dir() else []
    return next((found for folder in folders if (found := _inside(folder / f"{sha}.jpg", base))), None)


async def dataset_summary(svc, settings: Settings) -> dict:
    """Per label: base images, users' labels by status, holdout; suspects; the last audit's near-duplicate groups."""
    db = svc.store.db
    base_rows = await asyncio.to_thread(read_manifest, settings.home.base)
    base_label = {r["sha256"]: r["class"] for r in base_rows if r.get("sha256") and r.get("class")}
    per: dict[str, dict[str, int]] = {}

    def bump(label: str, key: str, n: int = 1) -> None:
        per.setdefault(label, {"base": 0, "accepted": 0, "pending": 0, "rejected": 0, "holdout": 0})[key] += n

    for label in base_label.values():
        bump(label, "base")
    for label, status, n in await db.all(
            "SELECT corrected_label, status, COUNT(*) FROM corrections GROUP BY corrected_label, status"):
        if status in ("accepted", "pending", "rejected"):
            bump(label, status, n)
    accepted = {r[0]: r[1] for r in await db.all(
        "SELECT sha256, corrected_label FROM corrections WHERE status=?", (Status.ACCEPTED.value,))}
    for (sha,) in await db.all("SELECT sha256 FROM splits WHERE split='holdout'"):
        label = accepted.get(sha) or base_label.get(sha)
        if label:
            bump(label, "holdout")
    order = {c.name: c.id for c in LABELS}
    classes = [{"label": label, **counts} for label, counts in sorted(per.items(), key=lambda kv: order.get(kv[0], 99))]
    (suspects,) = await db.one("SELECT COUNT(*) FROM corrections WHERE status=? AND audit_flag IS NOT NULL",
                               (Status.PENDING.value,))
    groups = []
    from bot.supervisor import AUDIT_JSON

    runs = sorted(settings.home.runs.glob(f"run-*/{AUDIT_JSON}")) if settings.home.runs.is_dir() else []
    if runs:
        try:
            audit = json.loads(runs[-1].read_text(encoding="utf-8"))
            labels = {**base_label, **accepted}
            for group in audit.get("groups", [])[:30]:
                if len(group) > 1:
                    groups.append({"photos": list(group)[:12], "labels": [labels.get(s, "") for s in list(group)[:12]]})
        except (OSError, ValueError):
            log.warning("desk: %s cannot be read", runs[-1], exc_info=True)
    return {"classes": classes, "suspects": suspects, "duplicate_groups": groups}


async def models_summary(svc) -> dict:
    registry = svc.registry
    current = svc.serving.version
    versions = []
    for info in reversed(registry.list()):
        meta = info.meta
        report = info.path / "report"
        versions.append({"name": info.name, "current": info.name == current, "problem": info.problem,
                         "arch": meta.arch if meta else None, "created_at": meta.created_at if meta else None,
                         "metrics": {k: (meta.metrics or {}).get(k) for k in ("accuracy", "f1_macro", "openset")}
                         if meta else {},
                         "pictures": [n for n in REPORT_PICTURES if (report / n).is_file()]})
    run = svc.retrain.run
    last = await svc.store.runs(limit=1)
    stage = None
    if run is not None:
        stage = f"{run.epoch.epoch}/{run.epoch.total}" if run.epoch is not None else "preparing"
    return {"current": current, "versions": versions,
            "retrain": {"running": run is not None, "id": run.id if run else None, "stage": stage,
                        "last": ({k: last[0].get(k) for k in ("id", "status", "candidate", "decision")}
                                 if last else None)}}


# ---------------------------------------------------------------------------------------------
# in Telegram: /desk, the web_app button and the admins' menu button

def desk_link(settings: Settings, auth: DeskAuth, admin_id: int, lang: str) -> str:
    """A new one-time login link for `admin_id`."""
    return f"{settings.desk_url}login/{auth.issue_link(admin_id, lang)}"


def open_button(settings: Settings, lang: str):
    """The button that opens the desk as a Mini App (HTTPS only), or None."""
    from telegram import InlineKeyboardButton, WebAppInfo

    if not settings.desk_mini_app:
        return None
    return InlineKeyboardButton(say("desk_open", lang), web_app=WebAppInfo(url=settings.desk_url))


async def desk_command(update, context) -> None:
    """`/desk`: a one-time login link for a browser (10 minutes, once), and the Mini App button over HTTPS;
    in the admin's private chat only, as the link signs in whoever opens it."""
    from telegram import InlineKeyboardMarkup

    from bot.services import lang_of, sender_id, services

    svc, lang, message = services(context), lang_of(update), update.effective_message
    admin = sender_id(update)
    if not svc.settings.is_admin(admin):
        await message.reply_text(say("admin_only", lang))
        return
    if not svc.settings.desk:
        await message.reply_text(say("desk_off", lang))
        return
    if update.effective_chat is None or update.effective_chat.type != "private":
        await message.reply_text(say("desk_private_only", lang), do_quote=True)
        return
    auth: DeskAuth = context.application.bot_data["desk"]
    link = desk_link(svc.settings, auth, admin, lang)
    button = open_button(svc.settings, lang)
    await message.reply_text(say("desk_link", lang, link=link, minutes=LOGIN_TTL_S // 60),
                             reply_markup=InlineKeyboardMarkup([[button]]) if button else None,
                             disable_web_page_preview=True)
    log.info("desk: login link sent to admin %d", admin)


async def set_menu_buttons(bot, settings: Settings) -> int:
    """Each admin's chat menu button opens the desk as a Mini App (HTTPS only); returns how many were set. An
    admin who never started the bot cannot get one (Telegram: chat not found), which is logged."""
    from telegram import MenuButtonWebApp, WebAppInfo
    from telegram.error import TelegramError

    if not settings.desk_mini_app:
        return 0
    done = 0
    for admin in sorted(settings.admin_ids):
        try:
            await bot.set_chat_menu_button(chat_id=admin, menu_button=MenuButtonWebApp(
                say("desk_menu", "ko"), WebAppInfo(url=settings.desk_url)))
            done += 1
        except TelegramError as err:
            log.warning("desk: no menu button for admin %d (%s); /desk still works", admin, err)
    return done


__all__ = ["DeskAuth", "Refused", "desk_routes", "sign_init_data", "NOT_KIMCHI"]
