"""The bot's configuration: one Settings object, read once from the environment and a `.env` file.

Variables set in the environment win over the same names in `.env`. Every name, its default and its
meaning is listed in SETTINGS (and in the README).
"""
from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from models.errors import KimchiError
from models.home import Home

TOKEN_PATTERN = re.compile(r"^\d{5,}:[A-Za-z0-9_-]{30,}$")

# name: (default, meaning) — the README's table is this one.
SETTINGS: dict[str, tuple[str, str]] = {
    "TELEGRAM_BOT_TOKEN": ("", "the bot's token, from @BotFather (required)"),
    "TELEGRAM_API_BASE_URL": ("https://api.telegram.org/bot", "Bot API base URL (PTB base_url); set it for a local Bot API server"),
    "TELEGRAM_API_FILE_URL": ("https://api.telegram.org/file/bot", "Bot API file URL (PTB base_file_url)"),
    "KIMCHI_HOME": ("~/.kimchi", "the data folder: datasets, models, the SQLite file, logs"),
    "KIMCHI_ADMIN_IDS": ("", "comma-separated Telegram user ids allowed /stats, /model, /retrain, /promote, /rollback"),
    "KIMCHI_DEVICE": ("auto", "auto, cpu or cuda"),
    "KIMCHI_CONFIDENCE_THRESHOLD": ("0.6", "below this top probability the reply shows the top 3 and says it is unsure"),
    "KIMCHI_RATE_LIMIT": ("10", "photos per user per minute; 0 turns the limit off"),
    "KIMCHI_MAX_BATCH": ("32", "engine: largest micro-batch"),
    "KIMCHI_MAX_WAIT_MS": ("2", "engine: how long a photo may wait for companions in its batch"),
    "KIMCHI_QUEUE_LIMIT": ("64", "engine: photos waiting beyond which users are asked to retry"),
    "KIMCHI_MAX_PIXELS": ("40000000", "largest image accepted, in pixels (12-MP phone photos pass)"),
    "KIMCHI_CORRECTION_WINDOW_HOURS": ("24", "how far back /correct looks for the user's latest prediction"),
    "KIMCHI_TRAIN_ARGS": ("", "extra `kimchi-train train` arguments for /retrain, appended to the defaults"),
    "KIMCHI_RETRAIN_MIN_PER_CLASS": ("10", "/retrain refuses when a class has fewer images than this"),
    "KIMCHI_PROMOTE_TOLERANCE": ("0", "a candidate is promoted if its macro-F1 >= the current one's minus this"),
    "KIMCHI_HOLDOUT_PCT": ("10", "share (percent) of images, by hash, frozen out of training to compare models"),
    "KIMCHI_LOG_LEVEL": ("INFO", "log level of the console and KIMCHI_HOME/logs/kimchi-bot.log"),
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
    token: str
    base_url: str
    file_url: str
    home: Home
    admin_ids: frozenset[int]
    device: str
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
            confidence_threshold=_number("KIMCHI_CONFIDENCE_THRESHOLD", values, float, 0, 1),
            rate_limit=_number("KIMCHI_RATE_LIMIT", values, int, 0, 10_000),
            max_batch=_number("KIMCHI_MAX_BATCH", values, int, 1, 4096),
            max_wait_ms=_number("KIMCHI_MAX_WAIT_MS", values, float, 0, 10_000),
            queue_limit=_number("KIMCHI_QUEUE_LIMIT", values, int, 1, 1_000_000),
            max_pixels=_number("KIMCHI_MAX_PIXELS", values, int, 1_000, 1_000_000_000),
            correction_window_hours=_number("KIMCHI_CORRECTION_WINDOW_HOURS", values, float, 0, 24 * 365),
            train_args=tuple(shlex.split(values["KIMCHI_TRAIN_ARGS"])),
            retrain_min_per_class=_number("KIMCHI_RETRAIN_MIN_PER_CLASS", values, int, 1, 1_000_000),
            promote_tolerance=_number("KIMCHI_PROMOTE_TOLERANCE", values, float, 0, 1),
            holdout_pct=_number("KIMCHI_HOLDOUT_PCT", values, float, 1, 50),
            log_level=_choice("KIMCHI_LOG_LEVEL", values["KIMCHI_LOG_LEVEL"].upper(),
                              ("DEBUG", "INFO", "WARNING", "ERROR")),
        )

    def is_admin(self, user_id: int | None) -> bool:
        return user_id is not None and user_id in self.admin_ids


def _ids(raw: str) -> frozenset[int]:
    ids = set()
    for part in raw.replace(" ", "").split(","):
        if not part:
            continue
        if not part.lstrip("-").isdigit():
            raise KimchiError(f"KIMCHI_ADMIN_IDS must be comma-separated numeric Telegram user ids; '{part}' is not one.")
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
