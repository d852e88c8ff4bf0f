"""The bot's configuration: one Settings object, read once from the environment and a `.env` file.

Variables set in the environment win over the same names in `.env`. Every name, its default and its
meaning is listed in SETTINGS (and in the README).
"""
from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from bot.botapi import HTTP_CLIENTS
from models.errors import KimchiError
from models.home import Home
from models.types import CPU_RUNTIMES

TOKEN_PATTERN = re.compile(r"^\d{5,}:[A-Za-z0-9_-]{30,}$")
WEBHOOK_SECRET_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
CLOUD_DOWNLOAD_LIMIT_MB = 20  # getFile serves files up to 20 MB from the cloud Bot API
LOCAL_DOWNLOAD_LIMIT_MB = 2000  # a local Bot API server serves files up to 2000 MB
DEFAULT_LISTEN = ("127.0.0.1", 8080)
RESERVED_PATHS = ("/healthz", "/metrics")

# name: (default, meaning) — the README's table is this one.
SETTINGS: dict[str, tuple[str, str]] = {
    "TELEGRAM_BOT_TOKEN": ("", "the bot's token, from @BotFather (required)"),
    "TELEGRAM_API_BASE_URL": ("https://api.telegram.org/bot", "Bot API base URL (PTB base_url); set it for a local Bot API server"),
    "TELEGRAM_API_FILE_URL": ("https://api.telegram.org/file/bot", "Bot API file URL (PTB base_file_url)"),
    "KIMCHI_HOME": ("~/.kimchi", "the data folder: datasets, models, the SQLite file, logs"),
    "KIMCHI_ADMIN_IDS": ("", "comma-separated Telegram user ids allowed /stats, /model, /retrain, /promote, /rollback"),
    "KIMCHI_DEVICE": ("auto", "auto, cpu or cuda"),
    "KIMCHI_CPU_RUNTIME": ("auto", "what runs the model on the CPU: auto (ONNX Runtime when it can, else torch), onnx or torch"),
    "KIMCHI_CONFIDENCE_THRESHOLD": ("0.6", "below this top probability the reply shows the top 3 and says it is unsure"),
    "KIMCHI_RATE_LIMIT": ("10", "photos per user per minute; 0 turns the limit off"),
    "KIMCHI_ACTION_RATE_LIMIT": ("30", "commands, button taps and corrections per user per minute; 0 turns the limit off"),
    "KIMCHI_CORRECTION_POLICY": ("trusted", "open (every label used), trusted (admins, trusted users and agreement decide) or review (admins only)"),
    "KIMCHI_TRUSTED_IDS": ("", "comma-separated Telegram user ids whose labels are used at once"),
    "KIMCHI_TRUST_AFTER": ("20", "labels decided by an admin or by others' agreement (90% of them accepted; ✅ on the model's answer never counts) after which a user is trusted"),
    "KIMCHI_AGREE_MIN_DAYS": ("7", "days since the bot first saw a user before their label counts towards agreement"),
    "KIMCHI_AGREE_MIN_DECIDED": ("3", "labels of a user an admin accepted before their label counts towards agreement"),
    "KIMCHI_USER_QUOTA_MB": ("50", "disk a user's stored photos may take, in MB (admins: no limit); 0 turns it off"),
    "KIMCHI_ASK_MARGIN": ("0.15", "when the top two are closer than this, the answer asks 'A?' / 'B?' with one button each"),
    "KIMCHI_CORRECTIONS_PER_DAY": ("200", "corrections and confirmations per user per day (admins: no limit); 0 turns it off"),
    "KIMCHI_MAX_BATCH": ("32", "engine: largest micro-batch"),
    "KIMCHI_MAX_WAIT_MS": ("2", "engine: how long a decoded photo may wait for companions still being decoded"),
    "KIMCHI_QUEUE_LIMIT": ("64", "engine: photos waiting beyond which users are asked to retry"),
    "KIMCHI_MAX_PIXELS": ("40000000", "largest image accepted, in pixels of RGB: an image with alpha or 16-bit channels counts its extra bytes (12-MP phone photos pass); also in labelling mode"),
    "KIMCHI_CORRECTION_WINDOW_HOURS": ("24", "how far back /correct looks for the user's latest prediction"),
    "KIMCHI_TRAIN_ARGS": ("", "extra `kimchi-train train` arguments for /retrain, appended to the defaults"),
    "KIMCHI_RETRAIN_MIN_PER_CLASS": ("10", "/retrain leaves out a class with fewer training images than this"),
    "KIMCHI_PROMOTE_TOLERANCE": ("0", "a candidate is promoted if its macro-F1 >= the current one's minus this"),
    "KIMCHI_HOLDOUT_PCT": ("10", "share (percent) of images, by hash, frozen out of training to compare models"),
    "KIMCHI_PROMOTE_CLASS_DROP": ("0.10", "no promotion when a class with at least 5 holdout images loses more F1 than this"),
    "KIMCHI_RETRAIN_AUDIT": ("1", "1: /retrain audits the labels with the serving model first (kimchi-train audit); 0: skip"),
    "KIMCHI_RETRAIN_TIMEOUT_MIN": ("720", "a retrain's trainer still running after this many minutes is stopped"),
    "KIMCHI_LOG_LEVEL": ("INFO", "log level of the console and KIMCHI_HOME/logs/kimchi-bot.log"),
    "KIMCHI_WEBHOOK_URL": ("", "public URL Telegram posts updates to (webhook mode when set); its path is the webhook route"),
    "KIMCHI_WEBHOOK_SECRET": ("", "webhook mode: secret token Telegram sends back, 1-256 of A-Z a-z 0-9 _ - (required there)"),
    "KIMCHI_LISTEN": ("", "host:port of the bot's HTTP server (/healthz, /metrics, the webhook); webhook mode: 127.0.0.1:8080 when unset"),
    "KIMCHI_WEBHOOK_MAX_CONNECTIONS": ("40", "webhook mode: most simultaneous connections Telegram opens (1-100)"),
    "KIMCHI_DROP_PENDING_UPDATES": ("0", "1: drop updates that waited while the bot was down"),
    "KIMCHI_HTTP_CLIENT": ("aiohttp", "how the bot calls the Bot API: aiohttp (about 1.5 ms less per call than httpx on 2 cores) or httpx (PTB's own)"),
    "TELEGRAM_LOCAL_MODE": ("0", "1: the Bot API server is a local one started with --local (files by local path)"),
    "KIMCHI_MAX_DOWNLOAD_MB": ("20", "largest photo or image file downloaded, in MB; above 20 only with TELEGRAM_LOCAL_MODE=1 (up to 2000)"),
    "KIMCHI_TRAIN_GPUS": ("1", "GPUs /retrain trains on (kimchi-train train --gpus N, under accelerate launch)"),
}


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; `#` comments, `export ` prefixes and shell-style quotes allowed."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].strip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise KimchiError(f"{path}:{number} is not a KEY=VALUE line.")
        try:
            parts = shlex.split(value, comments=True)
        except ValueError as err:
            raise KimchiError(f"{path}:{number}: {err}.") from err
        values[key.strip()] = " ".join(parts)
    return values


@dataclass(frozen=True)
class Settings:
    token: str = field(repr=False)  # never in a repr, a log line or a traceback's locals
    base_url: str
    file_url: str
    home: Home
    admin_ids: frozenset[int]
    device: str
    cpu_runtime: str
    confidence_threshold: float
    rate_limit: int
    max_batch: int
    max_wait_ms: float
    queue_limit: int
    max_pixels: int
    correction_window_hours: float
    train_args: tuple[str, ...]
    retrain_min_per_class: int
    promote_tolerance: float
    holdout_pct: float
    log_level: str
    correction_policy: str = "trusted"
    trusted_ids: frozenset[int] = frozenset()
    trust_after: int = 20
    agree_min_days: float = 7.0
    agree_min_decided: int = 3
    user_quota_mb: float = 50.0
    ask_margin: float = 0.15
    action_rate_limit: int = 30
    corrections_per_day: int = 200
    promote_class_drop: float = 0.10
    retrain_timeout_min: float = 720.0
    retrain_audit: bool = True
    webhook_url: str = ""
    webhook_secret: str = ""
    listen: tuple[str, int] | None = None  # None: not set (polling serves no HTTP; webhook mode uses DEFAULT_LISTEN)
    webhook_max_connections: int = 40
    drop_pending_updates: bool = False
    local_mode: bool = False
    max_download_mb: int = CLOUD_DOWNLOAD_LIMIT_MB
    train_gpus: int = 1
    http_client: str = "aiohttp"

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, env_file: Path | None = Path(".env")) -> "Settings":
        """Settings from `environ` (default os.environ) over `env_file`; KimchiError names what is wrong."""
        values = {name: default for name, (default, _) in SETTINGS.items()}
        if env_file is not None:
            values.update(read_env_file(env_file))
        source = os.environ if environ is None else environ
        values.update({k: v for k, v in source.items() if k in SETTINGS})
        token = values["TELEGRAM_BOT_TOKEN"].strip()
        if not token:
            raise KimchiError("TELEGRAM_BOT_TOKEN is not set: open Telegram, talk to @BotFather, send /newbot, "
                              "and put the token it gives you in TELEGRAM_BOT_TOKEN (environment or .env).")
        if not TOKEN_PATTERN.match(token):
            raise KimchiError("TELEGRAM_BOT_TOKEN does not look like a bot token (digits, a colon, then 35 or so "
                              "letters, e.g. 123456789:AAE…); copy it again from @BotFather.")
        return cls(
            token=token,
            base_url=values["TELEGRAM_API_BASE_URL"].strip(),
            file_url=values["TELEGRAM_API_FILE_URL"].strip(),
            home=Home.from_env(values["KIMCHI_HOME"]),
            admin_ids=_ids(values["KIMCHI_ADMIN_IDS"]),
            device=_choice("KIMCHI_DEVICE", values["KIMCHI_DEVICE"], ("auto", "cpu", "cuda")),
            cpu_runtime=_choice("KIMCHI_CPU_RUNTIME", values["KIMCHI_CPU_RUNTIME"], CPU_RUNTIMES),
            http_client=_choice("KIMCHI_HTTP_CLIENT", values["KIMCHI_HTTP_CLIENT"], HTTP_CLIENTS),
            confidence_threshold=_number("KIMCHI_CONFIDENCE_THRESHOLD", values, float, 0, 1),
            rate_limit=_number("KIMCHI_RATE_LIMIT", values, int, 0, 10_000),
            max_batch=_number("KIMCHI_MAX_BATCH", values, int, 1, 4096),
            max_wait_ms=_number("KIMCHI_MAX_WAIT_MS", values, float, 0, 10_000),
            queue_limit=_number("KIMCHI_QUEUE_LIMIT", values, int, 1, 1_000_000),
            max_pixels=_number("KIMCHI_MAX_PIXELS", values, int, 1_000, 1_000_000_000),
            correction_window_hours=_number("KIMCHI_CORRECTION_WINDOW_HOURS", values, float, 0, 24 * 365),
            train_args=_train_args(values["KIMCHI_TRAIN_ARGS"]),
            retrain_min_per_class=_number("KIMCHI_RETRAIN_MIN_PER_CLASS", values, int, 1, 1_000_000),
            promote_tolerance=_number("KIMCHI_PROMOTE_TOLERANCE", values, float, 0, 1),
            holdout_pct=_number("KIMCHI_HOLDOUT_PCT", values, float, 1, 50),
            log_level=_choice("KIMCHI_LOG_LEVEL", values["KIMCHI_LOG_LEVEL"].upper(),
                              ("DEBUG", "INFO", "WARNING", "ERROR")),
            correction_policy=_choice("KIMCHI_CORRECTION_POLICY", values["KIMCHI_CORRECTION_POLICY"].lower(),
                                      ("open", "trusted", "review")),
            trusted_ids=_ids(values["KIMCHI_TRUSTED_IDS"], "KIMCHI_TRUSTED_IDS"),
            trust_after=_number("KIMCHI_TRUST_AFTER", values, int, 1, 1_000_000),
            agree_min_days=_number("KIMCHI_AGREE_MIN_DAYS", values, float, 0, 3650),
            agree_min_decided=_number("KIMCHI_AGREE_MIN_DECIDED", values, int, 0, 1_000_000),
            user_quota_mb=_number("KIMCHI_USER_QUOTA_MB", values, float, 0, 1_000_000),
            ask_margin=_number("KIMCHI_ASK_MARGIN", values, float, 0, 1),
            action_rate_limit=_number("KIMCHI_ACTION_RATE_LIMIT", values, int, 0, 10_000),
            corrections_per_day=_number("KIMCHI_CORRECTIONS_PER_DAY", values, int, 0, 1_000_000),
            promote_class_drop=_number("KIMCHI_PROMOTE_CLASS_DROP", values, float, 0, 1),
            retrain_timeout_min=_number("KIMCHI_RETRAIN_TIMEOUT_MIN", values, float, 1, 60 * 24 * 7),
            retrain_audit=_flag("KIMCHI_RETRAIN_AUDIT", values["KIMCHI_RETRAIN_AUDIT"]),
            **_serving(values),
        )

    def is_admin(self, user_id: int | None) -> bool:
        return user_id is not None and user_id in self.admin_ids

    @property
    def webhook_mode(self) -> bool:
        return bool(self.webhook_url)

    @property
    def webhook_path(self) -> str:
        return urlsplit(self.webhook_url).path or "/"

    @property
    def listen_address(self) -> tuple[str, int] | None:
        """Where the bot's HTTP server listens: KIMCHI_LISTEN, or its default in webhook mode, else nowhere."""
        return self.listen or (DEFAULT_LISTEN if self.webhook_mode else None)

    @property
    def user_quota_bytes(self) -> int:
        return int(self.user_quota_mb * 1_000_000)

    @property
    def max_download_bytes(self) -> int:
        return self.max_download_mb * 1024 * 1024


def _ids(raw: str, name: str = "KIMCHI_ADMIN_IDS") -> frozenset[int]:
    ids = set()
    for part in raw.replace(" ", "").split(","):
        if not part:
            continue
        if not re.fullmatch(r"-?[0-9]+", part):
            raise KimchiError(f"{name} must be comma-separated numeric Telegram user ids; '{part}' is not one.")
        ids.add(int(part))
    return frozenset(ids)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    value = value.strip()
    if value not in allowed:
        raise KimchiError(f"{name} must be one of {', '.join(allowed)}, not '{value}'.")
    return value


def _number(name: str, values: Mapping[str, str], kind: type, low: float, high: float):
    raw = values[name].strip()
    try:
        number = kind(raw)
    except ValueError:
        raise KimchiError(f"{name} must be a {'whole ' if kind is int else ''}number, not '{raw}'.") from None
    if not low <= number <= high:
        raise KimchiError(f"{name} must lie between {low} and {high}, not {raw}.")
    return number


def _flag(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise KimchiError(f"{name} must be 1 or 0, not '{raw.strip()}'.")


def _listen(raw: str) -> tuple[str, int] | None:
    """`host:port`, `:port` (all interfaces) or `[::1]:port`; empty means not set."""
    raw = raw.strip()
    if not raw:
        return None
    host, sep, port = raw.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise KimchiError(f"KIMCHI_LISTEN must be host:port, e.g. 127.0.0.1:8080, not '{raw}'.")
    return host, int(port)


def _serving(values: Mapping[str, str]) -> dict:
    """The webhook, HTTP-server and Bot API server settings, checked together (they depend on each other)."""
    url = values["KIMCHI_WEBHOOK_URL"].strip()
    secret = values["KIMCHI_WEBHOOK_SECRET"].strip()
    if url:
        parts = urlsplit(url)
        # The scheme is not policed beyond http(s): Telegram wants HTTPS, a local Bot API server takes HTTP.
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise KimchiError(f"KIMCHI_WEBHOOK_URL must be a full http(s) URL such as https://bot.example.com/telegram, "
                              f"not '{url}'.")
        if (parts.path or "/") in RESERVED_PATHS:
            raise KimchiError(f"KIMCHI_WEBHOOK_URL's path cannot be {parts.path}: the bot serves its own page there.")
        if not WEBHOOK_SECRET_PATTERN.match(secret):
            raise KimchiError("KIMCHI_WEBHOOK_SECRET must be set in webhook mode: 1 to 256 characters of A-Z, a-z, 0-9, "
                              "_ and -, e.g. from `python -c 'import secrets; print(secrets.token_urlsafe(32))'`.")
    local_mode = _flag("TELEGRAM_LOCAL_MODE", values["TELEGRAM_LOCAL_MODE"])
    max_mb = _number("KIMCHI_MAX_DOWNLOAD_MB", values, int, 1, LOCAL_DOWNLOAD_LIMIT_MB)
    if max_mb > CLOUD_DOWNLOAD_LIMIT_MB and not local_mode:
        raise KimchiError(f"KIMCHI_MAX_DOWNLOAD_MB above {CLOUD_DOWNLOAD_LIMIT_MB} needs a local Bot API server "
                          f"(TELEGRAM_LOCAL_MODE=1): the cloud Bot API serves bots files up to 20 MB.")
    return dict(
        webhook_url=url,
        webhook_secret=secret,
        listen=_listen(values["KIMCHI_LISTEN"]),
        webhook_max_connections=_number("KIMCHI_WEBHOOK_MAX_CONNECTIONS", values, int, 1, 100),
        drop_pending_updates=_flag("KIMCHI_DROP_PENDING_UPDATES", values["KIMCHI_DROP_PENDING_UPDATES"]),
        local_mode=local_mode,
        max_download_mb=max_mb,
        train_gpus=_number("KIMCHI_TRAIN_GPUS", values, int, 1, 64),
    )


# What /retrain itself decides: the data folder, where versions go, how progress is read, the holdout.
RESERVED_TRAIN_FLAGS = ("--holdout", "--models-dir", "--progress", "--report-dir", "--cache", "--home")
SWITCH_TRAIN_FLAGS = ("--no-pretrained", "--no-normalize")  # the recipe flags that take no value


def _train_args(raw: str) -> tuple[str, ...]:
    """KIMCHI_TRAIN_ARGS: recipe flags only; one that would steer the retrain's own wiring is refused."""
    try:
        args = tuple(shlex.split(raw))
    except ValueError as err:
        raise KimchiError(f"KIMCHI_TRAIN_ARGS cannot be read ({err}).") from None
    expects_value = False
    for arg in args:
        if expects_value:
            expects_value = False
            continue
        if not arg.startswith("--"):
            raise KimchiError(f"KIMCHI_TRAIN_ARGS takes --flags and their values only, not '{arg}': /retrain chooses "
                              "the data folder itself.")
        name = arg.split("=", 1)[0]
        if any(flag.startswith(name) for flag in RESERVED_TRAIN_FLAGS):
            raise KimchiError(f"KIMCHI_TRAIN_ARGS may not set {name}: /retrain sets the holdout, the models folder, "
                              "the progress format and the data folder itself.")
        expects_value = "=" not in arg and name not in SWITCH_TRAIN_FLAGS
    return args
