"""The trainer protocol: what `kimchi-train train --progress json` prints, one JSON object per line.

The trainer (training room) writes these events and the bot (bot room) reads them; both use only this
module, so the two ends cannot drift apart. Every line is an object with an `event` key:

    start     the run's data and settings (classes, counts, images, epochs, device, precision)
    batch     progress inside an epoch (at most about once a second)
    epoch     one finished epoch: losses, metrics, whether it is the best so far
    stage     the run moved on: evaluating the kept epoch, scoring models on the holdout
    scored    the candidate and the serving model, scored by the same engine on the frozen holdout
    done      the version that was published
    audited   what `kimchi-train audit --progress json` found: flagged images and near-duplicate groups
    error     why the run failed, in one sentence

`parse(line)` returns the typed event, or raises ProtocolError naming what is wrong with the line.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any, ClassVar, Union

from models.errors import KimchiError


class ProtocolError(KimchiError):
    """A line on the trainer's stdout that is not a well-formed event."""


class Stage(str, Enum):
    """Where a run is, after its epochs."""

    EVALUATING = "evaluating"  # the kept epoch on the validation split, then publishing
    SCORING = "scoring"  # the candidate and the serving model on the frozen holdout


@dataclass(frozen=True)
class HoldoutScore:
    """One model on the frozen holdout: overall figures, per-class F1, accuracy on held-out corrections, and
    per image (keyed by sha256, or the path for a holdout row without one) whether the model named it right:
    what the paired test of models.promotion compares. `correct` is empty in lines from a trainer that
    predates it; they still parse, and the rule then falls back to the figures."""

    version: str
    n: int
    accuracy: float
    precision_macro: float
    recall_macro: float
    f1_macro: float
    per_class_f1: dict[str, float]
    corrections_n: int = 0
    corrections_accuracy: float | None = None
    per_class_n: dict[str, int] = field(default_factory=dict)
    correct: dict[str, bool] = field(default_factory=dict)
    # of the holdout's kimchi (every label but not_kimchi), the share the version's head answers with a kimchi
    # class, and how many there were: what the promotion rule's KIMCHI_KEPT check compares
    kimchi_kept: float | None = None
    kimchi_n: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HoldoutScore":
        try:
            return cls(version=str(data["version"]), n=int(data["n"]), accuracy=float(data["accuracy"]),
                       precision_macro=float(data["precision_macro"]), recall_macro=float(data["recall_macro"]),
                       f1_macro=float(data["f1_macro"]),
                       per_class_f1={str(k): float(v) for k, v in data["per_class_f1"].items()},
                       corrections_n=int(data.get("corrections_n") or 0),
                       corrections_accuracy=_optional_float(data.get("corrections_accuracy")),
                       per_class_n={str(k): int(v) for k, v in (data.get("per_class_n") or {}).items()},
                       correct={str(k): _flag(v) for k, v in (data.get("correct") or {}).items()},
                       kimchi_kept=_optional_float(data.get("kimchi_kept")), kimchi_n=int(data.get("kimchi_n") or 0))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ProtocolError(f"a holdout score is incomplete or malformed ({err!r}).") from err


@dataclass(frozen=True)
class Event:
    """Base of every event; `elapsed` is seconds since the trainer started."""

    kind: ClassVar[str] = ""
    elapsed: float = 0.0

    def to_json(self) -> str:
        body = {"event": self.kind, **{f.name: _plain(getattr(self, f.name)) for f in fields(self)}}
        return json.dumps(body, ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True)
class StartEvent(Event):
    kind: ClassVar[str] = "start"
    arch: str = ""
    classes: tuple[str, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)
    n_train: int = 0
    n_valid: int = 0
    total: int = 0
    device: str = ""
    mixed_precision: str = "no"


@dataclass(frozen=True)
class BatchEvent(Event):
    kind: ClassVar[str] = "batch"
    epoch: int = 0
    total: int = 0
    fraction: float = 0.0


@dataclass(frozen=True)
class EpochEvent(Event):
    kind: ClassVar[str] = "epoch"
    epoch: int = 0
    total: int = 0
    phase: str = ""
    train_loss: float | None = None
    valid_loss: float | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    best: bool = False

    @property
    def fraction(self) -> float:
        return self.epoch / self.total if self.total else 0.0

    @property
    def accuracy(self) -> float | None:
        return self.metrics.get("accuracy")


@dataclass(frozen=True)
class StageEvent(Event):
    kind: ClassVar[str] = "stage"
    stage: Stage = Stage.EVALUATING


@dataclass(frozen=True)
class ScoredEvent(Event):
    kind: ClassVar[str] = "scored"
    n: int = 0
    candidate: HoldoutScore | None = None
    current: HoldoutScore | None = None
    confusion_png: str | None = None


@dataclass(frozen=True)
class DoneEvent(Event):
    kind: ClassVar[str] = "done"
    version: str = ""
    path: str = ""
    kept_epoch: int | None = None
    train_time_s: float = 0.0
    metrics: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditedEvent(Event):
    """`kimchi-train audit --items FILE --progress json`: what the label audit found, by sha256."""

    kind: ClassVar[str] = "audited"
    n: int = 0
    # sha256 -> issues: label, outlier, near_duplicate; on users' labels also not_kimchi (a kimchi label on a
    # photo the open-set check calls not kimchi) and flood (many near-identical photos from few accounts)
    flagged: dict[str, list[str]] = field(default_factory=dict)
    groups: list[list[str]] = field(default_factory=list)  # near-duplicate groups of two or more
    suspects_png: str | None = None
    summary: str = ""
    openset: str = ""  # the check behind not_kimchi: "stored" (the version's), "fitted" (by the audit), "" (none)


@dataclass(frozen=True)
class ErrorEvent(Event):
    kind: ClassVar[str] = "error"
    message: str = ""


AnyEvent = Union[StartEvent, BatchEvent, EpochEvent, StageEvent, ScoredEvent, DoneEvent, AuditedEvent, ErrorEvent]
EVENTS: dict[str, type[Event]] = {cls.kind: cls for cls in (StartEvent, BatchEvent, EpochEvent, StageEvent,
                                                            ScoredEvent, DoneEvent, AuditedEvent, ErrorEvent)}


def parse(line: str) -> AnyEvent:
    """The typed event on one line of the trainer's stdout; ProtocolError when it is not one."""
    try:
        data = json.loads(line)
    except ValueError as err:
        raise ProtocolError(f"not JSON: {line[:80]!r}") from err
    if not isinstance(data, dict):
        raise ProtocolError(f"not a JSON object: {line[:80]!r}")
    kind = data.pop("event", None)
    cls = EVENTS.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise ProtocolError(f"unknown event {kind!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ProtocolError(f"{kind} event with unknown fields {unknown}")
    try:
        values = {name: _typed(cls, name, value) for name, value in data.items()}
        return cls(**values)  # type: ignore[return-value]
    except (TypeError, ValueError) as err:
        raise ProtocolError(f"malformed {kind} event ({err})") from err


def _typed(cls: type[Event], name: str, value: Any) -> Any:
    if name in ("candidate", "current"):
        return None if value is None else HoldoutScore.from_dict(value)
    if name == "stage":
        return Stage(value)
    if name == "classes":
        return tuple(str(v) for v in value)
    if name in ("epoch", "total", "n", "n_train", "n_valid") and not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number, not {value!r}")
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, HoldoutScore):
        return asdict(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"a per-image result must be true or false, not {value!r}")
    return value


@dataclass(frozen=True)
class TrainResult:
    """What a `--holdout` run reported: the version it published and both models' holdout scores."""

    version: str
    kept_epoch: int | None
    train_time_s: float
    valid_metrics: dict[str, float | None]
    candidate: HoldoutScore
    current: HoldoutScore | None
    confusion_png: str | None

    @classmethod
    def from_events(cls, events: list[Event]) -> "TrainResult | None":
        """None unless the run got as far as publishing a version and scoring it."""
        done = next((e for e in reversed(events) if isinstance(e, DoneEvent)), None)
        scored = next((e for e in reversed(events) if isinstance(e, ScoredEvent)), None)
        if done is None or scored is None or scored.candidate is None:
            return None
        return cls(version=done.version, kept_epoch=done.kept_epoch, train_time_s=done.train_time_s,
                   valid_metrics=dict(done.metrics), candidate=scored.candidate, current=scored.current,
                   confusion_png=scored.confusion_png)

    def summary(self) -> dict[str, Any]:
        """The figures kept in retrain_runs.metrics_json (not the per-image results: the decision's findings
        keep what the paired test counted)."""
        def figures(s: HoldoutScore | None) -> dict[str, Any] | None:
            return None if s is None else {k: v for k, v in asdict(s).items() if k != "correct"}

        return {"candidate": figures(self.candidate), "current": figures(self.current),
                "valid": self.valid_metrics, "kept_epoch": self.kept_epoch, "train_time_s": self.train_time_s}
