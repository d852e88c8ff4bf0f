"""Admin commands (/stats, /model, /retrain, /promote, /rollback) and the Telegram side of a retrain."""
from __future__ import annotations

import html
import logging
import time
from pathlib import Path

from telegram import Update
from telegram.error import TelegramError
from telegram.ext import Application, ContextTypes

from bot.services import Services, admin_only, lang_of, sender_id, services
from bot.supervisor import Outcome, RetrainRefused, Refusal, Run, RunStatus
from bot.reports import (REFUSAL_KEYS, bar, decision_text, failure_text, left_out_text, report_table, run_reason,
                         run_status)
from bot.texts import kimchi_name, number, percent, say
from models.errors import KimchiError
from models.protocol import EpochEvent, StageEvent
from models.status import Status

log = logging.getLogger(__name__)

EDIT_INTERVAL_S = 3.0  # Telegram allows about one edit a second per chat; stay well under it
OPENSET_PNG = "openset.png"  # in a version's report/ folder: the open-set score, kimchi against negatives


class TelegramNotifier:
    """Tells the admin who started a retrain how it goes: one progress message edited, then the report."""

    def __init__(self, app: Application) -> None:
        self.app = app
        self._last_edit: dict[int, float] = {}

    async def counts(self, run: Run) -> None:
        """The data the run trains on, what the labels' statuses are, and what the audit flagged."""
        try:
            await self.app.bot.send_message(run.chat_id, counts_text(run, run.lang))
        except TelegramError:
            log.warning("could not send the retrain counts", exc_info=True)

    async def progress(self, run: Run, event: EpochEvent | StageEvent) -> None:
        """Edit the run's progress message: at most every EDIT_INTERVAL_S, always for the last epoch."""
        now = time.monotonic()
        final = isinstance(event, StageEvent) or event.epoch == event.total
        if run.epoch is None or (not final and now - self._last_edit.get(run.id, 0.0) < EDIT_INTERVAL_S):
            return
        self._last_edit[run.id] = now
        e = run.epoch
        text = say("retrain_progress", run.lang, id=run.id, epoch=e.epoch, total=e.total, phase=e.phase,
                   bar=bar(e.fraction), pct=percent(e.fraction), train=number(e.train_loss),
                   valid=number(e.valid_loss), acc=percent(e.accuracy, 1))
        if isinstance(event, StageEvent):
            text += "\n" + say("retrain_scoring", run.lang)
        if run.progress_message_id is None:
            return
        try:
            await self.app.bot.edit_message_text(text, chat_id=run.chat_id, message_id=run.progress_message_id)
        except TelegramError:
            log.warning("could not edit the retrain progress message", exc_info=True)

    def openset_png(self, version: str) -> Path | None:
        """The version's open-set histogram (report/openset.png, written when it was published), if any."""
        svc = self.app.bot_data.get("services")
        if svc is None or not version:
            return None
        png = svc.registry.path(version) / "report" / OPENSET_PNG
        return png if png.is_file() else None

    async def finished(self, run: Run, outcome: Outcome) -> None:
        """The comparison table, confusion matrix and open-set histogram when there is a result, then the
        decision or the failure."""
        self._last_edit.pop(run.id, None)
        self.app.bot_data["metrics"].retrain(outcome.status.value)
        bot, lang, result = self.app.bot, run.lang, outcome.result
        try:
            if result is not None and outcome.decision is not None:
                tset = run.training_set
                table = report_table(result, sum(tset.train_counts.values()), tset.corrections, outcome.duration_s,
                                     lang, tset.left_out)
                await bot.send_message(run.chat_id, f"<pre>{html.escape(table)}</pre>", parse_mode="HTML")
                if result.confusion_png and Path(result.confusion_png).is_file():
                    with open(result.confusion_png, "rb") as fh:
                        await bot.send_photo(run.chat_id, fh, caption=say("retrain_confusion", lang, version=result.version))
                openset = self.openset_png(result.version)
                if openset is not None:
                    with open(openset, "rb") as fh:
                        await bot.send_photo(run.chat_id, fh, caption=say("retrain_openset", lang, version=result.version))
            suspects = run.audit.suspects_png if run.audit else None
            if suspects and Path(suspects).is_file():
                with open(suspects, "rb") as fh:
                    await bot.send_photo(run.chat_id, fh, caption=say("retrain_suspects", lang, summary=run.audit.summary))
            await bot.send_message(run.chat_id, outcome_text(run, outcome))
        except TelegramError:
            log.exception("could not tell the admin how retrain run %s ended", run.id)


def outcome_text(run: Run, outcome: Outcome) -> str:
    lang = run.lang
    if outcome.status is RunStatus.CANCELLED:
        return say("retrain_cancelled", lang, id=run.id)
    if outcome.refusal is not None:
        return refusal_text(outcome.refusal, None, lang)
    if outcome.decision is not None and outcome.result is not None and outcome.failure is None:
        key = "retrain_promoted" if outcome.status is RunStatus.PROMOTED else "retrain_kept"
        return say(key, lang, version=outcome.result.version, reason=decision_text(outcome.decision, lang))
    return say("retrain_failed", lang, reason=failure_text(outcome.failure.value if outcome.failure else "internal",
                                                         outcome.detail, lang))


def status_line(run: Run | None, lang: str) -> str:
    if run is None:
        return say("retrain_idle", lang)
    if run.epoch is None:
        return say("retrain_status_starting", lang, id=run.id, elapsed=f"{run.elapsed:.0f}")
    return say("retrain_status", lang, id=run.id, epoch=run.epoch.epoch, total=run.epoch.total,
               elapsed=f"{run.elapsed:.0f}")


def counts_text(run: Run, lang: str) -> str:
    tset, labels = run.training_set, run.labels
    lines = [say("retrain_count_line_holdout", lang, label=label, n=n, holdout=tset.holdout_counts[label])
             if tset.holdout_counts.get(label) else say("retrain_count_line", lang, label=label, n=n)
             for label, n in sorted(tset.train_counts.items())]
    flagged_base = sum(1 for sha in (run.audit.flagged if run.audit else {})
                       if sha in run.collected.items and run.collected.items[sha].source == "base")
    text = say("retrain_counts", lang, lines="\n".join(lines), total=sum(tset.train_counts.values()),
               holdout=sum(tset.holdout_counts.values()), corrections=tset.corrections, disputes=tset.disputes,
               held_back=tset.held_back, moved=tset.moved, accepted=labels.get(Status.ACCEPTED, 0),
               pending=labels.get(Status.PENDING, 0), rejected=labels.get(Status.REJECTED, 0))
    left_out = left_out_text(tset.left_out, tset.min_per_class, run.forgets, lang)
    if left_out:
        text += "\n" + left_out
    if run.audit is None:
        return text + "\n" + say("retrain_no_audit", lang)
    return text + "\n" + say("retrain_audit_counts", lang, flagged=run.flagged_corrections, base=flagged_base,
                              summary=run.audit.summary)


def refusal_text(refusal: RetrainRefused, run: Run | None, lang: str) -> str:
    if refusal.code is Refusal.RUNNING:
        return say("retrain_running", lang, status=status_line(run, lang))
    return say(REFUSAL_KEYS[refusal.code.value], lang, **refusal.values)


# ---------------------------------------------------------------------------------------------
# commands

@admin_only
async def retrain(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """`/retrain` starts a retrain; `/retrain status` and `/retrain cancel` follow it."""
    sub = context.args[0].lower() if context.args else ""
    handler = {"": start_retrain, "status": retrain_status, "cancel": cancel_retrain}.get(sub)
    if handler is None:
        await update.effective_message.reply_text(say("retrain_usage", lang_of(update)))
        return
    await handler(update, services(context))


async def start_retrain(update: Update, svc: Services) -> None:
    """Gather the data and start the run (audit, split, trainer); the counts and the progress follow."""
    message, lang = update.effective_message, lang_of(update)
    supervisor = svc.retrain
    try:
        run = await supervisor.prepare(sender_id(update), message.chat_id, lang)
    except RetrainRefused as refusal:
        await message.reply_text(refusal_text(refusal, supervisor.run, lang))
        return
    except (KimchiError, OSError):
        log.exception("preparing a retrain failed")
        await message.reply_text(say("retrain_prepare_failed", lang))
        return
    supervisor.start(run)
    progress = await message.reply_text(say("retrain_starting", lang, id=run.id))
    run.progress_message_id = progress.message_id


async def retrain_status(update: Update, svc: Services) -> None:
    """The running retrain's epoch, or how the last one ended."""
    lang, message = lang_of(update), update.effective_message
    if svc.retrain.run is not None:
        await message.reply_text(status_line(svc.retrain.run, lang))
        return
    last = await svc.store.runs(limit=1)
    if not last:
        await message.reply_text(say("retrain_never", lang))
        return
    row = last[0]
    await message.reply_text(say("retrain_last", lang, id=row["id"], status=run_status(row["status"], lang),
                                 reason=run_reason(row.get("reason"), lang), candidate=row.get("candidate") or "-"))


async def cancel_retrain(update: Update, svc: Services) -> None:
    """Stop the running retrain; the serving model stays."""
    run = await svc.retrain.cancel()
    lang = lang_of(update)
    text = say("retrain_cancelling", lang, id=run.id) if run else say("retrain_idle", lang)
    await update.effective_message.reply_text(text)


@admin_only
async def promote(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """`/promote v3`: load v3, then serve it, whatever the rule said."""
    svc, lang, message = services(context), lang_of(update), update.effective_message
    if not context.args:
        await message.reply_text(say("promote_usage", lang, versions=", ".join(svc.registry.versions())))
        return
    wanted = context.args[0][:16]
    try:
        previous = await svc.serving.promote(wanted, reason="/promote", by=str(sender_id(update)))
    except KimchiError as err:
        log.warning("/promote %s failed: %s", wanted, err)
        await message.reply_text(say("promote_failed", lang, version=wanted, current=svc.serving.version or "-",
                                     detail=str(err)))
        return
    await message.reply_text(say("promoted_now", lang, version=svc.serving.version, previous=previous or "-"))


@admin_only
async def rollback(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """`/rollback`: load and serve the version that served before."""
    svc, lang = services(context), lang_of(update)
    try:
        version, before = await svc.serving.rollback(by=str(sender_id(update)))
    except KimchiError as err:
        await update.effective_message.reply_text(say("rollback_failed", lang, detail=str(err)))
        return
    await update.effective_message.reply_text(say("rolled_back", lang, version=version, previous=before or "-"))


def model_summary(svc: Services, lang: str) -> str:
    version, meta = svc.classifier.version, svc.classifier.meta
    if version is None or meta is None:
        return say("no_model", lang)
    parts = [say("model_line", lang, version=version, arch=meta.arch)]
    m = meta.metrics
    if isinstance(m.get("accuracy"), (int, float)):
        parts.append(say("model_metrics", lang, accuracy=number(m["accuracy"]), f1=number(m.get("f1_macro"))))
    if meta.created_at:
        parts.append(say("model_trained", lang, at=meta.created_at))
    return "; ".join(parts)


@admin_only
async def stats(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Predictions, corrections per class, how often the model was wrong, and the model."""
    svc, lang = services(context), lang_of(update)
    s = await svc.store.stats()
    per_class = ("\n".join(f"  {kimchi_name(name, lang)}: {n}" for name, n in s.corrections_per_class.items())
                 or say("stats_none", lang))
    await update.effective_message.reply_text(say(
        "stats", lang, predictions=s.predictions, fixes=s.fixes, confirmations=s.confirmations, per_class=per_class,
        wrong=percent(s.wrong_rate), model=model_summary(svc, lang), **await svc.ledger.counts())
        + "\n" + say("stats_erasures", lang, n=await svc.personal.erasures()))


@admin_only
async def model(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The serving version and its metrics."""
    await update.effective_message.reply_text(model_summary(services(context), lang_of(update)))
