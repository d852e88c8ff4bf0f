"""People's data: `/privacy` (what is kept, why, how long, who sees it), `/mydata` (a zip of all of it) and
`/forget` (erase all of it, after a confirmation); the daily retention purge. The rows are bot/personal.py's."""
from __future__ import annotations

import logging
import re
from datetime import time as daytime

from telegram import Chat, InlineKeyboardButton, InlineKeyboardMarkup, InputFile, Update
from telegram.ext import ContextTypes

from bot.services import lang_of, sender_id, services
from bot.texts import say

log = logging.getLogger(__name__)

FORGET_TAP = re.compile(r"pv:forget:(yes|no)", re.ASCII)
PURGE_AT = daytime(3, 17)  # UTC, once a day


def privacy_text(settings, lang: str) -> str:
    """The notice, quoting the settings' actual values, and the operator's contact and link if set."""
    text = say("privacy", lang, retention=f"{settings.retention_days:g}", pending=f"{settings.pending_expire_days:g}")
    if settings.privacy_contact:
        text += "\n" + say("privacy_contact", lang, contact=settings.privacy_contact)
    if settings.privacy_url:
        text += "\n" + say("privacy_url", lang, url=settings.privacy_url)
    return text


async def privacy(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """`/privacy`: what the bot keeps, why, for how long, who sees it, and how to get a copy or erase it."""
    await update.effective_message.reply_text(privacy_text(services(context).settings, lang_of(update)))


async def in_private(update: Update) -> bool:
    """A copy or an erase only in a private chat: in a group, the zip would go to everyone there."""
    if update.effective_chat is not None and update.effective_chat.type == Chat.PRIVATE:
        return True
    await update.effective_message.reply_text(say("privacy_private_only", lang_of(update)), do_quote=True)
    return False


async def mydata(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """`/mydata`: a zip of everything kept about the sender, as a document; once a day, built off the loop."""
    svc, lang, who = services(context), lang_of(update), sender_id(update)
    message = update.effective_message
    if not await in_private(update):
        return
    if who is None:
        await message.reply_text(say("mydata_empty", lang))
        return
    if not svc.copies.allow(who):
        await message.reply_text(say("mydata_limit", lang))
        return
    data, predictions, labels = await svc.personal.export_zip(who)
    if not predictions and not labels:
        await message.reply_text(say("mydata_empty", lang))
        return
    await context.bot.send_document(message.chat_id, InputFile(data, filename="kimchi-mydata.zip"),
                                    caption=say("mydata_caption", lang, predictions=predictions, labels=labels))


async def forget(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """`/forget`: ask first; the buttons carry no id, the tap's sender is who is erased."""
    lang = lang_of(update)
    if not await in_private(update):
        return
    keyboard = InlineKeyboardMarkup([[InlineKeyboardButton(say("btn_forget_yes", lang), callback_data="pv:forget:yes"),
                                      InlineKeyboardButton(say("btn_forget_no", lang), callback_data="pv:forget:no")]])
    await update.effective_message.reply_text(say("forget_ask", lang), reply_markup=keyboard)


async def forget_tap(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The confirmation: erase the sender's data in one transaction, or leave everything as it is."""
    svc, query, lang, who = services(context), update.callback_query, lang_of(update), sender_id(update)
    m = FORGET_TAP.fullmatch(query.data or "")
    if m is None or who is None:
        await query.answer(say("button_invalid", lang), show_alert=True)
        return
    await query.answer()
    if m.group(1) == "no":
        await query.edit_message_text(say("forget_cancelled", lang))
        return
    for unique_id in await svc.personal.file_unique_ids(who):
        svc.photos.forget(unique_id)
    erased = await svc.personal.forget(who)
    log.info("an erasure: %d predictions, %d labels, %d files", erased.predictions, erased.labels, erased.files)
    await query.edit_message_text(say("forget_done", lang, predictions=erased.predictions, labels=erased.labels))


async def purge(context: ContextTypes.DEFAULT_TYPE) -> None:
    """The daily job: rows and photos past KIMCHI_RETENTION_DAYS and KIMCHI_PENDING_EXPIRE_DAYS."""
    svc = services(context)
    done = await svc.personal.purge(svc.settings.retention_days, svc.settings.pending_expire_days)
    cached = svc.photos.expire(svc.settings.retention_days * 86400)
    log.info("retention purge: %d predictions, %d pending and %d rejected labels, %d photo files, %d cached photos "
             "removed", done.predictions, done.pending, done.rejected, done.files, cached)
