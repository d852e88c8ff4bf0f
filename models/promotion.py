"""The promotion rule: a candidate replaces the serving model only when it is measurably no worse on the
same frozen holdout. The decision carries typed findings (which check, its numbers, passed or not); the
bot renders them into words in the admin's language."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from models.protocol import HoldoutScore

MIN_CLASS_N = 5  # a class with fewer holdout images is too noisy to veto a promotion on its own


class Check(str, Enum):
    NO_BASELINE = "no_baseline"  # nothing serves: the candidate wins by default
    EMPTY_HOLDOUT = "empty_holdout"  # nothing to measure on: keep what serves
    MACRO_F1 = "macro_f1"  # candidate macro-F1 >= current - tolerance
    CORRECTIONS = "corrections"  # accuracy on held-out corrected photos >= current's
    CLASS_F1 = "class_f1"  # no class (with >= MIN_CLASS_N holdout images) loses more than the allowed F1


@dataclass(frozen=True)
class Finding:
    """One check of the rule, with the figures it compared."""

    check: Check
    passed: bool
    candidate: float | None = None
    current: float | None = None
    limit: float = 0.0  # the tolerance or the allowed drop
    n: int = 0  # images behind the figures
    label: str | None = None  # the class, for CLASS_F1


@dataclass(frozen=True)
class Decision:
    promote: bool
    findings: tuple[Finding, ...]

    @property
    def failed(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if not f.passed)


def decide(candidate: HoldoutScore, current: HoldoutScore | None, tolerance: float = 0.0,
           class_drop: float = 0.10) -> Decision:
    """Promote when macro-F1 >= current - tolerance, accuracy on held-out corrections >= current's, and no
    class with at least MIN_CLASS_N holdout images loses more than `class_drop` of F1."""
    if current is None:
        return Decision(True, (Finding(Check.NO_BASELINE, True),))
    if candidate.n == 0:
        return Decision(False, (Finding(Check.EMPTY_HOLDOUT, False),))
    findings = [Finding(Check.MACRO_F1, candidate.f1_macro >= current.f1_macro - tolerance, candidate.f1_macro,
                        current.f1_macro, tolerance, candidate.n)]
    if candidate.corrections_accuracy is not None and current.corrections_accuracy is not None:
        findings.append(Finding(Check.CORRECTIONS, candidate.corrections_accuracy >= current.corrections_accuracy,
                                candidate.corrections_accuracy, current.corrections_accuracy, 0.0,
                                candidate.corrections_n))
    for label in sorted(candidate.per_class_f1):
        n = candidate.per_class_n.get(label, 0)
        if n < MIN_CLASS_N or label not in current.per_class_f1:
            continue
        new, old = candidate.per_class_f1[label], current.per_class_f1[label]
        if old - new > class_drop:
            findings.append(Finding(Check.CLASS_F1, False, new, old, class_drop, n, label))
    return Decision(all(f.passed for f in findings), tuple(findings))
