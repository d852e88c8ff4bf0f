"""A user's label: its status (what becomes of it) and its source (how the user gave it).

One spelling for both rooms: the bot writes these words into corrections.status and corrections.source
(bot.store, bot.ledger), the trainer reads them back (models.corpus, `kimchi-train export-dataset`). What
decided a status is the bot's policy (bot.trust.Basis). A retrain that was not promoted is *kept*
(bot.supervisor.RunStatus), never `rejected`: that word is a label's.
"""
from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    ACCEPTED = "accepted"  # trained on
    PENDING = "pending"  # waits for an admin's /review
    REJECTED = "rejected"  # kept, never used


class Source(StrEnum):
    CORRECTION = "correction"  # /correct, or a class button under the model's answer
    CONFIRM = "confirm"  # ✅ on the model's answer
    ASK = "ask"  # one of the two classes the bot asked between
    DISPUTE = "dispute"  # disagrees with the base set's label of the photo: an admin decides
    LABEL = "label"  # a class button in labelling mode (no model answer)
