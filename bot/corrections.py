"""Fixing an answer: `/correct 깍두기` and the buttons under an answer. Every label is stored (file fsynced,
row committed) before the bot says "saved"."""
from __future__ import annotations

import logging
import sqlite3
from datetime import timedelta

from telegram import Message, Update
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from bot.handlers import download
from bot.keyboards import asked_pair, classes_keyboard, fix_again_keyboard, parse_tap
from bot.metrics import metrics_of
from bot.services import Services, lang_of, sender_id, services
from bot.store import Correction, NoStoredImage, PredictionRecord, QuotaExceeded, SavedCorrection
from bot.trust import Basis
from bot.texts import IMAGE_KEYS, class_list, kimchi_name, say
from models.errors import ImageRejected, KimchiError, LabelTooLong, NotAClass, UnknownLabel
from models.labels import by_id, match
from models.status import Source, Status

log = logging.getLogger(__name__)


async def correct(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """`/correct 깍두기`: label the photo replied to, or the user's latest one."""
    svc = services(context)
    message, who, lang = update.effective_message, sender_id(update), lang_of(update)
    text = " ".join(context.args or []).strip()
    if not text:
        await message.reply_text(say("correct_usage", lang, classes=class_list(lang)), do_quote=True)
        return
    try:
        label = match(text).name
    except UnknownLabel as err:
        await message.reply_text(unknown_label_text(err, lang), do_quote=True)
        return
    prediction = await target_prediction(svc, message, who)
    if prediction is None:
        await message.reply_text(say("correct_nothing", lang), do_quote=True)
        return
    if not may_correct(svc, prediction, who):
        await message.reply_text(say("not_yours", lang), do_quote=True)
        return
    reply = await save_label(context, prediction, label, who, message.message_id, lang, update_seq=update.update_id)
    await message.reply_text(reply, do_quote=True)


def unknown_label_text(err: UnknownLabel, lang: str) -> str:
    """The one sentence for a label the bot cannot use; long text is never echoed."""
    if isinstance(err, LabelTooLong):
        return say("correct_too_long", lang, limit=err.limit)
    if isinstance(err, NotAClass):
        return say("correct_not_a_class", lang, name=err.name, classes=class_list(lang))
    if err.suggestion:
        return say("correct_suggest", lang, text=err.text, name=err.suggestion)
    return say("correct_unknown", lang, text=err.text, classes=class_list(lang))


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
    """The photo's sender may fix it, and admins may fix anything; a photo with no known sender only admins."""
    if svc.settings.is_admin(user_id):
        return True
    return prediction.user_id is not None and prediction.user_id == user_id


async def save_label(context: ContextTypes.DEFAULT_TYPE, prediction: PredictionRecord, label: str,
                     user_id: int | None, message_id: int | None, lang: str, source: Source = Source.CORRECTION,
                     update_seq: int | None = None) -> str:
    """Store the label with the status the policy gives it (file fsynced, row committed), and return the
    sentence that says so truthfully: used now, once it is confirmed, declined before, or kept from a later
    message. The photo is downloaded and decoded only for its first label; later ones reuse the stored file."""
    svc, metrics = services(context), metrics_of(context)
    is_admin = svc.settings.is_admin(user_id)
    if not is_admin and not svc.corrections.allow(user_id):
        metrics.correction("limited")
        return say("corrections_limit", lang, limit=svc.settings.corrections_per_day)
    data = None
    if await svc.store.stored_image(prediction.sha256) is None:  # the first label of this photo
        data = await download(context, prediction.file_id, prediction.file_unique_id)
        if data is None:
            return say("download_failed", lang)
    base_label = svc.base_labels.get(prediction.sha256)
    dispute = base_label is not None and base_label != label
    try:
        existing = await svc.store.existing_correction(prediction.id)
        verdict = await svc.ledger.verdict(user_id, prediction.sha256, prediction.file_unique_id, label, dispute,
                                           existing)
        if (verdict.basis == Basis.REPEATED and existing is not None and existing["corrected_label"] == label
                and existing["status"] == Status.REJECTED):
            metrics.correction(Status.REJECTED)  # the row keeps the decision as it was made: nothing to write
            return say("saved_rejected", lang, name=kimchi_name(label, lang))
        correction = Correction(prediction, label, user_id, message_id, confirmed=source == Source.CONFIRM,
                                status=verdict.status, source=Source.DISPUTE if dispute else source,
                                basis=verdict.basis, audit_flag=verdict.audit_flag, update_seq=update_seq)
        try:
            saved = await svc.store.save_correction(correction, data, quota=not is_admin)
        except NoStoredImage:  # the stored file moved away under another label meanwhile: fetch it again
            data = await download(context, prediction.file_id, prediction.file_unique_id)
            if data is None:
                return say("download_failed", lang)
            saved = await svc.store.save_correction(correction, data, quota=not is_admin)
        if saved.stale:
            metrics.correction("stale")
            return say("saved_stale", lang, name=kimchi_name(saved.previous_label, lang))
        if verdict.basis in (Basis.AGREEMENT, Basis.ADMIN) and not dispute:  # independent voices: others' count
            await svc.ledger.accept_agreement(prediction.sha256, prediction.file_unique_id, label)
    except QuotaExceeded:
        metrics.correction("quota")
        return say("quota_full", lang, limit=f"{svc.settings.user_quota_mb:g}")
    except ImageRejected as err:
        metrics.correction("rejected_image")
        return say(IMAGE_KEYS.get(err.reason, "image_not_image"), lang)
    except (KimchiError, OSError, sqlite3.Error):
        log.exception("saving a correction failed")
        metrics.correction("failed")
        return say("save_failed", lang)
    metrics.correction(verdict.status)
    return saved_text(saved, prediction, label, verdict.status, source, lang)


def saved_text(saved: SavedCorrection, prediction: PredictionRecord, label: str, status: Status, source: Source,
               lang: str) -> str:
    if status == Status.REJECTED:
        return say("saved_rejected", lang, name=kimchi_name(label, lang))
    if status == Status.PENDING:
        return say("saved_pending", lang, name=kimchi_name(label, lang))
    if source == Source.CONFIRM:
        return say("confirmed", lang)
    old = saved.previous_label or prediction.label
    if old and old != label:
        return say("saved_changed", lang, old=kimchi_name(old, lang), name=kimchi_name(label, lang))
    return say("saved", lang, name=kimchi_name(label, lang))


async def button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A tap under an answer: ✅ confirms, ✏️ opens the class buttons, a class button saves that label.

    The query is answered before any slow work (download, file write, commit); how the work ended is then
    written into the answer message, so a failure still reaches the user.
    """
    svc, query, lang = services(context), update.callback_query, lang_of(update)
    tap = parse_tap(query.data)
    if tap is None or query.message is None:
        await query.answer(say("button_invalid", lang), show_alert=True)
        return
    prediction = await svc.store.prediction_for_message(query.message.chat_id, tap.message_id)
    if prediction is None:
        await query.answer(say("expired", lang), show_alert=True)
        return
    user_id = sender_id(update)
    if not may_correct(svc, prediction, user_id):
        await query.answer(say("not_yours", lang), show_alert=True)
        return
    if tap.action == "fix":
        await query.answer()
        await query.edit_message_reply_markup(classes_keyboard(prediction.message_id, lang))
        return
    if tap.action == "ok" and not prediction.label:
        await query.answer(say("expired", lang), show_alert=True)
        return
    asked = asked_pair(prediction, svc.settings.ask_margin)
    label = prediction.label if tap.action == "ok" else by_id(tap.class_id).name
    # Under an A/B answer only its two classes were offered, and no ✅.
    if (tap.action == "ask" and label not in (asked or ())) or (tap.action == "ok" and asked):
        await query.answer(say("button_invalid", lang), show_alert=True)
        return
    source = {"ok": Source.CONFIRM, "ask": Source.ASK}.get(tap.action,
                                                         Source.CORRECTION if prediction.label else Source.LABEL)
    await query.answer(say("saving", lang))
    reply = await save_label(context, prediction, label, user_id, query.message.message_id, lang, source=source,
                             update_seq=update.update_id)
    base = (query.message.text or "").split("\n\n✓ ")[0]
    try:
        await query.edit_message_text(f"{base}\n\n✓ {reply}", reply_markup=fix_again_keyboard(prediction.message_id, lang))
    except TelegramError:
        log.warning("could not show the result of a tap; sending it instead", exc_info=True)
        await query.message.reply_text(reply)
