"""Prometheus metrics and the health report, for `GET /metrics` and `GET /healthz`.

Each Application gets its own `BotMetrics` with its own CollectorRegistry (not prometheus-client's global
one), so a process, or a test, can hold several bots. Handlers count through small methods
(`photo`, `photo_answered`, `not_kimchi_answer`, `correction`, `retrain`); the engine reports batch sizes
through its `on_batch` hook; the queue depth and the serving version are read from the engine when scraped.
"""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import InfoMetricFamily
from prometheus_client.registry import Collector
from telegram import Update
from telegram.ext import Application, ContextTypes, TypeHandler

log = logging.getLogger(__name__)

# Photo outcomes: "answered" (a label, or the class buttons in labelling mode), "rejected" (with the
# engine's or the handler's reason), "busy", "rate_limited", "too_big", "download_failed", "engine_failed".
PHOTO_OUTCOMES = ("answered", "rejected", "busy", "rate_limited", "too_big", "download_failed", "engine_failed")
# What said a photo is not kimchi: the classifier's not_kimchi class (a model trained with negatives), or the
# version's open-set score over its calibrated threshold.
NOT_KIMCHI_BY = ("class", "score")
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# An update handler in a group after every other: it runs once the real handler has finished.
LAST_GROUP = 10_000
DB_PROBE_TTL_S = 5.0  # /healthz may be polled every second; the write probe runs at most this often


class _ServingInfo(Collector):
    """kimchi_serving_info{version, arch, device}, read from the engine at scrape time (it swaps live)."""

    def __init__(self, metrics: "BotMetrics") -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[InfoMetricFamily]:
        family = InfoMetricFamily("kimchi_serving", "The model version the bot serves.")
        classifier = self.metrics.classifier
        if classifier is not None:
            meta = classifier.meta
            family.add_metric([], {"version": classifier.version or "none", "device": classifier.device,
                                   "arch": getattr(meta, "arch", "") or ""})
        yield family


class BotMetrics:
    """One bot's counters, histograms and gauges, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.classifier: Any = None  # models.engine.Classifier, bound at start
        self.last_update: float | None = None  # time.monotonic() when an update was last handled
        r = self.registry
        self.photos = Counter("kimchi_photos", "Photos and image files by outcome; reason for rejections.",
                              ["outcome", "reason"], registry=r)
        self.photo_seconds = Histogram("kimchi_photo_reply_seconds", "From a photo's update to the bot's answer.",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("kimchi_engine_batch_size", "Images per engine batch.", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.queue_depth = Gauge("kimchi_engine_queue_depth", "Images waiting in, or running through, the engine.",
                                 registry=r)
        self.queue_depth.set_function(self._queued)
        self.not_kimchi = Counter("kimchi_not_kimchi_answers", "Photos answered 'not kimchi', by what said so: "
                                  "the classifier's not_kimchi class or the open-set score.", ["by"], registry=r)
        for by in NOT_KIMCHI_BY:  # both series from the start, at 0
            self.not_kimchi.labels(by=by)
        self.corrections = Counter("kimchi_corrections", "Labels users gave, by status.", ["status"], registry=r)
        self.retrains = Counter("kimchi_retrain_runs", "Retrain runs by decision.", ["decision"], registry=r)
        self.updates = Counter("kimchi_updates", "Telegram updates handled.", registry=r)
        self.webhook_requests = Counter("kimchi_webhook_requests", "Webhook POSTs by HTTP status.", ["status"],
                                        registry=r)
        r.register(_ServingInfo(self))

    # -- wiring --------------------------------------------------------------------------------
    def bind(self, classifier: Any) -> None:
        """Read queue depth and version from `classifier`, and count its batches."""
        self.classifier = classifier
        if hasattr(classifier, "on_batch"):
            classifier.on_batch = self.batch

    def _queued(self) -> float:
        classifier = self.classifier
        return float(classifier.queued) if classifier is not None else 0.0

    # -- what handlers and the engine call -----------------------------------------------------
    def photo(self, outcome: str, reason: str = "") -> None:
        """Count one photo's outcome (see PHOTO_OUTCOMES); `reason` only for "rejected"."""
        self.photos.labels(outcome=outcome, reason=reason).inc()

    def photo_answered(self, started: float) -> None:
        """An answer went out for a photo whose handling began at time.monotonic() `started`."""
        self.photos.labels(outcome="answered", reason="").inc()
        self.photo_seconds.observe(time.monotonic() - started)

    def not_kimchi_answer(self, by: str) -> None:
        """An answer went out saying the photo is not kimchi; `by`: "class" (the head's not_kimchi) or "score"
        (the open-set check). Also counted in kimchi_photos as answered."""
        self.not_kimchi.labels(by=by).inc()

    def batch(self, size: int) -> None:
        """The engine ran a batch of `size` images (called on the engine's worker thread)."""
        self.batch_size.observe(size)

    def correction(self, status: str) -> None:
        """A label a user gave, by its fate: the ledger's status ("accepted", "pending"), "failed" or "limited"."""
        self.corrections.labels(status=status).inc()

    def retrain(self, decision: str) -> None:
        """A retrain ended, by its status: "promoted", "kept" (not promoted), "failed", "cancelled",
        "refused"."""
        self.retrains.labels(decision=decision).inc()

    def update_handled(self) -> None:
        self.updates.inc()
        self.last_update = time.monotonic()

    def exposition(self) -> bytes:
        """The Prometheus text format of this registry."""
        return generate_latest(self.registry)


def install(app: Application) -> BotMetrics:
    """Give `app` a BotMetrics in bot_data["metrics"] and count every update once it was handled."""
    metrics = BotMetrics()
    app.bot_data["metrics"] = metrics

    async def handled(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        metrics.update_handled()

    app.add_handler(TypeHandler(Update, handled), group=LAST_GROUP)
    return metrics


def metrics_of(context: ContextTypes.DEFAULT_TYPE) -> BotMetrics:
    """The handlers' way in: `metrics_of(context).photo("busy")`."""
    return context.application.bot_data["metrics"]


# ---------------------------------------------------------------------------------------------
# health

@dataclass
class _Probe:
    at: float = -1e9
    ok: bool = False


def database_writable(path: Path, timeout_s: float = 1.0) -> bool:
    """Whether SQLite can take the write lock on `path` (a separate, short connection; nothing is written).

    A lock held by the bot's own writer means the file is writable, just busy.
    """
    if not path.is_file():
        return False
    try:
        con = sqlite3.connect(path, timeout=timeout_s)
    except sqlite3.Error:
        return False
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError as err:
        return "locked" in str(err) or "busy" in str(err)
    except sqlite3.Error:
        return False
    finally:
        con.close()


class Health:
    """The `/healthz` report of one Application."""

    def __init__(self, app: Application) -> None:
        self.app = app
        self._db = _Probe()

    async def report(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body): 200 when the bot can serve, 503 when it cannot and why."""
        svc = self.app.bot_data.get("services")
        metrics: BotMetrics | None = self.app.bot_data.get("metrics")
        if svc is None:
            return 503, {"status": "starting", "problems": ["the bot is starting"]}
        classifier = svc.classifier
        problems = []
        worker_alive = getattr(classifier, "worker_alive", True)
        if not worker_alive:
            problems.append("the engine's worker is not running")
        db_ok = await self._database_ok(svc.settings.home.database)
        if not db_ok:
            problems.append("the database is not writable")
        last = metrics.last_update if metrics is not None else None
        body = {
            "status": "ok" if not problems else "unavailable",
            "problems": problems,
            "model": {"version": classifier.version, "device": classifier.device},
            "engine": {"queue_depth": classifier.queued, "worker_alive": worker_alive},
            "database": {"writable": db_ok},
            "seconds_since_last_update": None if last is None else round(time.monotonic() - last, 3),
            "retrain": retrain_state(svc),
        }
        return (200 if not problems else 503), body

    async def _database_ok(self, path: Path) -> bool:
        now = time.monotonic()
        if now - self._db.at >= DB_PROBE_TTL_S or not self._db.ok:
            self._db = _Probe(now, await asyncio.to_thread(database_writable, path))
        return self._db.ok


def retrain_state(svc: Any) -> dict[str, Any]:
    manager = getattr(svc, "retrain", None)
    run = getattr(manager, "run", None)
    if run is None:
        return {"state": "idle"}
    epoch = getattr(run, "epoch", None)  # the trainer's latest EpochEvent, None before the first
    return {"state": "running", "run": getattr(run, "id", None), "epoch": getattr(epoch, "epoch", None),
            "epochs": getattr(epoch, "total", None), "seconds": round(time.monotonic() - run.started, 1)}
