"""The bot's configuration: one Settings object, read once from the environment and a `.env` file.

Each variable is declared once, as a field of `Settings`: its name (the alias), type, default (written as it
would be in `.env`, and checked like any value), bounds and meaning (the README's row for it, which
tests/test_docs.py checks). Variables set in the environment win over the same names in `.env`. A bad value
ends in one sentence that names the variable (a KimchiError), never in pydantic's report.
"""
from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Annotated, Callable, Mapping
from urllib.parse import urlsplit

from dotenv.parser import parse_stream
from pydantic import BeforeValidator, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.botapi import HTTP_CLIENTS
from models.errors import KimchiError
from models.home import Home
from models.recipe_flags import NotARecipeFlag, check_recipe_args
from models.types import CPU_RUNTIMES

TOKEN_PATTERN = re.compile(r"^\d{5,}:[A-Za-z0-9_-]{30,}$")
WEBHOOK_SECRET_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
CLOUD_DOWNLOAD_LIMIT_MB = 20  # getFile serves files up to 20 MB from the cloud Bot API
LOCAL_DOWNLOAD_LIMIT_MB = 2000  # a local Bot API server serves files up to 2000 MB
DEFAULT_LISTEN = ("127.0.0.1", 8080)
RESERVED_PATHS = ("/healthz", "/metrics")


# ---------------------------------------------------------------------------------------------
# What a value may be. Each check takes the text from the environment or `.env` and returns the value, which
# pydantic then checks against the field's type, or raises ValueError with the rest of a sentence that
# `Settings.load` starts with the variable's name.

def _token(raw: str) -> str:
    token = raw.strip()
    if not token:
        raise ValueError("is not set: open Telegram, talk to @BotFather, send /newbot, and put the token it gives "
                         "you in TELEGRAM_BOT_TOKEN (environment or .env).")
    if not TOKEN_PATTERN.match(token):
        raise ValueError("does not look like a bot token (digits, a colon, then 35 or so letters, e.g. "
                         "123456789:AAE…); copy it again from @BotFather.")
    return token


def _strip(raw: str) -> str:
    return raw.strip()


def _ids(raw: str) -> frozenset[int]:
    ids = set()
    for part in raw.replace(" ", "").split(","):
        if not part:
            continue
        if not re.fullmatch(r"-?[0-9]+", part):
            raise ValueError(f"must be comma-separated numeric Telegram user ids; '{part}' is not one.")
        ids.add(int(part))
    return frozenset(ids)


def _one_of(*allowed: str, fold: Callable[[str], str] = str) -> BeforeValidator:
    def check(raw: str) -> str:
        value = fold(raw.strip())
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, not '{value}'.")
        return value

    return BeforeValidator(check)


def _flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"must be 1 or 0, not '{raw.strip()}'.")


def _listen(raw: str) -> tuple[str, int] | None:
    """`host:port`, `:port` (all interfaces) or `[::1]:port`; empty means not set."""
    raw = raw.strip()
    if not raw:
        return None
    host, sep, port = raw.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"must be host:port, e.g. 127.0.0.1:8080, not '{raw}'.")
    return host, int(port)


def _webhook_url(raw: str) -> str:
    url = raw.strip()
    parts = urlsplit(url)
    # The scheme is not policed beyond http(s): Telegram wants HTTPS, a local Bot API server takes HTTP.
    if url and (parts.scheme not in ("http", "https") or not parts.hostname):
        raise ValueError(f"must be a full http(s) URL such as https://bot.example.com/telegram, not '{url}'.")
    return url


def _desk_url(raw: str) -> str:
    url = raw.strip()
    parts = urlsplit(url)
    # the path is the desk's own (its routes, login links and cookie live under /desk/): a proxy in front may
    # not move it
    if url and (parts.scheme not in ("http", "https") or not parts.hostname or parts.path != "/desk/"):
        raise ValueError(f"must be the desk's full URL with the path /desk/, such as https://bot.example.com/desk/, "
                         f"not '{url}'.")
    return url


def _train_args(raw: str) -> tuple[str, ...]:
    """Recipe flags only, read by the trainer's own parser: what /retrain would refuse is refused at start."""
    try:
        args = tuple(shlex.split(raw))
    except ValueError as err:
        raise ValueError(f"cannot be read ({err}).") from None
    try:
        check_recipe_args(args)
    except NotARecipeFlag as err:
        raise ValueError(f"takes the recipe's flags of `kimchi-train train` only, not '{err.arg}': /retrain sets "
                         "the data folder, the holdout, the models folder, the progress format and the GPUs "
                         "(KIMCHI_TRAIN_GPUS) itself.") from None
    except ValueError as err:
        raise ValueError(f"holds a value `kimchi-train train` refuses ({err}).") from None
    return args


Flag = Annotated[bool, BeforeValidator(_flag)]
UserIds = Annotated[frozenset[int], BeforeValidator(_ids)]


# ---------------------------------------------------------------------------------------------

class Settings(BaseSettings):
    """Every variable the bot reads, in the README's order. Build it with `Settings.load`."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=True, enable_decoding=False,
                                      str_strip_whitespace=True, hide_input_in_errors=True,
                                      env_file_encoding="utf-8")

    token: Annotated[SecretStr, BeforeValidator(_token)] = Field(
        "", alias="TELEGRAM_BOT_TOKEN", description="the bot's token, from @BotFather")
    base_url: str = Field(
        "https://api.telegram.org/bot", alias="TELEGRAM_API_BASE_URL",
        description="Bot API base URL (PTB `base_url`); set it for a local Bot API server")
    file_url: str = Field(
        "https://api.telegram.org/file/bot", alias="TELEGRAM_API_FILE_URL",
        description="Bot API file URL (PTB `base_file_url`)")
    home: Annotated[Home, BeforeValidator(Home.from_env)] = Field(
        "~/.kimchi", alias="KIMCHI_HOME", description="the data folder")
    admin_ids: UserIds = Field(
        "", alias="KIMCHI_ADMIN_IDS",
        description="comma-separated Telegram user ids allowed `/stats`, `/model`, `/retrain`, `/promote`, "
                    "`/rollback`")
    device: Annotated[str, _one_of("auto", "cpu", "cuda")] = Field(
        "auto", alias="KIMCHI_DEVICE", description="`auto`, `cpu` or `cuda`")
    cpu_runtime: Annotated[str, _one_of(*CPU_RUNTIMES)] = Field(
        "auto", alias="KIMCHI_CPU_RUNTIME",
        description="what runs the model on the CPU: `auto` (ONNX Runtime when it can, else torch), `onnx` "
                    "(required) or `torch`")
    confidence_threshold: float = Field(
        "0.6", alias="KIMCHI_CONFIDENCE_THRESHOLD", ge=0, le=1,
        description="below this, the reply also shows the top 3 and says it is unsure")
    rate_limit: int = Field(
        "10", alias="KIMCHI_RATE_LIMIT", ge=0, le=10_000,
        description="photos per user per minute (`0`: no limit)")
    action_rate_limit: int = Field(
        "30", alias="KIMCHI_ACTION_RATE_LIMIT", ge=0, le=10_000,
        description="commands, button taps and corrections per user per minute (`0`: no limit); admins are "
                    "exempt")
    corrections_per_day: int = Field(
        "200", alias="KIMCHI_CORRECTIONS_PER_DAY", ge=0, le=1_000_000,
        description="labels per user per 24 hours (`0`: no limit); admins are exempt")
    correction_policy: Annotated[str, _one_of("open", "trusted", "review", fold=str.lower)] = Field(
        "trusted", alias="KIMCHI_CORRECTION_POLICY",
        description="`open` (every label is used), `trusted` (admins, trusted users and two agreeing users "
                    "decide; the rest waits for `/review`) or `review` (admins only)")
    trusted_ids: UserIds = Field(
        "", alias="KIMCHI_TRUSTED_IDS",
        description="comma-separated Telegram user ids whose labels are used at once")
    trust_after: int = Field(
        "20", alias="KIMCHI_TRUST_AFTER", ge=1, le=1_000_000,
        description="labels decided by an admin or by others' agreement (90% of them accepted; ✅ on the model's "
                    "answer never counts) after which a user is trusted")
    agree_min_days: float = Field(
        "7", alias="KIMCHI_AGREE_MIN_DAYS", ge=0, le=3650,
        description="days since the bot first saw a user before their label counts towards agreement")
    agree_min_decided: int = Field(
        "3", alias="KIMCHI_AGREE_MIN_DECIDED", ge=0, le=1_000_000,
        description="labels of a user an admin accepted before their label counts towards agreement")
    user_quota_mb: float = Field(
        "50", alias="KIMCHI_USER_QUOTA_MB", ge=0, le=1_000_000,
        description="disk a user's stored photos may take, in MB (admins: no limit); 0 turns it off")
    retention_days: float = Field(
        "90", alias="KIMCHI_RETENTION_DAYS", ge=1, le=36500,
        description="days an answered photo's row, and a rejected label with its photo, are kept (a daily job purges)")
    pending_expire_days: float = Field(
        "60", alias="KIMCHI_PENDING_EXPIRE_DAYS", ge=1, le=36500,
        description="days a label no admin decided waits before it is deleted with its photo")
    privacy_contact: Annotated[str, BeforeValidator(_strip)] = Field(
        "", alias="KIMCHI_PRIVACY_CONTACT", description="who to ask about people's data, quoted by /privacy")
    privacy_url: Annotated[str, BeforeValidator(_strip)] = Field(
        "", alias="KIMCHI_PRIVACY_URL", description="a link to the operator's privacy notice, quoted by /privacy")
    ask_margin: float = Field(
        "0.15", alias="KIMCHI_ASK_MARGIN", ge=0, le=1,
        description='when the top two probabilities are closer than this, the answer asks "깍두기?" / "총각김치?" '
                    "with one button each")
    max_batch: int = Field(
        "32", alias="KIMCHI_MAX_BATCH", ge=1, le=4096, description="engine: largest micro-batch")
    max_wait_ms: float = Field(
        "2", alias="KIMCHI_MAX_WAIT_MS", ge=0, le=10_000,
        description="engine: how long a decoded photo may wait for companions still being decoded")
    queue_limit: int = Field(
        "64", alias="KIMCHI_QUEUE_LIMIT", ge=1, le=1_000_000,
        description="engine: photos waiting beyond which users are asked to retry")
    max_pixels: int = Field(
        "40000000", alias="KIMCHI_MAX_PIXELS", ge=1_000, le=1_000_000_000,
        description="largest image accepted, in pixels of RGB: an image with alpha or 16-bit channels counts its "
                    "extra bytes (12-MP phone photos pass); also in labelling mode")
    correction_window_hours: float = Field(
        "24", alias="KIMCHI_CORRECTION_WINDOW_HOURS", ge=0, le=24 * 365,
        description="how far back `/correct` looks for the user's latest photo")
    train_args: Annotated[tuple[str, ...], BeforeValidator(_train_args)] = Field(
        "", alias="KIMCHI_TRAIN_ARGS",
        description="extra `kimchi-train train` recipe flags for `/retrain`, appended to the defaults, e.g. "
                    "`--preset cpu-fast` or `--arch efficientnet_lite0 --epochs 3`; read at start by the trainer's "
                    "own parser, so a flag outside the recipe or a value of the wrong type stops the bot there (values the recipe's own checks refuse, e.g. an unknown `--arch`, are refused at `/retrain`)")
    retrain_min_per_class: int = Field(
        "10", alias="KIMCHI_RETRAIN_MIN_PER_CLASS", ge=1, le=1_000_000,
        description="`/retrain` leaves out a class with fewer training images (and says so); it refuses only "
                    "when fewer than two classes remain")
    promote_tolerance: float = Field(
        "0", alias="KIMCHI_PROMOTE_TOLERANCE", ge=0, le=1,
        description="promote when the candidate's macro-F1 ≥ the current one's minus this (holdouts of 50 images "
                    "or more; a smaller one is compared image by image)")
    holdout_pct: float = Field(
        "10", alias="KIMCHI_HOLDOUT_PCT", ge=1, le=50,
        description="share of images (by a keyed hash, decided once per image) frozen out of training to compare "
                    "models")
    promote_class_drop: float = Field(
        "0.10", alias="KIMCHI_PROMOTE_CLASS_DROP", ge=0, le=1,
        description="no promotion when any class with at least 5 holdout images loses more F1 than this, even if "
                    "macro-F1 rose, or when the share of holdout kimchi answered as kimchi (not \"not kimchi\") "
                    "falls by more than this")
    retrain_audit: Flag = Field(
        "1", alias="KIMCHI_RETRAIN_AUDIT",
        description="`1`: `/retrain` first audits the labels with the serving model (`kimchi-train audit`); a "
                    "user's label it flags goes back to `/review` and sits the run out. `0`: skip")
    retrain_timeout_min: float = Field(
        "720", alias="KIMCHI_RETRAIN_TIMEOUT_MIN", ge=1, le=60 * 24 * 7,
        description="a retrain's trainer still running after this many minutes is stopped (the current model "
                    "keeps serving)")
    log_level: Annotated[str, _one_of("DEBUG", "INFO", "WARNING", "ERROR", fold=str.upper)] = Field(
        "INFO", alias="KIMCHI_LOG_LEVEL", description="console and `KIMCHI_HOME/logs/kimchi-bot.log`")
    webhook_url: Annotated[str, BeforeValidator(_webhook_url)] = Field(
        "", alias="KIMCHI_WEBHOOK_URL",
        description="webhook mode when set: the public URL Telegram posts to, e.g. "
                    "`https://bot.example.com/telegram`; its path is the bot's webhook route (see Deploy)")
    webhook_secret: Annotated[SecretStr, BeforeValidator(_strip)] = Field(
        "", alias="KIMCHI_WEBHOOK_SECRET",
        description="required in webhook mode: 1–256 characters of `A-Z a-z 0-9 _ -`; requests without it get 403")
    listen: Annotated[tuple[str, int] | None, BeforeValidator(_listen)] = Field(
        "", alias="KIMCHI_LISTEN",  # None: not set (polling serves no HTTP; webhook mode uses DEFAULT_LISTEN)
        description="`host:port` of the bot's HTTP server (`/healthz`, `/metrics`, the webhook); in webhook mode "
                    "`127.0.0.1:8080` when unset, in polling mode no server unless set")
    webhook_max_connections: int = Field(
        "40", alias="KIMCHI_WEBHOOK_MAX_CONNECTIONS", ge=1, le=100,
        description="webhook mode: most simultaneous connections Telegram opens (1–100)")
    drop_pending_updates: Flag = Field(
        "0", alias="KIMCHI_DROP_PENDING_UPDATES",
        description="`1`: drop the updates that queued up while the bot was down")
    http_client: Annotated[str, _one_of(*HTTP_CLIENTS)] = Field(
        "aiohttp", alias="KIMCHI_HTTP_CLIENT",
        description="how the bot calls the Bot API: `aiohttp` (about 1.5 ms less per call than httpx on 2 cores, "
                    "see Speed) or `httpx` (PTB's own client); both honour `HTTPS_PROXY`")
    local_mode: Flag = Field(
        "0", alias="TELEGRAM_LOCAL_MODE",
        description="`1`: the Bot API server is a local `telegram-bot-api --local`; files are read from the path "
                    "it gives")
    max_download_mb: int = Field(
        str(CLOUD_DOWNLOAD_LIMIT_MB), alias="KIMCHI_MAX_DOWNLOAD_MB", ge=1, le=LOCAL_DOWNLOAD_LIMIT_MB,
        description="largest photo or image file the bot downloads; above 20 only with `TELEGRAM_LOCAL_MODE=1` "
                    "(up to 2000)")
    train_gpus: int = Field(
        "1", alias="KIMCHI_TRAIN_GPUS", ge=1, le=64,
        description="GPUs `/retrain` trains on (`kimchi-train train --gpus N`)")
    desk_url: Annotated[str, BeforeValidator(_desk_url)] = Field(
        "", alias="KIMCHI_DESK_URL",
        description="turns the review desk on: the URL admins open it at, ending in `/desk/`; `https://…` (e.g. "
                    "the webhook's host behind the same proxy) also opens it as a Telegram Mini App, "
                    "`http://127.0.0.1:8080/desk/` gives browser links only (over an SSH tunnel)")
    desk_session_hours: float = Field(
        "8", alias="KIMCHI_DESK_SESSION_HOURS", ge=0.1, le=168,
        description="how long a desk sign-in lasts; a one-time login link from `/desk` expires after 10 minutes")

    @model_validator(mode="after")
    def _together(self) -> "Settings":
        """The webhook's and the Bot API server's variables, which depend on each other."""
        if self.webhook_url:
            if self.webhook_path in RESERVED_PATHS or self.webhook_path.startswith("/desk"):
                raise ValueError(f"KIMCHI_WEBHOOK_URL's path cannot be {self.webhook_path}: the bot serves its own "
                                 "page there.")
            if not WEBHOOK_SECRET_PATTERN.match(self.webhook_secret.get_secret_value()):
                raise ValueError("KIMCHI_WEBHOOK_SECRET must be set in webhook mode: 1 to 256 characters of A-Z, "
                                 "a-z, 0-9, _ and -, e.g. from `python -c 'import secrets; "
                                 "print(secrets.token_urlsafe(32))'`.")
        if self.max_download_mb > CLOUD_DOWNLOAD_LIMIT_MB and not self.local_mode:
            raise ValueError(f"KIMCHI_MAX_DOWNLOAD_MB above {CLOUD_DOWNLOAD_LIMIT_MB} needs a local Bot API server "
                             f"(TELEGRAM_LOCAL_MODE=1): the cloud Bot API serves bots files up to 20 MB.")
        return self

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return init_settings, dotenv_settings  # `load` hands the environment in as init values: they win

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, env_file: Path | None = Path(".env")) -> "Settings":
        """Settings from `environ` (default os.environ) over `env_file`; KimchiError names what is wrong."""
        _refuse_unreadable_lines(env_file)
        source = os.environ if environ is None else environ
        names = {field.alias for field in cls.model_fields.values()}
        try:
            return cls(_env_file=env_file, **{name: value for name, value in source.items() if name in names})
        except ValidationError as err:
            raise KimchiError(_sentence(err)) from None

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
        """Where the bot's HTTP server listens: KIMCHI_LISTEN, or its default in webhook mode or with the desk,
        else nowhere."""
        return self.listen or (DEFAULT_LISTEN if self.webhook_mode or self.desk else None)

    @property
    def desk(self) -> bool:
        """Whether the review desk is on (KIMCHI_DESK_URL is set)."""
        return bool(self.desk_url)

    @property
    def desk_mini_app(self) -> bool:
        """Whether Telegram can open the desk as a Mini App: only over HTTPS."""
        return urlsplit(self.desk_url).scheme == "https"

    @property
    def user_quota_bytes(self) -> int:
        return int(self.user_quota_mb * 1_000_000)

    @property
    def max_download_bytes(self) -> int:
        return self.max_download_mb * 1024 * 1024


def _refuse_unreadable_lines(env_file: Path | None) -> None:
    """A `.env` line python-dotenv cannot read stops the bot, rather than being skipped with a warning."""
    if env_file is None or not env_file.is_file():
        return
    with env_file.open(encoding="utf-8") as stream:
        for line in parse_stream(stream):
            if line.error or (line.key and line.value is None):
                raise KimchiError(f"{env_file}:{line.original.line} is not a KEY=VALUE line.")


def _sentence(err: ValidationError) -> str:
    """pydantic's report of the first bad value as one sentence that starts with the variable's name."""
    first = err.errors(include_url=False)[0]
    if not first["loc"]:  # a check across variables words its whole sentence
        return str(first["ctx"]["error"])
    name, kind, raw = first["loc"][0], first["type"], str(first["input"]).strip()
    if name in Settings.model_fields:  # a default that failed its check is reported by the field's name
        name = Settings.model_fields[name].alias
    if kind == "value_error":  # the checks above
        return f"{name} {first['ctx']['error']}"
    if kind.startswith("int_"):
        return f"{name} must be a whole number, not '{raw}'."
    if kind.startswith("float_"):
        return f"{name} must be a number, not '{raw}'."
    if kind in ("greater_than_equal", "less_than_equal"):
        field = next(f for f in Settings.model_fields.values() if f.alias == name)
        low, high = (next(getattr(m, bound) for m in field.metadata if hasattr(m, bound)) for bound in ("ge", "le"))
        return f"{name} must lie between {low} and {high}, not {raw}."
    return f"{name}: {first['msg']}."
