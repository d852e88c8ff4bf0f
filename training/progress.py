"""Progress of a training run, in one of four modes:

* `json`: the trainer protocol (models.protocol), one event per line on stdout, for the bot;
* `bar`: fastai's progress bars and table, for a person at a terminal;
* `plain`: one line per epoch and stage, for a log file or a pipe (no carriage-return bars);
* `quiet`: nothing (tests, experiment grids, benchmarks).

`auto` is `bar` at a terminal and `plain` otherwise. No fastai here: `kimchi-train audit` reports through
it too. The training callback that feeds it is training.tracker.EpochTracker.
"""
from __future__ import annotations

import sys
import time
from typing import IO

from models.protocol import EpochEvent, Event, StageEvent, StartEvent

MODES = ("auto", "json", "bar", "plain", "quiet")


class Progress:
    """Where a run reports what it does."""

    def __init__(self, mode: str = "quiet", stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "plain"
        if mode not in MODES:
            raise ValueError(f"unknown progress mode {mode!r}")
        self.mode = mode
        self.start = time.monotonic()

    @property
    def json(self) -> bool:
        return self.mode == "json"

    @property
    def bars(self) -> bool:
        return self.mode == "bar"

    def emit(self, event: Event) -> None:
        """Report `event`: its protocol line in json mode, a readable line in plain mode."""
        if self.mode == "json":
            stamped = type(event)(**{**event.__dict__, "elapsed": round(time.monotonic() - self.start, 2)})
            self.stream.write(stamped.to_json() + "\n")
        elif self.mode == "plain":
            line = _plain_line(event)
            if line is None:
                return
            self.stream.write(f"[{time.monotonic() - self.start:7.1f}s] {line}\n")
        else:
            return
        self.stream.flush()


def _plain_line(event: Event) -> str | None:
    if isinstance(event, StartEvent):
        return (f"training {event.arch} on {event.n_train} images, validating on {event.n_valid}, "
                f"{len(event.classes)} classes, {event.total} epochs, {event.device}")
    if isinstance(event, EpochEvent):
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in event.metrics.items() if v is not None)
        return (f"epoch {event.epoch}/{event.total} ({event.phase})  train_loss {_num(event.train_loss)}  "
                f"valid_loss {_num(event.valid_loss)}  {metrics}{'  (best so far)' if event.best else ''}")
    if isinstance(event, StageEvent):
        return f"{event.stage.value}…"
    return None  # batches are too chatty for a log; done/error go through the CLI's own output


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
