"""`kimchi-bot`: builds the python-telegram-bot Application, registers every handler here, and polls.

Start-up problems (no token, a malformed one, an unusable KIMCHI_HOME, a damaged model) end in one
sentence and exit status 2. SIGTERM or SIGINT stops taking updates, lets the updates in flight finish,
closes the engine and the database, and exits 0.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Sequence

from telegram import BotCommand, Update
from telegram.ext import (AIORateLimiter, Application, ApplicationBuilder, CallbackQueryHandler, CommandHandler,
                          MessageHandler, filters)

from bot import handlers
from bot.retrain import RetrainManager, promote, retrain, rollback
from bot.services import RateLimiter, Services
from bot.settings import Settings
from bot.store import Store
from models.engine import Classifier, EngineConfig
from models.errors import KimchiError
from models.logs import setup_logging
from models.preprocess import ImageLimits
from models.registry import Registry

log = logging.getLogger("bot")

COMMANDS = [
    BotCommand("start", "시작 / start"),
    BotCommand("help", "도움말 / help"),
    BotCommand("classes", "김치 11종 / the 11 kinds"),
    BotCommand("correct", "고치기: /correct 깍두기 / fix an answer"),
]


class RedactToken(logging.Filter):
    """Never let the bot token reach a log line (httpx logs request URLs, which contain it)."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.token in message:
            record.msg, record.args = message.replace(self.token, "<token>"), ()
        return True


def build_services(settings: Settings) -> tuple[Registry, Classifier]:
    """The registry and the engine; no model yet is fine (labelling mode), a damaged one is not."""
    registry = Registry(settings.home.models)
    registry.cleanup_staging()
    config = EngineConfig(device=settings.device, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                          queue_limit=settings.queue_limit, limits=ImageLimits(max_pixels=settings.max_pixels))
    try:
        classifier = Classifier(registry, "current", config, allow_empty=True)
    except KimchiError as err:
        raise KimchiError(f"The current model cannot be loaded: {err} Fix it with `kimchi-train rollback` or "
                          f"`kimchi-train promote VERSION`.") from err
    return registry, classifier


def build_application(settings: Settings) -> Application:
    """The Application with every handler, in one visible place."""
    app = (ApplicationBuilder()
           .token(settings.token)
           .base_url(settings.base_url)
           .base_file_url(settings.file_url)
           .rate_limiter(AIORateLimiter(max_retries=2))
           .concurrent_updates(256)
           # PTB's default is one connection for all Bot API calls: with concurrent updates, every
           # getFile, download and sendMessage would queue behind one another.
           .connection_pool_size(64)
           .pool_timeout(30)
           .post_init(on_start)
           .post_stop(on_stop)
           .post_shutdown(on_shutdown)
           .build())
    app.bot_data["settings"] = settings

    app.add_handler(CommandHandler("start", handlers.start))
    app.add_handler(CommandHandler("help", handlers.help_command))
    app.add_handler(CommandHandler("classes", handlers.classes))
    app.add_handler(CommandHandler("correct", handlers.correct))
    app.add_handler(CommandHandler("stats", handlers.stats))
    app.add_handler(CommandHandler("model", handlers.model))
    app.add_handler(CommandHandler("retrain", retrain))
    app.add_handler(CommandHandler("promote", promote))
    app.add_handler(CommandHandler("rollback", rollback))
    app.add_handler(CallbackQueryHandler(handlers.button))
    app.add_handler(MessageHandler(filters.PHOTO, handlers.photo))
    app.add_handler(MessageHandler(filters.Document.IMAGE, handlers.image_document))
    app.add_handler(MessageHandler(filters.Document.ALL, handlers.other_document))
    app.add_handler(MessageHandler(filters.Sticker.ALL, handlers.sticker))
    app.add_handler(MessageHandler(filters.VIDEO | filters.VIDEO_NOTE | filters.ANIMATION, handlers.video))
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, handlers.text))
    app.add_handler(MessageHandler(filters.COMMAND, handlers.text))
    app.add_handler(MessageHandler(filters.ALL & ~filters.StatusUpdate.ALL, handlers.other_message))
    app.add_error_handler(handlers.error_handler)
    return app


async def on_start(app: Application) -> None:
    """Open the database and the engine, recover from a crash, publish the command list."""
    settings: Settings = app.bot_data["settings"]
    store = await Store.open(settings.home.database, settings.home.corrections)
    registry, classifier = app.bot_data.pop("engine", None) or build_services(settings)
    svc = Services(settings=settings, store=store, classifier=classifier, registry=registry,
                   limiter=RateLimiter(settings.rate_limit))
    svc.retrain = RetrainManager(svc, app)
    await svc.retrain.recover()
    app.bot_data["services"] = svc
    await app.bot.set_my_commands(COMMANDS)
    log.info("kimchi-bot is up: model %s on %s, %d admin(s)", classifier.version or "none (labelling mode)",
             classifier.device, len(settings.admin_ids))


async def on_stop(app: Application) -> None:
    """After the last update in flight: stop a retrain we started, drain and close the engine."""
    svc: Services | None = app.bot_data.get("services")
    if svc is None:
        return
    if svc.retrain is not None:
        await svc.retrain.shutdown()
    svc.classifier.close()


async def on_shutdown(app: Application) -> None:
    svc: Services | None = app.bot_data.get("services")
    if svc is not None:
        await svc.store.close()
        log.info("database closed; bye")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kimchi-bot", description="Run the kimchi Telegram bot (polling).")
    parser.add_argument("--env-file", default=".env", help="settings file (default ./.env); the environment wins")
    parser.add_argument("--check", action="store_true", help="check the settings and the model, then exit")
    args = parser.parse_args(argv)
    try:
        settings = Settings.load(env_file=Path(args.env_file))
        settings.home.ensure()
    except KimchiError as err:
        print(f"kimchi-bot: {err}", file=sys.stderr)
        return 2
    setup_logging(settings.home.logs / "kimchi-bot.log", getattr(logging, settings.log_level))
    redact = RedactToken(settings.token)
    for handler in logging.getLogger().handlers:
        handler.addFilter(redact)
    try:
        engine = build_services(settings)  # fail here, before polling, on a damaged model
    except KimchiError as err:
        log.error("%s", err)
        print(f"kimchi-bot: {err}", file=sys.stderr)
        return 2
    if args.check:
        engine[1].close()
        print(f"settings ok; model {engine[1].version or 'none (labelling mode)'}; KIMCHI_HOME={settings.home.root}")
        return 0
    app = build_application(settings)
    app.bot_data["engine"] = engine
    app.run_polling(allowed_updates=Update.ALL_TYPES, stop_signals=(signal.SIGINT, signal.SIGTERM))
    return 0


if __name__ == "__main__":
    sys.exit(main())
