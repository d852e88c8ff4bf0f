"""The promotion rule: a candidate replaces the serving model only when it is measurably no worse on the
same frozen holdout. Both models are scored here, one way, from the trainer's evaluation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HoldoutScore:
    """One model on the holdout: overall figures, per-class F1, and accuracy on held-out corrections."""

    version: str
    n: int
    accuracy: float
    precision_macro: float
    recall_macro: float
    f1_macro: float
    per_class_f1: dict[str, float]
    corrections_n: int
    corrections_accuracy: float | None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HoldoutScore":
        return cls(version=data["version"], n=int(data["n"]), accuracy=float(data["accuracy"]),
                   precision_macro=float(data["precision_macro"]), recall_macro=float(data["recall_macro"]),
                   f1_macro=float(data["f1_macro"]), per_class_f1={k: float(v) for k, v in data["per_class_f1"].items()},
                   corrections_n=int(data.get("corrections_n", 0)),
                   corrections_accuracy=None if data.get("corrections_accuracy") is None
                   else float(data["corrections_accuracy"]))


@dataclass(frozen=True)
class TrainResult:
    """What a `kimchi-train train --progress json --holdout` run reported: the version it published and
    both models' scores on the holdout. Parsed once from the trainer's JSON lines."""

    version: str
    kept_epoch: int | None
    train_time_s: float
    valid_metrics: dict[str, Any]
    candidate: HoldoutScore
    current: HoldoutScore | None
    confusion_png: str | None

    @classmethod
    def from_events(cls, events: list[dict[str, Any]]) -> "TrainResult | None":
        """None unless the run got as far as publishing a version and scoring it."""
        done = next((e for e in reversed(events) if e.get("stage") == "done"), None)
        compare = next((e for e in reversed(events) if e.get("stage") == "compare"), None)
        if done is None or compare is None or not compare.get("candidate"):
            return None
        return cls(version=done["version"], kept_epoch=done.get("kept_epoch"),
                   train_time_s=float(done.get("train_time_s") or 0), valid_metrics=done.get("metrics") or {},
                   candidate=HoldoutScore.from_dict(compare["candidate"]),
                   current=HoldoutScore.from_dict(compare["current"]) if compare.get("current") else None,
                   confusion_png=compare.get("confusion_png"))

    def summary(self) -> dict[str, Any]:
        """The figures kept in retrain_runs.metrics_json."""
        from dataclasses import asdict

        return {"candidate": asdict(self.candidate), "current": asdict(self.current) if self.current else None,
                "valid": self.valid_metrics, "kept_epoch": self.kept_epoch, "train_time_s": self.train_time_s}


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(candidate: HoldoutScore, current: HoldoutScore | None, tolerance: float = 0.0) -> Decision:
    """Promote when macro-F1 >= current - tolerance and accuracy on held-out corrections >= current's."""
    if current is None:
        return Decision(True, "there is no current model to compare with")
    if candidate.n == 0:
        return Decision(False, "the holdout is empty, so nothing can be measured")
    f1_ok = candidate.f1_macro >= current.f1_macro - tolerance
    if candidate.corrections_accuracy is None or current.corrections_accuracy is None:
        corrections_ok, corrections_note = True, "no held-out corrections to compare"
    else:
        corrections_ok = candidate.corrections_accuracy >= current.corrections_accuracy
        corrections_note = (f"accuracy on {candidate.corrections_n} held-out corrected photos "
                            f"{candidate.corrections_accuracy:.1%} vs {current.corrections_accuracy:.1%}")
    f1_note = f"macro-F1 {candidate.f1_macro:.3f} vs {current.f1_macro:.3f} (tolerance {tolerance:g})"
    if f1_ok and corrections_ok:
        return Decision(True, f"no worse: {f1_note}; {corrections_note}")
    failed = []
    if not f1_ok:
        failed.append(f"{f1_note} is lower")
    if not corrections_ok:
        failed.append(f"{corrections_note} is lower")
    return Decision(False, "worse: " + "; ".join(failed))
