"""`kimchi-bot`: builds the python-telegram-bot Application, registers every handler here, and runs it
(polling, or the webhook when KIMCHI_WEBHOOK_URL is set; see bot.startup).

Start-up problems (no token, a malformed one, an unusable KIMCHI_HOME, a damaged model, a Bot API that
cannot be reached or rejects the token) end in one sentence and exit status 2. SIGTERM or SIGINT stops
taking updates, lets the updates in flight finish, closes the engine and the database, and exits 0.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from pathlib import Path
from typing import Sequence

from telegram import BotCommand, Update
from telegram.ext import (Application, ApplicationBuilder, CallbackQueryHandler, CommandHandler,
                          MessageHandler, TypeHandler, filters)

from bot import admin, corrections, desk, handlers, privacy, review
from bot.botapi import bot_api_request
from bot.gate import gate
from bot.metrics import install as install_metrics
from bot.ordering import PerUserOrder
from bot.personal import PersonalData
from bot.sendrate import FairRateLimiter
from bot.serving import Serving
from bot.services import Quota, Services
from bot.settings import Settings
from bot.startup import check_only, run
from bot.store import Store
from bot.supervisor import RetrainSupervisor
from bot.texts import EN, KO, command_menu
from bot.ledger import Ledger
from models.engine import Classifier, EngineConfig
from models.errors import KimchiError
from models.home import private_umask
from models.logs import setup_logging
from models.preprocess import ImageLimits
from models.registry import Registry
from models.trainset import base_items

log = logging.getLogger("bot")


def build_serving(settings: Settings) -> Serving:
    """The registry and the classifier serving its current version; no model yet is fine (labelling mode), a
    damaged one is not."""
    registry = Registry(settings.home.models)
    registry.cleanup_staging()
    config = EngineConfig(device=settings.device, cpu_runtime=settings.cpu_runtime, max_batch=settings.max_batch,
                          max_wait_ms=settings.max_wait_ms,
                          queue_limit=settings.queue_limit, limits=ImageLimits(max_pixels=settings.max_pixels))
    try:
        classifier = Classifier(registry, "current", config, allow_empty=True)
    except KimchiError as err:
        raise KimchiError(f"The current model cannot be loaded: {err} Fix it with `kimchi-train rollback` or "
                          f"`kimchi-train promote VERSION`.") from err
    return Serving(registry, classifier)


def build_application(settings: Settings) -> Application:
    """The Application with every handler, in one visible place."""
    # PTB's default is one connection for all Bot API calls: with concurrent updates, every getFile,
    # download and sendMessage would queue behind one another. The long poll keeps its own one.
    app = (ApplicationBuilder()
           .token(settings.token.get_secret_value())
           .base_url(settings.base_url)
           .base_file_url(settings.file_url)
           .local_mode(settings.local_mode)  # a local Bot API server: files are read from the path it gives
           .rate_limiter(FairRateLimiter(max_retries=2))  # Telegram's 30/s, in turns by chat
           .concurrent_updates(PerUserOrder(256))  # users side by side; each user's updates in order
           .request(bot_api_request(settings.http_client, connection_pool_size=64, pool_timeout=30))
           .get_updates_request(bot_api_request(settings.http_client))
           .post_init(on_start)
           .post_stop(on_stop)
           .post_shutdown(on_shutdown)
           .build())
    app.bot_data["settings"] = settings
    install_metrics(app)  # bot_data["metrics"]; counts each update after its handlers ran

    app.add_handler(TypeHandler(Update, gate), group=-1)  # what the bot acts on at all, and budgets
    private = filters.ChatType.PRIVATE  # in groups the bot answers photos and commands, not chatter
    app.add_handler(CommandHandler("start", handlers.start))
    app.add_handler(CommandHandler("help", handlers.help_command))
    app.add_handler(CommandHandler("classes", handlers.classes))
    app.add_handler(CommandHandler("correct", corrections.correct))
    app.add_handler(CommandHandler("privacy", privacy.privacy))
    app.add_handler(CommandHandler("mydata", privacy.mydata))
    app.add_handler(CommandHandler("forget", privacy.forget))
    app.add_handler(CommandHandler("stats", admin.stats))
    app.add_handler(CommandHandler("model", admin.model))
    app.add_handler(CommandHandler("retrain", admin.retrain))
    app.add_handler(CommandHandler("promote", admin.promote))
    app.add_handler(CommandHandler("rollback", admin.rollback))
    app.add_handler(CommandHandler("review", review.review))
    app.add_handler(CommandHandler("desk", desk.desk_command))
    app.add_handler(CommandHandler("trust", review.trust))
    app.add_handler(CommandHandler("block", review.block))
    app.add_handler(CommandHandler("unblock", review.unblock))
    app.add_handler(CallbackQueryHandler(review.decide, pattern=r"^rv:"))
    app.add_handler(CallbackQueryHandler(privacy.forget_tap, pattern=r"^pv:"))
    app.add_handler(CallbackQueryHandler(corrections.button))
    app.add_handler(MessageHandler(filters.PHOTO, handlers.photo))
    app.add_handler(MessageHandler(filters.Document.IMAGE, handlers.image_document))
    app.add_handler(MessageHandler(filters.Document.ALL, handlers.other_document))
    app.add_handler(MessageHandler(private & filters.Sticker.ALL, handlers.sticker))
    app.add_handler(MessageHandler(private & (filters.VIDEO | filters.VIDEO_NOTE | filters.ANIMATION), handlers.video))
    app.add_handler(MessageHandler(private & filters.TEXT, handlers.text))  # plain text and unknown commands
    app.add_handler(MessageHandler(private & ~filters.StatusUpdate.ALL, handlers.other_message))
    app.add_error_handler(handlers.error_handler)
    return app


async def on_start(app: Application) -> None:
    """Open the database and the engine, recover from a crash, publish the command list."""
    settings: Settings = app.bot_data["settings"]
    store = await Store.open(settings.home.database, settings.home.corrections,
                             ImageLimits(max_pixels=settings.max_pixels), settings.user_quota_bytes)
    serving: Serving = app.bot_data.pop("serving", None) or build_serving(settings)
    ledger = Ledger(store, settings)
    svc = Services(settings=settings, store=store, photo_quota=Quota(settings.rate_limit), serving=serving,
                   actions=Quota(settings.action_rate_limit),
                   corrections=Quota(settings.corrections_per_day, window_s=24 * 3600),
                   retrain=RetrainSupervisor(settings, store, serving, admin.TelegramNotifier(app), ledger),
                   ledger=ledger, personal=PersonalData(store.db, store.photos),
                   base_labels={sha: item.label for sha, item in
                                (await asyncio.to_thread(base_items, settings.home.base)).items()})
    await store.reconcile()
    app.bot_data["legacy_photos"] = asyncio.create_task(store.bound_legacy_photos())  # once, after an upgrade
    await svc.retrain.recover()
    app.bot_data["services"] = svc
    if app.job_queue is not None:  # PTB's JobQueue: the retention purge once a day, and once soon after start
        app.job_queue.run_daily(privacy.purge, privacy.PURGE_AT, name="retention purge")
        app.job_queue.run_once(privacy.purge, 30, name="retention purge at start")
    else:
        log.warning("python-telegram-bot's job queue is not installed: the daily retention purge does not run")
    for lang, code in ((EN, None), (KO, "ko")):
        await app.bot.set_my_commands([BotCommand(c, d) for c, d in command_menu(lang)], language_code=code)
    if settings.desk:
        await desk.set_menu_buttons(app.bot, settings)
        log.info("the review desk is on at %s", settings.desk_url)
    log.info("kimchi-bot is up: model %s on %s, %d admin(s)", serving.classifier.version or "none (labelling mode)",
             serving.classifier.device, len(settings.admin_ids))


async def on_stop(app: Application) -> None:
    """After the last update in flight: stop a retrain we started, drain and close the engine."""
    svc: Services | None = app.bot_data.get("services")
    if svc is None:
        return
    await svc.retrain.shutdown()
    legacy: asyncio.Task | None = app.bot_data.pop("legacy_photos", None)
    if legacy is not None and not legacy.done():
        legacy.cancel()  # picked up again at the next start
        with contextlib.suppress(asyncio.CancelledError):
            await legacy
    svc.classifier.close()


async def on_shutdown(app: Application) -> None:
    svc: Services | None = app.bot_data.get("services")
    if svc is not None:
        await svc.store.close()
        log.info("database closed; bye")


def warn_if_readable(env_file: Path) -> None:
    """The .env holds the token: say so when others on the machine can read it."""
    try:
        mode = env_file.stat().st_mode
    except OSError:
        return
    if mode & 0o077:
        log.warning("%s can be read by other users of this machine (mode %o) and holds the bot token; "
                    "run: chmod 600 %s", env_file, mode & 0o777, env_file)


def main(argv: Sequence[str] | None = None) -> int:
    private_umask()  # KIMCHI_HOME and all in it (SQLite, photos, logs, the trainer's files) owner-only
    parser = argparse.ArgumentParser(prog="kimchi-bot", description="Run the kimchi Telegram bot (polling, or the "
                                     "webhook when KIMCHI_WEBHOOK_URL is set).")
    parser.add_argument("--env-file", default=".env", help="settings file (default ./.env); the environment wins")
    parser.add_argument("--check", action="store_true", help="check the settings and the model, then exit")
    args = parser.parse_args(argv)
    try:
        settings = Settings.load(env_file=Path(args.env_file))
        settings.home.ensure()
    except KimchiError as err:
        print(f"kimchi-bot: {err}", file=sys.stderr)
        return 2
    setup_logging(settings.home.logs / "kimchi-bot.log", getattr(logging, settings.log_level),
                  secrets=(settings.token.get_secret_value(), settings.webhook_secret.get_secret_value()))
    warn_if_readable(Path(args.env_file))
    try:
        serving = build_serving(settings)  # fail here, before polling, on a damaged model
    except KimchiError as err:
        log.error("%s", err)
        print(f"kimchi-bot: {err}", file=sys.stderr)
        return 2
    if args.check:
        serving.classifier.close()
        try:
            me = asyncio.run(check_only(settings))  # the same getMe as a start, after settings and model
        except KimchiError as err:
            log.error("%s", err)
            print(f"kimchi-bot: {err}", file=sys.stderr)
            return 2
        print(f"settings ok; model {serving.classifier.version or 'none (labelling mode)'}; "
              f"KIMCHI_HOME={settings.home.root}; Bot API ok: @{me.username}")
        return 0
    app = build_application(settings)
    app.bot_data["serving"] = serving
    return run(app, settings)  # getMe first, then polling or the webhook; exit 2 with one sentence


if __name__ == "__main__":
    sys.exit(main())
