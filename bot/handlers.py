"""One small async function per user action. Prose comes from bot.texts; work from the store and the engine."""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from pathlib import Path

from telegram import Update
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from bot.keyboards import answer_keyboard, ask_keyboard, asked_pair, classes_keyboard, not_kimchi_keyboard
from bot.metrics import metrics_of
from bot.services import lang_of, sender_id, sender_name, services
from bot.store import PredictionRecord
from bot.texts import IMAGE_KEYS, class_list, kimchi_name, percent, result_line, say
from models.errors import Busy, EngineCrashed, ImageRejected, NoModel
from models.labels import NOT_KIMCHI
from models.preprocess import open_checked
from models.types import Prediction

log = logging.getLogger(__name__)

IMAGE_MIME_TYPES = {"image/jpeg", "image/png", "image/webp"}


def answer_text(prediction: Prediction | None, threshold: float, lang: str) -> str:
    if prediction is None:
        return say("labelling_mode", lang)
    if prediction.not_kimchi:
        return not_kimchi_text(prediction, lang)
    text = result_line(prediction.label, prediction.confidence, lang)
    if prediction.confidence < threshold:
        guesses = "\n".join(f"{i}. {kimchi_name(label, lang)} — {percent(p)}" for i, (label, p) in
                            enumerate(prediction.top[:3], 1))
        text = f"{text}\n{say('unsure', lang)}\n{guesses}"
    return text


def not_kimchi_text(prediction: Prediction, lang: str) -> str:
    """One short sentence: not kimchi, and the closest kimchi with its probability when the model has one."""
    closest = prediction.closest
    if closest is None:
        return say("not_kimchi_answer", lang)
    name, p = closest
    return say("not_kimchi_answer_closest", lang, name=kimchi_name(name, lang), pct=percent(p))


# ---------------------------------------------------------------------------------------------
# conversation

async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Greet, in the user's language, and say what to do."""
    await update.effective_message.reply_text(say("start", lang_of(update)))


async def help_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Explain photos, fixing and the class list."""
    await update.effective_message.reply_text(say("help", lang_of(update)))


async def classes(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """List the 11 classes: Korean name, romanisation, English gloss."""
    lang = lang_of(update)
    await update.effective_message.reply_text(f"{say('classes_title', lang)}\n{class_list(lang)}")


async def photo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A photo: fetch its largest size, classify it, reply with the kimchi and the confidence."""
    message = update.effective_message
    largest = max(message.photo, key=lambda size: (size.width * size.height, size.file_size or 0))
    await classify_and_reply(update, context, largest.file_id, largest.file_unique_id, largest.file_size)


async def image_document(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """An uncompressed image sent as a file: treated like a photo when it is a JPEG, PNG or WEBP."""
    document = update.effective_message.document
    lang = lang_of(update)
    if (document.mime_type or "").lower() not in IMAGE_MIME_TYPES:
        await update.effective_message.reply_text(say("image_format", lang), do_quote=True)
        return
    await classify_and_reply(update, context, document.file_id, document.file_unique_id, document.file_size)


async def classify_and_reply(update: Update, context: ContextTypes.DEFAULT_TYPE, file_id: str,
                             file_unique_id: str | None, file_size: int | None) -> None:
    """Budget, download, classify, answer; every way out is one sentence and one counted outcome."""
    svc, metrics, arrived = services(context), metrics_of(context), time.monotonic()
    message, who, lang = update.effective_message, sender_id(update), lang_of(update)

    async def refuse(outcome: str, text: str, reason: str = "") -> None:
        metrics.photo(outcome, reason)
        await message.reply_text(text, do_quote=True)

    # Every refusal comes before the download: a flood costs neither bandwidth nor memory.
    if not svc.photo_quota.allow(who):
        metrics.photo("rate_limited")
        if svc.photo_quota.tell_refusal(who):
            await message.reply_text(say("rate_limited", lang, limit=svc.settings.rate_limit), do_quote=True)
        return
    if svc.classifier.queued >= svc.settings.queue_limit:
        return await refuse("busy", say("busy", lang))
    if file_size and file_size > svc.settings.max_download_bytes:
        return await refuse("too_big", say("too_big", lang, limit=svc.settings.max_download_mb))
    data = await download(context, file_id, file_unique_id)
    if data is None:
        return await refuse("download_failed", say("download_failed", lang))
    started = time.perf_counter()
    try:
        try:
            prediction: Prediction | None = await svc.classifier.classify(data)
        except NoModel:  # labelling mode: the image is held to the same limits before anyone labels it
            prediction = None
            await asyncio.to_thread(open_checked, data, svc.store.limits)
    except ImageRejected as err:
        return await refuse("rejected", say(IMAGE_KEYS.get(err.reason, "image_not_image"), lang), err.reason)
    except Busy:
        return await refuse("busy", say("busy", lang))
    except EngineCrashed:
        return await refuse("engine_failed", say("engine_failed", lang))
    log.info("photo %s: %s (engine %.2f ms)", file_unique_id, describe(prediction),
             1000 * (time.perf_counter() - started))
    keyboard = keyboard_for(prediction, message.message_id, svc.settings.ask_margin, lang)
    async with svc.store.prediction_pending(message.chat_id):
        reply = await message.reply_text(answer_text(prediction, svc.settings.confidence_threshold, lang),
                                         reply_markup=keyboard, do_quote=True)
        metrics.photo_answered(arrived)
        if prediction is not None and prediction.not_kimchi:  # which one said so: the class, or the score
            metrics.not_kimchi_answer("class" if prediction.label == NOT_KIMCHI else "score")
        await svc.store.record_prediction(PredictionRecord(
            chat_id=message.chat_id, user_id=who, message_id=message.message_id,
            file_id=file_id, file_unique_id=file_unique_id, sha256=hashlib.sha256(data).hexdigest(),
            reply_message_id=reply.message_id, label=prediction.answer if prediction else None,
            # the answer's probability: None when the open-set score alone said not kimchi
            confidence=dict(prediction.top).get(prediction.answer) if prediction else None,
            top=prediction.top if prediction else (),
            model_version=prediction.version if prediction else None, user_name=sender_name(update)))


def describe(prediction: Prediction | None) -> str:
    """The answer for the log: what the user was told, the head's class, and the open-set score."""
    if prediction is None:
        return "no model"
    score = "-"
    if prediction.openset is not None and prediction.threshold is not None:
        score = f"{prediction.openset:.3f}/{prediction.threshold:.3f}"
    return f"{prediction.answer} ({prediction.label} {prediction.confidence:.2f}, open-set {score}) {prediction.version}"


def keyboard_for(prediction: Prediction | None, message_id: int, ask_margin: float, lang: str):
    """No model: the 11 classes (and 🚫). Not kimchi: right, or it is kimchi. Top two close: ask which.
    Otherwise: right, or fix."""
    if prediction is None:
        return classes_keyboard(message_id, lang)
    if prediction.not_kimchi:
        return not_kimchi_keyboard(message_id, lang)
    asked = asked_pair(prediction, ask_margin)
    if asked:
        return ask_keyboard(message_id, *asked, lang)
    return answer_keyboard(message_id, lang)


async def download(context: ContextTypes.DEFAULT_TYPE, file_id: str, file_unique_id: str | None) -> bytes | None:
    """The file's bytes through getFile (cached briefly for corrections); None when Telegram fails us."""
    svc = services(context)
    cached = svc.photos.get(file_unique_id)
    if cached is not None:
        return cached
    try:
        async with svc.downloads:
            tg_file = await context.bot.get_file(file_id)
            if svc.settings.local_mode and tg_file.file_path and Path(tg_file.file_path).is_absolute():
                data = await asyncio.to_thread(Path(tg_file.file_path).read_bytes)  # on the local server's disk
            else:
                data = bytes(await tg_file.download_as_bytearray())
    except (TelegramError, OSError):
        log.warning("download of %s failed", file_unique_id, exc_info=True)
        return None
    svc.photos.put(file_unique_id, data)
    return data


async def other_document(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A file that is not an image: say so, download nothing."""
    await update.effective_message.reply_text(say("not_image_document", lang_of(update)), do_quote=True)


async def sticker(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A sticker: a friendly nudge towards a photo."""
    await update.effective_message.reply_text(say("sticker", lang_of(update)), do_quote=True)


async def video(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A video, video note or GIF: not watched, not downloaded."""
    await update.effective_message.reply_text(say("video", lang_of(update)), do_quote=True)


async def other_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Anything else (voice, location, contact…): ask for a photo."""
    await update.effective_message.reply_text(say("other", lang_of(update)), do_quote=True)


async def text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Plain text: a hint."""
    await update.effective_message.reply_text(say("text_hint", lang_of(update)))


async def error_handler(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Every unhandled error: the traceback to the log, one sentence to the user."""
    log.error("error while handling an update", exc_info=context.error)
    if isinstance(update, Update) and update.effective_message is not None:
        try:
            await update.effective_message.reply_text(say("error", lang_of(update)))
        except TelegramError:
            log.warning("could not tell the user about the error", exc_info=True)
