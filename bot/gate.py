"""What the bot acts on at all, decided before any handler runs (handler group -1).

Only messages and button taps from private chats and groups. Channel posts and edited messages are
neither requested (ALLOWED_UPDATES) nor acted on if they arrive: an edit must not re-run a command or
re-classify a photo. Commands and taps spend the sender's action budget; photos have their own.
"""
from __future__ import annotations

import logging

from telegram import Chat, Update
from telegram.ext import ApplicationHandlerStop, ContextTypes

from bot.services import lang_of, sender_id, services
from bot.texts import say

log = logging.getLogger(__name__)

ALLOWED_UPDATES = [Update.MESSAGE, Update.CALLBACK_QUERY]
CHATS = (Chat.PRIVATE, Chat.GROUP, Chat.SUPERGROUP)


async def gate(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Stop updates the bot does not act on, and actions over the sender's budget."""
    chat = update.effective_chat
    if (update.message is None and update.callback_query is None) or chat is None or chat.type not in CHATS:
        log.debug("ignoring update %s (%s)", update.update_id, chat.type if chat else "no chat")
        raise ApplicationHandlerStop
    message = update.message
    is_action = update.callback_query is not None or bool(message and message.text and message.text.startswith("/"))
    if not is_action:
        return  # photos are budgeted where they are downloaded; plain text costs nothing
    svc = services(context)
    who = sender_id(update)
    if svc.settings.is_admin(who) or svc.actions.allow(who):
        return
    if update.callback_query is not None:
        await update.callback_query.answer(say("slow_down", lang_of(update)))
    elif svc.actions.tell_refusal(who):
        await message.reply_text(say("slow_down", lang_of(update)), do_quote=True)
    raise ApplicationHandlerStop
