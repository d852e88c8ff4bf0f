"""Admins decide what the model learns: `/review` (one pending label at a time, as the photo), `/trust`,
`/block` and `/unblock`."""
from __future__ import annotations

import logging
import re
from pathlib import Path

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from bot.desk import open_button
from bot.services import Services, admin_only, lang_of, sender_id, services
from bot.texts import SOURCE_KEYS, audit_reasons, fit, kimchi_name, percent, say
from bot.ledger import ReviewItem, author_of, next_pending
from models.labels import CLASSES, NOT_KIMCHI_CLASS, by_id
from models.status import Status

log = logging.getLogger(__name__)

CAPTION_LIMIT = 1024  # Telegram's limit for a photo's caption
_REVIEW_TAP = re.compile(r"rv:([aexb]):([0-9]{1,12})|rv:l:([0-9]{1,12}):([0-9]{1,2})", re.ASCII)


def review_keyboard(item_id: int, lang: str, desk: InlineKeyboardButton | None = None) -> InlineKeyboardMarkup:
    """Accept / relabel / reject / block; and, given `desk`, a second row opening the review desk's grid."""
    rows = [[InlineKeyboardButton(say("review_accept", lang), callback_data=f"rv:a:{item_id}"),
             InlineKeyboardButton(say("review_relabel", lang), callback_data=f"rv:e:{item_id}"),
             InlineKeyboardButton(say("review_reject", lang), callback_data=f"rv:x:{item_id}"),
             InlineKeyboardButton(say("review_block", lang), callback_data=f"rv:b:{item_id}")]]
    return InlineKeyboardMarkup(rows + [[desk]] if desk else rows)


def relabel_keyboard(item_id: int, lang: str) -> InlineKeyboardMarkup:
    """The 11 classes, three a row, and 🚫 not kimchi on a row of its own."""
    buttons = [InlineKeyboardButton(kimchi_name(c.name, lang), callback_data=f"rv:l:{item_id}:{c.id}")
               for c in CLASSES]
    none = InlineKeyboardButton(say("btn_not_kimchi", lang), callback_data=f"rv:l:{item_id}:{NOT_KIMCHI_CLASS.id}")
    return InlineKeyboardMarkup([*(buttons[i:i + 3] for i in range(0, len(buttons), 3)), [none]])


def caption(item: ReviewItem, lang: str) -> str:
    top = ", ".join(f"{kimchi_name(label, lang)} {percent(p)}" for label, p in item.top) or "-"
    text = say("review_caption", lang, label=kimchi_name(item.label, lang), top=top, votes_for=item.votes_for,
               votes_against=item.votes_against, user=item.user_id if item.user_id is not None else "-",
               accepted=item.standing.accepted, rejected=item.standing.rejected, left=item.left,
               source=say(SOURCE_KEYS.get(item.source, "source_correction"), lang))
    if item.audit_flag:
        text += "\n" + say("review_flagged", lang, flag=audit_reasons(item.audit_flag, lang))
    return fit(text, CAPTION_LIMIT)


async def show_next(svc: Services, chat_id: int, lang: str, bot, after_id: int = 0) -> None:
    """Send the next pending label as its photo with the decision buttons, or say there is none."""
    item = await next_pending(svc.ledger, after_id)
    if item is None:
        await bot.send_message(chat_id, say("review_empty", lang))
        return
    # the desk's grid as a Mini App, where Telegram allows one: over HTTPS, in a private chat
    desk = open_button(svc.settings, lang) if chat_id > 0 else None
    keyboard = review_keyboard(item.id, lang, desk)
    path = Path(item.path)
    if path.is_file():
        with open(path, "rb") as fh:
            await bot.send_photo(chat_id, fh, caption=caption(item, lang), reply_markup=keyboard)
    else:
        await bot.send_message(chat_id, caption(item, lang), reply_markup=keyboard)


@admin_only
async def review(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """`/review`: the oldest pending label, as the photo, with accept / relabel / reject / block."""
    await show_next(services(context), update.effective_chat.id, lang_of(update), context.bot)


async def decide(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A decision button under a review item; the next item follows."""
    svc, query, lang = services(context), update.callback_query, lang_of(update)
    admin = sender_id(update)
    m = _REVIEW_TAP.fullmatch(query.data or "")
    if m is None or (m.group(4) and by_id(int(m.group(4))) is None):
        await query.answer(say("button_invalid", lang), show_alert=True)
        return
    if not svc.settings.is_admin(admin):
        await query.answer(say("admin_only", lang), show_alert=True)
        return
    action, item_id = (m.group(1), int(m.group(2))) if m.group(1) else ("l", int(m.group(3)))
    if action == "e":
        await query.answer()
        await query.edit_message_reply_markup(relabel_keyboard(item_id, lang))
        return
    await query.answer(say("saving", lang))
    if action == "a":
        decided = await svc.ledger.decide(item_id, Status.ACCEPTED, admin)
        outcome = say("review_done_accepted", lang)
    elif action == "l":
        label = by_id(int(m.group(4))).name
        decided = await svc.ledger.decide(item_id, Status.ACCEPTED, admin, label=label)
        outcome = say("review_done_relabelled", lang, label=kimchi_name(label, lang))
    elif action == "x":
        decided = await svc.ledger.decide(item_id, Status.REJECTED, admin)
        outcome = say("review_done_rejected", lang)
    else:
        decided = True
        author = await author_of(svc.ledger, item_id)
        rejected = await svc.ledger.set_user(author, blocked=True) if author is not None else 0
        outcome = say("review_done_blocked", lang, user=author if author is not None else "-", n=rejected)
    if not decided:  # decided meanwhile in the review desk, or by another admin: that decision stands
        outcome = say("review_already_decided", lang)
    try:
        await query.edit_message_reply_markup(None)
        await query.message.reply_text(outcome)
    except TelegramError:
        log.warning("could not mark a review item as decided", exc_info=True)
    await show_next(svc, query.message.chat_id, lang, context.bot, after_id=item_id)


def _user_arg(context: ContextTypes.DEFAULT_TYPE) -> int | None:
    raw = (context.args or [""])[0]
    return int(raw) if re.fullmatch(r"[0-9]{1,15}", raw, re.ASCII) else None


async def _set_user(update: Update, context: ContextTypes.DEFAULT_TYPE, done_key: str, **change: bool) -> None:
    svc, lang = services(context), lang_of(update)
    user_id = _user_arg(context)
    if user_id is None:
        await update.effective_message.reply_text(say("user_usage", lang))
        return
    rejected = await svc.ledger.set_user(user_id, **change)
    await update.effective_message.reply_text(say(done_key, lang, user=user_id, n=rejected))


@admin_only
async def trust(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """`/trust USER_ID`: that user's labels are used at once."""
    await _set_user(update, context, "user_trusted", trusted=True)


@admin_only
async def block(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """`/block USER_ID`: photos still answered, labels never used; pending ones rejected."""
    await _set_user(update, context, "user_blocked", blocked=True)


@admin_only
async def unblock(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """`/unblock USER_ID`: labels count again (earlier rejections stand)."""
    await _set_user(update, context, "user_unblocked", blocked=False)
