"""The retrain supervisor: assembles the data, audits it, runs the trainer, follows its events and concludes.

It knows the store, the serving model and the trainer protocol, not Telegram: what an admin sees goes
through a `Notifier` (bot.admin gives the Telegram one; tests give a list). One run at a time:

    prepare   base + accepted labels (models.corpus), refused at once when there is nothing to learn
    audit     `kimchi-train audit` on them with the serving model (users' labels listed with the accounts behind
              them): a label from a non-admin flagged as wrong, as not kimchi or as part of a flood goes back to
              pending and sits this run out; near-duplicates are grouped for the holdout
    split     models.trainset: one side per photo (and per near-duplicate group), frozen; a class with fewer
              training images than KIMCHI_RETRAIN_MIN_PER_CLASS is left out (the admin is told), and the
              run is refused only when fewer than two classes remain
    train     `kimchi-train train … --progress json --holdout`, relayed epoch by epoch
    conclude  scored against the model serving *now*, decided by models.promotion, loaded, then pointed at

A trainer that crashes, is killed or times out leaves the serving model as it was; it dies with the bot,
and a run left 'running' by a dead bot is marked failed at the next start.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Protocol

from bot.serving import Serving
from bot.settings import Settings
from bot.store import Store
from bot.trainer_process import TrainerProcess, is_our_trainer, kimchi_train
from bot.ledger import Ledger
from models.atomic import atomic_write
from models.clock import stamp
from models.corpus import corpus_rows, read_labels
from models.errors import KimchiError
from models.holdout import read_holdout, score
from models.home import holdout_key
from models.promotion import Decision, decide
from models.protocol import AuditedEvent, EpochEvent, ErrorEvent, Event, Stage, StageEvent, TrainResult
from models.status import Status
from models.trainset import Collected, TrainingSet, build_training_set, collect_items, left_out_detail

log = logging.getLogger(__name__)

# The audit's issues that send a user's accepted label back to /review: a label that looks wrong, a kimchi label on
# a photo the open-set check calls not kimchi, one of a flood of near-identical photos from few accounts
# (training/audit.py). Outliers and near-duplicates alone are only reported.
AUDIT_ACTS_ON = frozenset({"label", "not_kimchi", "flood"})
AUDIT_JSON = "audit.json"  # the run's AuditedEvent, kept in its folder for the review desk


class RunStatus(str, Enum):
    PROMOTED = "promoted"
    KEPT = "kept"  # not promoted: the serving model stays ('rejected' before migration 6; a label's word)
    CANCELLED = "cancelled"
    FAILED = "failed"
    REFUSED = "refused"


class Failure(str, Enum):
    """Why a run ended without a decision; `detail` carries the trainer's sentence, a signal or a status."""

    TRAINER_ERROR = "trainer_error"
    SIGNAL = "signal"
    EXIT_STATUS = "exit_status"
    NO_RESULT = "no_result"
    TIMEOUT = "timeout"
    LOAD_FAILED = "load_failed"
    INTERNAL = "internal"
    BOT_STOPPED = "bot_stopped"


class Refusal(str, Enum):
    RUNNING = "running"
    TOO_FEW_CLASSES = "too_few_classes"
    TOO_FEW_TRAINABLE = "too_few_trainable"  # fewer than two classes left once those under the minimum are out
    TOO_FEW_IMAGES = "too_few_images"  # no longer raised (a short class is left out); old runs' reasons name it


class RetrainRefused(KimchiError):
    """/retrain cannot start now; `code` and `values` say why."""

    def __init__(self, code: Refusal, **values: object) -> None:
        super().__init__(f"retrain refused: {code.value} {values}")
        self.code, self.values = code, values


@dataclass
class Run:
    """One retrain as the supervisor follows it."""

    id: int
    admin_id: int | None
    chat_id: int
    lang: str
    collected: Collected
    folder: Path  # KIMCHI_HOME/runs/run-NNNN: the linked training set, holdout list, audit and logs
    started: float = field(default_factory=time.monotonic)
    training_set: TrainingSet | None = None
    audit: AuditedEvent | None = None
    flagged_corrections: int = 0
    labels: dict[str, int] = field(default_factory=dict)  # accepted / pending / rejected, after the audit
    forgets: tuple[str, ...] = ()  # left-out classes that the model serving at the split knows
    progress_message_id: int | None = None
    epoch: EpochEvent | None = None
    cancelled: bool = False
    process: TrainerProcess | None = None
    task: asyncio.Task | None = None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


@dataclass(frozen=True)
class Outcome:
    status: RunStatus
    duration_s: float
    result: TrainResult | None = None
    decision: Decision | None = None
    failure: Failure | None = None
    detail: str = ""
    refusal: RetrainRefused | None = None

    def reason_json(self) -> str:
        """What retrain_runs.reason keeps: typed, so it can be shown later in any language."""
        if self.decision is not None:
            return json.dumps({"findings": [{**asdict(f), "check": f.check.value} for f in self.decision.findings]},
                              ensure_ascii=False)
        if self.refusal is not None:
            return json.dumps({"refusal": self.refusal.code.value, **self.refusal.values}, ensure_ascii=False)
        return json.dumps({"failure": self.failure.value if self.failure else None, "detail": self.detail},
                          ensure_ascii=False)


class Notifier(Protocol):
    """What the supervisor tells the admin who started a run."""

    async def counts(self, run: Run) -> None: ...

    async def progress(self, run: Run, event: EpochEvent | StageEvent) -> None: ...

    async def finished(self, run: Run, outcome: Outcome) -> None: ...


class RetrainSupervisor:
    def __init__(self, settings: Settings, store: Store, serving: Serving, notifier: Notifier, ledger: Ledger) -> None:
        self.settings, self.store, self.serving, self.notifier, self.ledger = settings, store, serving, notifier, ledger
        self.run: Run | None = None
        self._lock = asyncio.Lock()

    async def recover(self) -> None:
        """A run left 'running' by a bot that died: its trainer is gone (or is killed now); mark it failed."""
        for row in await self.store.runs(status="running", limit=100):
            pid = row.get("pid")
            if pid and is_our_trainer(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            await self.store.update_run(row["id"], status=RunStatus.FAILED.value, finished_at=stamp(),
                                        reason=Outcome(RunStatus.FAILED, 0, failure=Failure.BOT_STOPPED).reason_json())
            log.warning("retrain run %s was left running by a previous bot process; marked failed", row["id"])

    # -- starting and stopping ----------------------------------------------------------------
    async def prepare(self, admin_id: int | None, chat_id: int, lang: str) -> Run:
        """Gather the data and record the run; RetrainRefused says why it cannot start."""
        async with self._lock:
            if self.run is not None:
                raise RetrainRefused(Refusal.RUNNING, id=self.run.id)
            home = self.settings.home
            rows = await asyncio.to_thread(corpus_rows, home, self.settings.is_admin)
            collected = await asyncio.to_thread(collect_items, home.base, rows)
            classes = {i.label for i in collected.items.values()}
            if len(classes) < 2:
                raise RetrainRefused(Refusal.TOO_FEW_CLASSES, n=len(classes))
            run_id = await self.store.start_run(admin_id, chat_id, {})
            self.run = Run(run_id, admin_id, chat_id, lang, collected, home.runs / f"run-{run_id:04d}")
            return self.run

    def start(self, run: Run) -> None:
        """Audit, split and train a prepared run, in the background."""
        run.task = asyncio.create_task(self._supervise(run))

    async def cancel(self) -> Run | None:
        """Stop the running retrain, at whatever stage it is; returns it (None when idle)."""
        run = self.run
        if run is None:
            return None
        run.cancelled = True
        if run.process is not None:
            await run.process.stop()
        return run

    async def shutdown(self) -> None:
        """The bot is stopping: cancel, and wait for the run to be recorded."""
        run = await self.cancel()
        if run is not None and run.task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(run.task), timeout=15)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - shutting down regardless
                log.warning("retrain supervisor did not finish cleanly during shutdown")

    # -- the commands it runs ---------------------------------------------------------------
    def audit_command(self, items_file: Path, out_dir: Path) -> list[str]:
        return kimchi_train(self.settings.home.root, "audit", "--items", str(items_file), "--out", str(out_dir),
                            "--progress", "json", "--device", self.settings.device)

    def trainer_env(self) -> dict[str, str]:
        """What the trainer's engine (holdout scoring, the audit's embeddings) runs on the CPU: the bot's own
        choice, which may come from .env and so not be in the environment the trainer inherits."""
        return {"KIMCHI_CPU_RUNTIME": self.settings.cpu_runtime}

    def command(self, tset: TrainingSet) -> list[str]:
        home = self.settings.home
        return kimchi_train(home.root, "train", str(tset.train_dir), *self.settings.train_args, "--progress", "json",
                            "--holdout", str(tset.holdout_file), "--report-dir", str(tset.run_dir),
                            "--cache", str(home.cache), "--device", self.settings.device,
                            *(("--gpus", str(self.settings.train_gpus)) if self.settings.train_gpus > 1 else ()))

    # -- the run ----------------------------------------------------------------------------
    async def _supervise(self, run: Run) -> None:
        try:
            outcome = await self._stages(run)
        except Exception as err:  # the supervisor must never take the bot down
            log.exception("retrain run %s failed in the bot", run.id)
            outcome = Outcome(RunStatus.FAILED, run.elapsed, failure=Failure.INTERNAL, detail=type(err).__name__)
        try:
            await self._record(run, outcome)
        finally:
            self.run = None
        await self.notifier.finished(run, outcome)

    async def _stages(self, run: Run) -> Outcome:
        run.folder.mkdir(parents=True, exist_ok=True)
        if not run.cancelled and self.settings.retrain_audit and self.serving.version is not None:
            await self._audit(run)
        if run.cancelled:
            return Outcome(RunStatus.CANCELLED, run.elapsed)
        groups = run.audit.groups if run.audit else []
        run.training_set = await asyncio.to_thread(
            build_training_set, run.folder, run.collected, await self.store.splits(),
            self.settings.holdout_pct, holdout_key(self.settings.home), groups, self.settings.retrain_min_per_class)
        await self.store.add_splits(run.training_set.new_splits)
        run.forgets = self._forgets(run.training_set)
        try:
            self._check_counts(run.training_set)
        except RetrainRefused as refusal:
            return Outcome(RunStatus.REFUSED, run.elapsed, refusal=refusal)
        run.labels = await self.ledger.counts()
        await self.store.update_run(run.id, counts_json=json.dumps(self._counts(run), ensure_ascii=False))
        await self.notifier.counts(run)
        if run.cancelled:  # cancelled (or shutting down) before the spawn
            return Outcome(RunStatus.CANCELLED, run.elapsed)
        return await self._train(run)

    async def _audit(self, run: Run) -> None:
        """Flag what the audit finds; accepted labels from non-admins that it flags wait for an admin again."""
        items_file, out_dir = run.folder / "audit-items.jsonl", run.folder / "audit"
        accounts = await asyncio.to_thread(self._accounts)

        def line(sha: str, item) -> dict:
            row = {"path": str(item.path), "label": item.label, "sha256": sha}
            if item.source == "correction":  # a user's label: the audit's open-set and flood checks read `users`
                row["users"] = accounts.get((sha, item.label), [])
            return row

        items_file.write_text("".join(json.dumps(line(sha, i), ensure_ascii=False) + "\n"
                                      for sha, i in sorted(run.collected.items.items())), encoding="utf-8")
        run.process = TrainerProcess(self.audit_command(items_file, out_dir), run.folder / "audit.log",
                                     env=self.trainer_env())
        await run.process.start()
        try:
            code = await run.process.finish(self.settings.retrain_timeout_min * 60)
        except asyncio.TimeoutError:
            code = -1
        run.audit = next((e for e in run.process.events if isinstance(e, AuditedEvent)), None)
        run.process = None
        if code != 0 or run.audit is None:
            log.warning("retrain %s: the audit did not finish (status %s); training without it", run.id, code)
            return
        # what the review desk shows of the last audit (its near-duplicate groups); sha256s and labels, no users
        atomic_write(run.folder / AUDIT_JSON, run.audit.to_json().encode("utf-8"))
        removable = {sha for sha, item in run.collected.items.items()
                     if item.source == "correction" and not item.admin_decided}
        flagged = {sha: ",".join(issues) for sha, issues in run.audit.flagged.items()
                   if sha in removable and AUDIT_ACTS_ON.intersection(issues)}
        run.flagged_corrections = await self.ledger.flag(flagged)
        for sha in flagged:
            run.collected.items.pop(sha, None)
            run.collected.corrections -= 1

    def _accounts(self) -> dict[tuple[str, str], list[int]]:
        """(sha256, label) -> the accounts that gave that photo that label (not rejected), for the flood check."""
        found: dict[tuple[str, str], set[int]] = {}
        for row in read_labels(self.settings.home.database):
            if row.status != Status.REJECTED and row.user_id is not None:
                found.setdefault((row.sha256, row.label), set()).add(row.user_id)
        return {key: sorted(ids) for key, ids in found.items()}

    def _check_counts(self, tset: TrainingSet) -> None:
        """A class under the minimum is already left out (models.trainset); refused only when fewer than two
        classes remain to train on. A handful of labels of a new class cannot stop every retrain."""
        if len(tset.train_counts) >= 2:
            return
        if tset.left_out:
            raise RetrainRefused(Refusal.TOO_FEW_TRAINABLE, n=len(tset.train_counts), minimum=tset.min_per_class,
                                 detail=left_out_detail(tset.left_out))
        raise RetrainRefused(Refusal.TOO_FEW_CLASSES, n=len(tset.train_counts))

    def _forgets(self, tset: TrainingSet) -> tuple[str, ...]:
        """Left-out classes the serving model can name: promoting the candidate would make the bot forget them.
        Their holdout photos are not scored (for either model), so the comparison cannot show it: the admin
        is told instead."""
        version = self.serving.version
        if not tset.left_out or version is None:
            return ()
        try:
            vocab = set(self.serving.registry.meta(version).vocab)
        except (KimchiError, OSError, ValueError):
            log.warning("could not read the classes of %s", version, exc_info=True)
            return ()
        return tuple(sorted(set(tset.left_out) & vocab))

    def _counts(self, run: Run) -> dict:
        tset = run.training_set
        audit = run.audit
        return {"train": tset.train_counts, "holdout": tset.holdout_counts, "corrections": tset.corrections,
                "disputes": tset.disputes, "held_back": tset.held_back, "moved": tset.moved, "labels": run.labels,
                "left_out": tset.left_out, "min_per_class": tset.min_per_class, "forgets": list(run.forgets),
                "flagged_corrections": run.flagged_corrections,
                "flagged_base": sum(1 for sha in (audit.flagged if audit else {})
                                    if run.collected.items.get(sha) and run.collected.items[sha].source == "base")}

    async def _train(self, run: Run) -> Outcome:
        async def relay(event: Event) -> None:
            if isinstance(event, EpochEvent):
                run.epoch = event
                await self.notifier.progress(run, event)
            elif isinstance(event, StageEvent) and event.stage is Stage.SCORING:
                await self.notifier.progress(run, event)

        process = run.process = TrainerProcess(self.command(run.training_set), run.folder / "train.log", relay,
                                               env=self.trainer_env())
        await process.start()
        if run.cancelled:  # cancelled while spawning: the process exists now, so stop it
            await process.stop()
        await self.store.update_run(run.id, pid=process.pid)
        try:
            code = await process.finish(self.settings.retrain_timeout_min * 60)
        except asyncio.TimeoutError:
            return Outcome(RunStatus.FAILED, run.elapsed, failure=Failure.TIMEOUT,
                           detail=f"{self.settings.retrain_timeout_min:g}")
        if run.cancelled:
            return Outcome(RunStatus.CANCELLED, run.elapsed)
        if code != 0:
            return self._failure(run, process, code)
        return await self._conclude(run, TrainResult.from_events(process.events))

    def _failure(self, run: Run, process: TrainerProcess, code: int) -> Outcome:
        said = next((e for e in reversed(process.events) if isinstance(e, ErrorEvent)), None)
        if said is not None:
            return Outcome(RunStatus.FAILED, run.elapsed, failure=Failure.TRAINER_ERROR, detail=said.message)
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            return Outcome(RunStatus.FAILED, run.elapsed, failure=Failure.SIGNAL, detail=name)
        return Outcome(RunStatus.FAILED, run.elapsed, failure=Failure.EXIT_STATUS, detail=str(code))

    async def _conclude(self, run: Run, result: TrainResult | None) -> Outcome:
        """Decide against the model serving now (not at the start), and promote under the serving lock."""
        if result is None:
            return Outcome(RunStatus.FAILED, run.elapsed, failure=Failure.NO_RESULT)
        async with self.serving.lock:
            serving = self.serving.version
            current = result.current
            if serving is not None and (current is None or current.version != serving):
                log.info("retrain %s: %s serves now, not %s; scoring it on the holdout", run.id, serving,
                         current.version if current else None)
                rows = read_holdout(run.training_set.holdout_file)
                current = (await asyncio.to_thread(score, self.serving.registry, serving, rows, "cpu",
                                                   self.settings.cpu_runtime))[0] if rows else None
                result = TrainResult(**{**result.__dict__, "current": current})
            decision = decide(result.candidate, current, self.settings.promote_tolerance,
                              self.settings.promote_class_drop)
            if not decision.promote:
                return Outcome(RunStatus.KEPT, run.elapsed, result, decision)
            try:
                await self.serving.promote_locked(result.version, reason=f"/retrain run {run.id}",
                                                  by=str(run.admin_id))
            except KimchiError as err:
                log.exception("retrain %s: %s could not be served", run.id, result.version)
                return Outcome(RunStatus.FAILED, run.elapsed, result, failure=Failure.LOAD_FAILED, detail=str(err))
        return Outcome(RunStatus.PROMOTED, run.elapsed, result, decision)

    async def _record(self, run: Run, outcome: Outcome) -> None:
        result = outcome.result
        tail = run.process.stderr_tail if run.process else ()
        await self.store.update_run(
            run.id, status=outcome.status.value, finished_at=stamp(), duration_s=round(outcome.duration_s, 1),
            candidate=result.version if result else None,
            baseline=result.current.version if result and result.current else None,
            metrics_json=json.dumps(result.summary(), ensure_ascii=False) if result else None,
            decision=None if outcome.decision is None else ("promote" if outcome.decision.promote else "keep"),
            reason=outcome.reason_json(), log_tail="\n".join(tail))
