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
