"""One small async function per user action. Prose comes from bot.texts; work from the store and the engine."""
from __future__ import annotations

import hashlib
import logging
import time
from datetime import timedelta

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Message, Update
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from bot.services import Services, admin_only, lang_of, services
from bot.store import Correction, PredictionRecord
from bot.texts import class_list, kimchi_name, percent, result_line, say
from models.errors import Busy, EngineCrashed, ImageRejected, KimchiError, NoModel, UnknownLabel
from models.labels import CLASSES, by_id, match
from models.types import Prediction

log = logging.getLogger(__name__)

TELEGRAM_DOWNLOAD_LIMIT = 20 * 1024 * 1024  # getFile serves files up to 20 MB to bots
IMAGE_MIME_TYPES = {"image/jpeg", "image/png", "image/webp"}


# ---------------------------------------------------------------------------------------------
# keyboards. Callback data holds short ids, never labels (well under Telegram's 64 bytes): the id of
# the user's photo message, which with the chat identifies the prediction, and a class's short id.
# Being known before the prediction is stored, it lets the reply go out first and the row follow in
# one write.

def answer_keyboard(photo_message_id: int, lang: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton(say("btn_ok", lang), callback_data=f"ok:{photo_message_id}"),
                                  InlineKeyboardButton(say("btn_fix", lang), callback_data=f"fix:{photo_message_id}")]])


def classes_keyboard(photo_message_id: int, lang: str) -> InlineKeyboardMarkup:
    buttons = [InlineKeyboardButton(kimchi_name(c.name, lang), callback_data=f"set:{photo_message_id}:{c.id}")
               for c in CLASSES]
    return InlineKeyboardMarkup([buttons[i:i + 3] for i in range(0, len(buttons), 3)])


def fix_again_keyboard(photo_message_id: int, lang: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton(say("btn_fix", lang), callback_data=f"fix:{photo_message_id}")]])


def answer_text(prediction: Prediction | None, threshold: float, lang: str) -> str:
    if prediction is None:
        return say("labelling_mode", lang)
    text = result_line(prediction.label, prediction.confidence, lang)
    if prediction.confidence < threshold:
        guesses = "\n".join(f"{i}. {kimchi_name(label, lang)} — {percent(p)}" for i, (label, p) in
                            enumerate(prediction.top[:3], 1))
        text = f"{text}\n{say('unsure', lang)}\n{guesses}"
    return text


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
    svc = services(context)
    message, user, lang = update.effective_message, update.effective_user, lang_of(update)
    if not svc.limiter.allow(user.id if user else None):
        await message.reply_text(say("rate_limited", lang, limit=svc.settings.rate_limit), do_quote=True)
        return
    if file_size and file_size > TELEGRAM_DOWNLOAD_LIMIT:
        await message.reply_text(say("too_big", lang), do_quote=True)
        return
    data = await download(context, file_id, file_unique_id)
    if data is None:
        await message.reply_text(say("download_failed", lang), do_quote=True)
        return
    prediction: Prediction | None
    started = time.perf_counter()
    try:
        prediction = await svc.classifier.classify(data)
    except NoModel:
        prediction = None
    except ImageRejected as err:
        await message.reply_text(say(f"image_{err.reason}", lang), do_quote=True)
        return
    except Busy:
        await message.reply_text(say("busy", lang), do_quote=True)
        return
    except EngineCrashed:
        await message.reply_text(say("engine_failed", lang), do_quote=True)
        return
    finally:
        engine_ms = 1000 * (time.perf_counter() - started)
    log.info("photo %s: %s (engine %.2f ms)", file_unique_id,
             f"{prediction.label} {prediction.confidence:.2f} {prediction.version}" if prediction else "no model", engine_ms)
    keyboard = answer_keyboard(message.message_id, lang) if prediction else classes_keyboard(message.message_id, lang)
    reply = await message.reply_text(answer_text(prediction, svc.settings.confidence_threshold, lang),
                                     reply_markup=keyboard, do_quote=True)
    await svc.store.record_prediction(PredictionRecord(
        chat_id=message.chat_id, user_id=user.id if user else None, message_id=message.message_id, file_id=file_id,
        file_unique_id=file_unique_id, sha256=hashlib.sha256(data).hexdigest(), reply_message_id=reply.message_id,
        label=prediction.label if prediction else None, confidence=prediction.confidence if prediction else None,
        top=prediction.top if prediction else (), model_version=prediction.version if prediction else None))


async def download(context: ContextTypes.DEFAULT_TYPE, file_id: str, file_unique_id: str | None) -> bytes | None:
    """The file's bytes through getFile (cached briefly for corrections); None when Telegram fails us."""
    svc = services(context)
    cached = svc.photos.get(file_unique_id)
    if cached is not None:
        return cached
    try:
        tg_file = await context.bot.get_file(file_id)
        data = bytes(await tg_file.download_as_bytearray())
    except TelegramError:
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


# ---------------------------------------------------------------------------------------------
# corrections

async def correct(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """`/correct 깍두기`: label the photo replied to, or the user's latest one."""
    svc = services(context)
    message, user, lang = update.effective_message, update.effective_user, lang_of(update)
    text = " ".join(context.args or []).strip()
    if not text:
        await message.reply_text(say("correct_usage", lang, classes=class_list(lang)), do_quote=True)
        return
    try:
        label = match(text).name
    except UnknownLabel as err:
        if err.suggestion:
            await message.reply_text(say("correct_suggest", lang, text=text, name=err.suggestion), do_quote=True)
        else:
            await message.reply_text(say("correct_unknown", lang, text=text, classes=class_list(lang)), do_quote=True)
        return
    prediction = await target_prediction(svc, message, user.id if user else None)
    if prediction is None:
        await message.reply_text(say("correct_nothing", lang), do_quote=True)
        return
    if not may_correct(svc, prediction, user.id if user else None):
        await message.reply_text(say("not_yours", lang), do_quote=True)
        return
    reply = await save_label(context, prediction, label, user.id if user else None, message.message_id, lang)
    await message.reply_text(reply, do_quote=True)


async def target_prediction(svc: Services, message: Message, user_id: int | None) -> PredictionRecord | None:
    """The prediction the command replies to (the bot's answer or the photo), else the user's latest
    in this chat within the correction window."""
    replied = message.reply_to_message
    if replied is not None:
        found = await svc.store.prediction_for_message(message.chat_id, replied.message_id)
        if found is not None:
            return found
    window = timedelta(hours=svc.settings.correction_window_hours)
    return await svc.store.latest_prediction(message.chat_id, user_id, window)


def may_correct(svc: Services, prediction: PredictionRecord, user_id: int | None) -> bool:
    return prediction.user_id is None or prediction.user_id == user_id or svc.settings.is_admin(user_id)


async def save_label(context: ContextTypes.DEFAULT_TYPE, prediction: PredictionRecord, label: str,
                     user_id: int | None, message_id: int | None, lang: str, confirmed: bool = False) -> str:
    """Store the label (file fsynced, row committed) and return the sentence that says so."""
    svc = services(context)
    data = await download(context, prediction.file_id, prediction.file_unique_id)
    if data is None:
        return say("download_failed", lang)
    try:
        saved = await svc.store.save_correction(Correction(prediction, label, user_id, message_id, confirmed), data)
    except (KimchiError, OSError):
        log.exception("saving a correction failed")
        return say("save_failed", lang)
    if confirmed:
        return say("confirmed", lang)
    old = saved.previous_label or prediction.label
    if old and old != label:
        return say("saved_changed", lang, old=kimchi_name(old, lang), name=kimchi_name(label, lang))
    return say("saved", lang, name=kimchi_name(label, lang))


async def button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A tap under an answer: ✅ confirms, ✏️ opens the class buttons, a class button saves that label."""
    svc = services(context)
    query = update.callback_query
    lang = lang_of(update)
    parts = (query.data or "").split(":")
    prediction = None
    if len(parts) >= 2 and parts[1].isdigit() and query.message is not None:
        prediction = await svc.store.prediction_for_message(query.message.chat_id, int(parts[1]))
    if prediction is None:
        await query.answer(say("expired", lang), show_alert=True)
        return
    user_id = query.from_user.id if query.from_user else None
    if not may_correct(svc, prediction, user_id):
        await query.answer(say("not_yours", lang), show_alert=True)
        return
    action = parts[0]
    if action == "fix":
        await query.answer()
        await query.edit_message_reply_markup(classes_keyboard(prediction.message_id, lang))
        return
    if action == "ok" and prediction.label:
        label, confirmed = prediction.label, True
    elif action == "set" and len(parts) == 3 and parts[2].isdigit() and by_id(int(parts[2])):
        label, confirmed = by_id(int(parts[2])).name, False
    else:
        await query.answer(say("expired", lang), show_alert=True)
        return
    reply = await save_label(context, prediction, label, user_id, query.message.message_id if query.message else None,
                             lang, confirmed=confirmed)
    await query.answer(reply)
    if query.message is not None:
        original = query.message.text or ""
        base = original.split("\n\n✓ ")[0]
        await query.edit_message_text(f"{base}\n\n✓ {reply}", reply_markup=fix_again_keyboard(prediction.message_id, lang))


# ---------------------------------------------------------------------------------------------
# admins

def model_summary(svc: Services, lang: str) -> str:
    version, meta = svc.classifier.version, svc.classifier.meta
    if version is None or meta is None:
        return say("no_model", lang)
    parts = [say("model_line", lang, version=version, arch=meta.arch)]
    m = meta.metrics
    if isinstance(m.get("accuracy"), (int, float)):
        parts.append(say("model_metrics", lang, accuracy=f"{m['accuracy']:.3f}", f1=f"{m.get('f1_macro', float('nan')):.3f}"))
    if meta.created_at:
        parts.append(say("model_trained", lang, at=meta.created_at))
    return "; ".join(parts)


@admin_only
async def stats(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Predictions, corrections per class, how often the model was wrong, and the model."""
    svc, lang = services(context), lang_of(update)
    s = await svc.store.stats()
    per_class = "\n".join(f"  {name}: {n}" for name, n in s.corrections_per_class.items()) or say("stats_none", lang)
    await update.effective_message.reply_text(say(
        "stats", lang, predictions=s.predictions, fixes=s.fixes, confirmations=s.confirmations, per_class=per_class,
        wrong=f"{s.wrong_rate:.0%}" if s.wrong_rate is not None else "-", model=model_summary(svc, lang)))


@admin_only
async def model(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The serving version and its metrics."""
    await update.effective_message.reply_text(model_summary(services(context), lang_of(update)))


async def error_handler(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Every unhandled error: the traceback to the log, one sentence to the user."""
    log.error("error while handling an update", exc_info=context.error)
    if isinstance(update, Update) and update.effective_message is not None:
        try:
            await update.effective_message.reply_text(say("error", lang_of(update)))
        except TelegramError:
            log.warning("could not tell the user about the error", exc_info=True)
