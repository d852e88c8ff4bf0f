"""`/retrain`: grow the model from users' corrections, promote it only when measurably no worse, swap it live.

The bot assembles the training set (base data plus corrections, deduplicated by sha256, a user's label
winning), keeps a frozen holdout out of it, and runs `kimchi-train train … --progress json --holdout …`
as a subprocess, relaying its epochs to the admin. The trainer scores the candidate and the serving model
on the holdout; the rule in models.promotion decides; the registry switches `current`; the engine swaps.

A trainer that crashes, runs out of memory or is killed leaves the bot serving the old model; a trainer
dies with the bot (PR_SET_PDEATHSIG), and a run left 'running' by a dead bot is marked failed at start.
"""
from __future__ import annotations

import asyncio
import collections
import html
import json
import logging
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from telegram import Update
from telegram.error import TelegramError
from telegram.ext import Application, ContextTypes

from bot.store import stamp
from bot.services import admin_only, lang_of, services
from bot.texts import say
from models.artifact import fsync_write
from models.datafiles import file_sha256, image_files, jpeg_bytes, label_of, presized, read_manifest
from models.errors import ImageRejected, KimchiError
from models.labels import nfc
from models.preprocess import decode_rgb
from models.promotion import Decision, TrainResult, decide

log = logging.getLogger(__name__)

EDIT_INTERVAL_S = 3.0  # Telegram allows about one edit a second per chat; stay well under it
LOG_TAIL_LINES = 40
# prctl(PR_SET_PDEATHSIG, SIGKILL), then exec: the trainer dies with the bot, even after kill -9.
_LAUNCHER = ("import ctypes, os, sys\n"
             "try: ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)\n"
             "except AttributeError: pass  # not Linux: no parent-death signal\n"
             "if os.getppid() != int(sys.argv[1]): sys.exit(70)\n"
             "os.execv(sys.executable, [sys.executable] + sys.argv[2:])\n")


def holdout_side(sha256: str, pct: float) -> str:
    """The frozen-holdout rule: by hash, so an image always falls on the same side, base or correction."""
    return "holdout" if int(sha256[:8], 16) % 10_000 < pct * 100 else "train"


@dataclass
class Item:
    sha256: str
    label: str
    path: Path
    source: str  # base | correction


@dataclass
class TrainingSet:
    run_dir: Path
    train_dir: Path
    holdout_file: Path
    train_counts: dict[str, int]
    holdout_counts: dict[str, int]
    corrections: int
    overridden: int  # base images whose label a user changed
    new_splits: list[tuple[str, str, str]] = field(default_factory=list)


def collect_items(base: Path, corrections: list[dict[str, Any]]) -> tuple[dict[str, Item], int]:
    """Base images (manifest, or the folders when there is none) and corrections, one per sha256.

    A user's label wins over the base label for the same image. Returns the items and how many base
    labels were overridden.
    """
    items: dict[str, Item] = {}
    rows = read_manifest(base)
    if rows:
        for row in rows:
            path = base / row["path"]
            if path.is_file():
                items[row["sha256"]] = Item(row["sha256"], nfc(row["class"]), path, "base")
    elif base.is_dir():
        for path in image_files(base):
            sha = file_sha256(path)
            items[sha] = Item(sha, label_of(path), path, "base")
    overridden = 0
    for row in corrections:
        path = Path(row["path"])
        if not path.is_file():
            log.warning("correction image %s is missing; left out", path)
            continue
        previous = items.get(row["sha256"])
        if previous is not None and previous.source == "base" and previous.label != row["corrected_label"]:
            overridden += 1
        items[row["sha256"]] = Item(row["sha256"], row["corrected_label"], path, "correction")
    return items, overridden


def build_training_set(run_dir: Path, items: dict[str, Item], splits: dict[str, str], holdout_pct: float,
                       cache: Path, presize: int, overridden: int = 0) -> TrainingSet:
    """Link training images into run_dir/train/<label>/, list the holdout in run_dir/holdout.jsonl.

    Images seen for the first time get their side by `holdout_side`; earlier decisions (in `splits`)
    stand, so the holdout stays frozen. Corrections, full-size phone photos, are presized once into
    `cache` so that training does not decode them at full size every epoch.
    """
    train_dir, holdout_file = run_dir / "train", run_dir / "holdout.jsonl"
    train_dir.mkdir(parents=True, exist_ok=True)
    new_splits = []
    train_counts: dict[str, int] = collections.Counter()
    holdout_counts: dict[str, int] = collections.Counter()
    holdout_rows = []
    for sha, item in sorted(items.items()):
        side = splits.get(sha)
        if side is None:
            side = holdout_side(sha, holdout_pct)
            new_splits.append((sha, side, item.source))
        if side == "holdout":
            holdout_rows.append({"path": str(item.path), "label": item.label, "source": item.source, "sha256": sha})
            holdout_counts[item.label] += 1
            continue
        source = item.path if item.source == "base" else _presized_copy(item.path, sha, cache, presize)
        if source is None:
            continue
        link = train_dir / item.label / f"{sha}{source.suffix.lower() or '.jpg'}"
        link.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, link)
        except OSError:  # another filesystem: a symlink reads the same
            link.symlink_to(source.resolve())
        train_counts[item.label] += 1
    holdout_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in holdout_rows), encoding="utf-8")
    return TrainingSet(run_dir, train_dir, holdout_file, dict(train_counts), dict(holdout_counts),
                       sum(1 for i in items.values() if i.source == "correction"),
                       overridden, new_splits)


def _presized_copy(path: Path, sha: str, cache: Path, presize: int) -> Path | None:
    target = cache / f"presized-{presize}" / f"{sha}.jpg"
    if target.is_file():
        return target
    try:
        img = presized(decode_rgb(path.read_bytes()), presize)
    except (ImageRejected, OSError) as err:
        log.warning("correction %s cannot be read (%s); left out", path, err)
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    fsync_write(target, jpeg_bytes(img))
    return target


def presize_of(args: tuple[str, ...]) -> int:
    for i, arg in enumerate(args):
        if arg == "--presize" and i + 1 < len(args) and args[i + 1].isdigit():
            return int(args[i + 1])
        if arg.startswith("--presize=") and arg.split("=", 1)[1].isdigit():
            return int(arg.split("=", 1)[1])
    return 460


def bar(fraction: float, width: int = 10) -> str:
    filled = max(0, min(width, round(fraction * width)))
    return "▓" * filled + "░" * (width - filled)


# ---------------------------------------------------------------------------------------------

@dataclass
class Run:
    id: int
    admin_id: int | None
    chat_id: int
    lang: str
    started: float
    training_set: TrainingSet
    baseline: str | None
    process: asyncio.subprocess.Process | None = None
    message_id: int | None = None
    last_edit: float = 0.0
    epoch: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    stderr_tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=LOG_TAIL_LINES))
    cancelled: bool = False
    task: asyncio.Task | None = None


class RetrainManager:
    """One retrain at a time, supervised from the bot's event loop."""

    def __init__(self, services, app: Application) -> None:
        self.svc = services
        self.app = app
        self.run: Run | None = None
        self._lock = asyncio.Lock()

    @property
    def home(self):
        return self.svc.settings.home

    async def recover(self) -> None:
        """A run left 'running' by a bot that died: its trainer is gone (or is killed now); mark it failed."""
        for row in await self.svc.store.runs(status="running", limit=100):
            pid = row.get("pid")
            if pid and _is_our_trainer(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            await self.svc.store.update_run(row["id"], status="failed", finished_at=stamp(),
                                            reason="the bot stopped while this retrain was running")
            log.warning("retrain run %s was left running by a previous bot process; marked failed", row["id"])

    # -- commands ------------------------------------------------------------------------------
    async def start(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message, lang = update.effective_message, lang_of(update)
        async with self._lock:
            if self.run is not None:
                await message.reply_text(say("retrain_running", lang, status=self.status_line(lang)))
                return
            run_id = None
            try:
                corrections = await self.svc.store.latest_corrections()
                splits = await self.svc.store.splits()
                items, overridden = await asyncio.to_thread(collect_items, self.home.base, corrections)
                refusal = self.refusal(items, lang)
                if refusal:
                    await message.reply_text(refusal)
                    return
                run_id = await self.svc.store.start_run(update.effective_user.id if update.effective_user else None,
                                                        message.chat_id, {})
                run_dir = self.home.runs / f"run-{run_id:04d}"
                tset = await asyncio.to_thread(build_training_set, run_dir, items, splits, self.svc.settings.holdout_pct,
                                               self.home.cache, presize_of(self.svc.settings.train_args), overridden)
                await self.svc.store.add_splits(tset.new_splits)
                refusal = self.refusal_after_split(tset, lang)
                if refusal:
                    await self.svc.store.update_run(run_id, status="refused", finished_at=stamp(), reason=refusal)
                    await message.reply_text(refusal)
                    return
                counts = {"train": tset.train_counts, "holdout": tset.holdout_counts,
                          "corrections": tset.corrections, "overridden": tset.overridden}
                await self.svc.store.update_run(run_id, counts_json=json.dumps(counts, ensure_ascii=False))
            except (KimchiError, OSError) as err:
                log.exception("preparing a retrain failed")
                if run_id is not None:
                    await self.svc.store.update_run(run_id, status="failed", finished_at=stamp(), reason=str(err))
                await message.reply_text(say("retrain_prepare_failed", lang, reason=str(err)))
                return
            await message.reply_text(self.counts_text(tset, lang))
            run = Run(run_id, update.effective_user.id if update.effective_user else None, message.chat_id, lang,
                      time.monotonic(), tset, self.svc.registry.current())
            progress = await message.reply_text(say("retrain_starting", lang))
            run.message_id = progress.message_id
            self.run = run
            run.task = asyncio.create_task(self._supervise(run))

    def refusal(self, items: dict[str, Item], lang: str) -> str | None:
        labels = {i.label for i in items.values()}
        if len(labels) < 2:
            return say("retrain_too_few_classes", lang, n=len(labels))
        return None

    def refusal_after_split(self, tset: TrainingSet, lang: str) -> str | None:
        minimum = self.svc.settings.retrain_min_per_class
        short = {label: n for label, n in tset.train_counts.items() if n < minimum}
        if short:
            detail = ", ".join(f"{label} {n}" for label, n in sorted(short.items()))
            return say("retrain_too_few", lang, detail=detail, minimum=minimum)
        if len(tset.train_counts) < 2:
            return say("retrain_too_few_classes", lang, n=len(tset.train_counts))
        return None

    def counts_text(self, tset: TrainingSet, lang: str) -> str:
        lines = [f"{label}: {n}" + (f" (+{tset.holdout_counts.get(label, 0)} holdout)" if tset.holdout_counts.get(label) else "")
                 for label, n in sorted(tset.train_counts.items())]
        return say("retrain_counts", lang, lines="\n".join(lines), total=sum(tset.train_counts.values()),
                   holdout=sum(tset.holdout_counts.values()), corrections=tset.corrections,
                   overridden=tset.overridden)

    def status_line(self, lang: str) -> str:
        run = self.run
        if run is None:
            return say("retrain_idle", lang)
        elapsed = time.monotonic() - run.started
        if run.epoch is None:
            return say("retrain_status_starting", lang, id=run.id, elapsed=f"{elapsed:.0f}")
        e = run.epoch
        return say("retrain_status", lang, id=run.id, epoch=e["epoch"], total=e["total"], elapsed=f"{elapsed:.0f}")

    async def status(self, update: Update) -> None:
        lang = lang_of(update)
        if self.run is not None:
            await update.effective_message.reply_text(self.status_line(lang))
            return
        last = await self.svc.store.runs(limit=1)
        if not last:
            await update.effective_message.reply_text(say("retrain_never", lang))
            return
        row = last[0]
        await update.effective_message.reply_text(say("retrain_last", lang, id=row["id"], status=row["status"],
                                                      reason=row.get("reason") or "-", candidate=row.get("candidate") or "-"))

    async def cancel(self, update: Update) -> None:
        lang = lang_of(update)
        run = self.run
        if run is None:
            await update.effective_message.reply_text(say("retrain_idle", lang))
            return
        run.cancelled = True
        await self._stop_process(run)
        await update.effective_message.reply_text(say("retrain_cancelling", lang, id=run.id))

    async def shutdown(self) -> None:
        """The bot is stopping: stop the trainer and record why."""
        run = self.run
        if run is None:
            return
        run.cancelled = True
        await self._stop_process(run)
        if run.task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(run.task), timeout=15)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - shutting down regardless
                log.warning("retrain supervisor did not finish cleanly during shutdown")

    # -- the run -------------------------------------------------------------------------------
    def command(self, tset: TrainingSet) -> list[str]:
        args = [str(os.getpid()), "-m", "training.cli", "--home", str(self.home.root), "train", str(tset.train_dir),
                "--progress", "json", "--holdout", str(tset.holdout_file), "--report-dir", str(tset.run_dir),
                "--device", self.svc.settings.device, *self.svc.settings.train_args]
        return [sys.executable, "-c", _LAUNCHER, *args]

    async def _supervise(self, run: Run) -> None:
        try:
            await self._run_trainer(run)
        except Exception:  # the supervisor must never take the bot down
            log.exception("retrain run %s failed in the bot", run.id)
            await self._finish(run, "failed", say("retrain_crashed", run.lang, reason="internal error, see the log"))
        finally:
            self.run = None

    async def _run_trainer(self, run: Run) -> None:
        cmd = self.command(run.training_set)
        log.info("retrain %s: %s", run.id, " ".join(shlex.quote(c) for c in cmd[3:]))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        run.process = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True, env=env,
            limit=16 * 1024 * 1024)
        await self.svc.store.update_run(run.id, pid=run.process.pid)
        log_file = open(run.training_set.run_dir / "train.log", "a", encoding="utf-8")
        try:
            await asyncio.gather(self._read_events(run, log_file), self._read_stderr(run, log_file))
            code = await run.process.wait()
        finally:
            log_file.close()
        if run.cancelled:
            await self._finish(run, "cancelled", say("retrain_cancelled", run.lang, id=run.id))
            return
        if code != 0:
            reason = _exit_reason(code, run.stderr_tail)
            await self._finish(run, "failed", say("retrain_crashed", run.lang, reason=reason))
            return
        await self._conclude(run)

    async def _read_events(self, run: Run, log_file) -> None:
        assert run.process and run.process.stdout
        async for raw in run.process.stdout:
            line = raw.decode("utf-8", "replace").strip()
            log_file.write(line + "\n")
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            run.events.append(event)
            if event.get("stage") == "epoch":
                run.epoch = event
                await self._show_progress(run, final=event.get("epoch") == event.get("total"))
            elif event.get("stage") in ("comparing",):
                await self._show_progress(run, final=True, note=say("retrain_comparing", run.lang))

    async def _read_stderr(self, run: Run, log_file) -> None:
        assert run.process and run.process.stderr
        async for raw in run.process.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            log_file.write(line + "\n")
            if line:
                run.stderr_tail.append(line)

    async def _show_progress(self, run: Run, final: bool = False, note: str = "") -> None:
        now = time.monotonic()
        if not final and now - run.last_edit < EDIT_INTERVAL_S:
            return
        run.last_edit = now
        e = run.epoch
        if e is None:
            return
        metrics = e.get("metrics") or {}
        text = say("retrain_progress", run.lang, id=run.id, epoch=e["epoch"], total=e["total"],
                   bar=bar(e["epoch"] / max(1, e["total"])), pct=f"{100 * e['epoch'] / max(1, e['total']):.0f}",
                   train=_fmt(e.get("train_loss")), valid=_fmt(e.get("valid_loss")),
                   acc=_pct(metrics.get("accuracy")), phase=e.get("phase", ""))
        if note:
            text += f"\n{note}"
        await self._edit(run, text)

    async def _edit(self, run: Run, text: str) -> None:
        if run.message_id is None:
            return
        try:
            await self.app.bot.edit_message_text(text, chat_id=run.chat_id, message_id=run.message_id)
        except TelegramError:
            log.warning("could not edit the retrain progress message", exc_info=True)

    async def _conclude(self, run: Run) -> None:
        result = TrainResult.from_events(run.events)
        if result is None:
            await self._finish(run, "failed", say("retrain_crashed", run.lang, reason="the trainer reported no result"))
            return
        decision = decide(result.candidate, result.current, self.svc.settings.promote_tolerance)
        if decision.promote:
            self.svc.registry.promote(result.version, reason=f"/retrain run {run.id}: {decision.reason}",
                                      by=str(run.admin_id))
            await self.svc.classifier.aswap(result.version)
        duration = time.monotonic() - run.started
        await self._send_report(run, result, decision, duration)
        await self.svc.store.update_run(
            run.id, status="promoted" if decision.promote else "rejected", finished_at=stamp(),
            duration_s=round(duration, 1), candidate=result.version,
            baseline=result.current.version if result.current else None,
            metrics_json=json.dumps(result.summary(), ensure_ascii=False), decision="promote" if decision.promote else "keep",
            reason=decision.reason, log_tail="\n".join(run.stderr_tail))

    async def _send_report(self, run: Run, result: TrainResult, decision: Decision, duration: float) -> None:
        table = report_table(result, run.training_set, duration)
        bot = self.app.bot
        try:
            await bot.send_message(run.chat_id, f"<pre>{html.escape(table)}</pre>", parse_mode="HTML")
            if result.confusion_png and Path(result.confusion_png).is_file():
                with open(result.confusion_png, "rb") as fh:
                    await bot.send_photo(run.chat_id, fh,
                                         caption=say("retrain_confusion", run.lang, version=result.version))
            key = "retrain_promoted" if decision.promote else "retrain_kept"
            await bot.send_message(run.chat_id, say(key, run.lang, version=result.version, reason=decision.reason))
        except TelegramError:
            log.exception("could not send the retrain report")

    async def _finish(self, run: Run, status: str, text: str) -> None:
        await self.svc.store.update_run(run.id, status=status, finished_at=stamp(),
                                        duration_s=round(time.monotonic() - run.started, 1), reason=text,
                                        log_tail="\n".join(run.stderr_tail))
        try:
            await self.app.bot.send_message(run.chat_id, text)
        except TelegramError:
            log.warning("could not tell the admin how retrain run %s ended", run.id, exc_info=True)

    async def _stop_process(self, run: Run) -> None:
        process = run.process
        if process is None or process.returncode is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=10)
            except asyncio.TimeoutError:
                os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _is_our_trainer(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return b"training.cli" in cmdline


def _exit_reason(code: int, tail: collections.deque) -> str:
    last = next((line for line in reversed(tail) if line.startswith("kimchi-train")), None)
    if last:
        return last.split(": ", 1)[-1]
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else f"signal {-code}"
        hint = " (out of memory, or killed)" if -code == signal.SIGKILL else ""
        return f"the trainer was stopped by {name}{hint}"
    return f"the trainer exited with status {code}"


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "-"


def report_table(result: TrainResult, tset: TrainingSet, duration: float) -> str:
    """Old against new, in text: overall figures, per-class F1 with deltas, data and time."""
    candidate, current = result.candidate, result.current

    def row(name: str, new: float | None, old: float | None) -> str:
        delta = f"{new - old:+.3f}" if new is not None and old is not None else ""
        return f"{name:<16}{_num(old):>8}{_num(new):>8}{delta:>8}"

    old_name = current.version if current else "-"
    lines = [f"{'':<16}{old_name:>8}{candidate.version:>8}{'Δ':>8}",
             row("accuracy", candidate.accuracy, current.accuracy if current else None),
             row("macro precision", candidate.precision_macro, current.precision_macro if current else None),
             row("macro recall", candidate.recall_macro, current.recall_macro if current else None),
             row("macro F1", candidate.f1_macro, current.f1_macro if current else None),
             row(f"corrections n={candidate.corrections_n}", candidate.corrections_accuracy,
                 current.corrections_accuracy if current else None),
             "per-class F1:"]
    for label in sorted(candidate.per_class_f1):
        lines.append(row(f" {label}", candidate.per_class_f1[label],
                         current.per_class_f1.get(label) if current else None))
    lines += [f"holdout: {candidate.n} images (frozen)",
              f"training: {sum(tset.train_counts.values())} images, {tset.corrections} corrections "
              f"({tset.overridden} relabelled base images)",
              f"kept epoch {result.kept_epoch}; training {result.train_time_s:.0f} s; whole run {duration:.0f} s"]
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "-"


# ---------------------------------------------------------------------------------------------
# the admin commands (registered in bot.app)

@admin_only
async def retrain(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """`/retrain` starts a retrain; `/retrain status` and `/retrain cancel` follow it."""
    svc = services(context)
    sub = (context.args[0].lower() if context.args else "")
    if sub == "status":
        await svc.retrain.status(update)
    elif sub == "cancel":
        await svc.retrain.cancel(update)
    elif sub:
        await update.effective_message.reply_text(say("retrain_usage", lang_of(update)))
    else:
        await svc.retrain.start(update, context)


@admin_only
async def promote(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """`/promote v3`: serve that version now, whatever the rule said."""
    svc, lang = services(context), lang_of(update)
    if not context.args:
        await update.effective_message.reply_text(say("promote_usage", lang, versions=", ".join(svc.registry.versions())))
        return
    try:
        version = svc.registry.resolve(context.args[0])
        previous = svc.registry.promote(version, reason="/promote", by=str(update.effective_user.id))
        await svc.classifier.aswap(version)
    except KimchiError as err:
        await update.effective_message.reply_text(str(err))
        return
    await update.effective_message.reply_text(say("promoted_now", lang, version=version, previous=previous or "-"))


@admin_only
async def rollback(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """`/rollback`: return to the version that served before."""
    svc, lang = services(context), lang_of(update)
    try:
        before = svc.registry.current()
        version = svc.registry.rollback(by=str(update.effective_user.id))
        await svc.classifier.aswap(version)
    except KimchiError as err:
        await update.effective_message.reply_text(str(err))
        return
    await update.effective_message.reply_text(say("rolled_back", lang, version=version, previous=before or "-"))
