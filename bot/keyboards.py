"""Inline keyboards under answers, and the strict reading of what a tap sends back.

Callback data holds short ids, never labels (well under Telegram's 64 bytes): the id of the user's photo
message, which with the chat identifies the prediction, and a class's short id. Being known before the
prediction is stored, it lets the reply go out first and the row follow in one write. Anyone can send any
callback data, so it is parsed strictly: ASCII digits, known prefixes, ids in range, or nothing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from bot.texts import kimchi_name, say
from models.labels import CLASSES, LABELS, NOT_KIMCHI, NOT_KIMCHI_CLASS, by_name, is_kimchi

MAX_MESSAGE_ID = 2**31 - 1
_CALLBACK = re.compile(r"(ok|fix):([0-9]{1,10})|(set|ask):([0-9]{1,10}):([0-9]{1,2})", re.ASCII)


@dataclass(frozen=True)
class Tap:
    """A parsed button press: `ok` (the answer is right), `fix` (show the classes), `set` (this label: a class
    or not_kimchi) or `ask` (one of the two kimchi the model could not tell apart)."""

    action: str
    message_id: int
    class_id: int | None = None


def parse_tap(data: str | None) -> Tap | None:
    """The tap in `data`, or None when it is not one this bot could have sent."""
    m = _CALLBACK.fullmatch(data or "")
    if m is None:
        return None
    if m.group(1):
        tap = Tap(m.group(1), int(m.group(2)))
    else:
        tap = Tap(m.group(3), int(m.group(4)), int(m.group(5)))
        if tap.class_id >= (len(CLASSES) if tap.action == "ask" else len(LABELS)):  # ask offers kimchi only
            return None
    return tap if 0 < tap.message_id <= MAX_MESSAGE_ID else None


def asked_pair(prediction, ask_margin: float) -> tuple[str, str] | None:
    """The two classes an answer asked between ('A?' / 'B?'), or None when it offered ✅ / ✏️ (or nothing):
    the model's top two when they are closer than `ask_margin` and both are kimchi classes. Never for a
    not-kimchi answer (a Prediction's `answer`, a stored row's `label`), and never offering not_kimchi."""
    top = getattr(prediction, "top", None) or ()
    label = getattr(prediction, "answer", None) or getattr(prediction, "label", None)
    if (label and label != NOT_KIMCHI and len(top) >= 2 and top[0][1] - top[1][1] < ask_margin
            and is_kimchi(top[0][0]) and is_kimchi(top[1][0])):
        return top[0][0], top[1][0]
    return None


def answer_keyboard(photo_message_id: int, lang: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton(say("btn_ok", lang), callback_data=f"ok:{photo_message_id}"),
                                  InlineKeyboardButton(say("btn_fix", lang), callback_data=f"fix:{photo_message_id}")]])


def not_kimchi_keyboard(photo_message_id: int, lang: str) -> InlineKeyboardMarkup:
    """Under a not-kimchi answer: ✅ agrees (not kimchi), ✏️ says it is kimchi after all (the classes)."""
    return InlineKeyboardMarkup([[
        InlineKeyboardButton(say("btn_ok", lang), callback_data=f"ok:{photo_message_id}"),
        InlineKeyboardButton(say("btn_is_kimchi", lang), callback_data=f"fix:{photo_message_id}")]])


def ask_keyboard(photo_message_id: int, first: str, second: str, lang: str) -> InlineKeyboardMarkup:
    """The cheap question when the model's top two are close: one tap for either, or another kind."""
    row = [InlineKeyboardButton(say("btn_ask", lang, name=kimchi_name(name, lang)),
                                callback_data=f"ask:{photo_message_id}:{by_name(name).id}") for name in (first, second)]
    return InlineKeyboardMarkup([row, [InlineKeyboardButton(say("btn_other", lang),
                                                            callback_data=f"fix:{photo_message_id}")]])


def classes_keyboard(photo_message_id: int, lang: str) -> InlineKeyboardMarkup:
    """The 11 classes, three a row, and 🚫 not kimchi on a row of its own."""
    buttons = [InlineKeyboardButton(kimchi_name(c.name, lang), callback_data=f"set:{photo_message_id}:{c.id}")
               for c in CLASSES]
    none = InlineKeyboardButton(say("btn_not_kimchi", lang),
                                callback_data=f"set:{photo_message_id}:{NOT_KIMCHI_CLASS.id}")
    return InlineKeyboardMarkup([*(buttons[i:i + 3] for i in range(0, len(buttons), 3)), [none]])


def fix_again_keyboard(photo_message_id: int, lang: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton(say("btn_fix", lang), callback_data=f"fix:{photo_message_id}")]])
