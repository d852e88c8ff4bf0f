"""The promotion rule: a candidate replaces the serving model only when it is measurably no worse on the
same frozen holdout. The decision carries typed findings (which check, its numbers, passed or not); the
bot renders them into words in the admin's language.

On a small holdout (fewer than SMALL_HOLDOUT_N images) a raw difference of macro-F1 is noise: one photo
more or less right moves a class's F1 by a large share, and a poisoned model once got through on seven
images. There the two models are compared image by image on the same photos (an exact McNemar test), and
the admin is told that the holdout is small.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from models.protocol import HoldoutScore

MIN_CLASS_N = 5  # a class with fewer holdout images is too noisy to veto a promotion on its own
# Below this many holdout images the rule pairs the models image by image instead of comparing macro-F1:
# at 50, one image is 2 points of accuracy, and a class of a few images swings its F1 by a third or more.
SMALL_HOLDOUT_N = 50
ALPHA = 0.05  # one-sided significance of the paired test


class Check(str, Enum):
    NO_BASELINE = "no_baseline"  # nothing serves: the candidate wins by default
    EMPTY_HOLDOUT = "empty_holdout"  # nothing to measure on: keep what serves
    MACRO_F1 = "macro_f1"  # candidate macro-F1 >= current - tolerance
    PAIRED = "paired"  # small holdout: on the same images, no more lost than gained, not significantly worse
    CORRECTIONS = "corrections"  # accuracy on held-out corrected photos >= current's
    CLASS_F1 = "class_f1"  # no class (with >= MIN_CLASS_N holdout images) loses more than the allowed F1
    # the share of holdout kimchi the head answers as kimchi (not "not kimchi") drops no more than the allowed
    # class drop: a candidate that learnt negatives must not turn kimchi away wholesale
    KIMCHI_KEPT = "kimchi_kept"
    SMALL_HOLDOUT = "small_holdout"  # a note, never a veto: fewer than SMALL_HOLDOUT_N holdout images


NOTES = frozenset({Check.SMALL_HOLDOUT})  # findings that inform the admin and never decide


@dataclass(frozen=True)
class Finding:
    """One check of the rule, with the figures it compared.

    For PAIRED, `candidate` and `current` are image counts: the paired images only the candidate named
    right, and those only the serving model named right; `p` is the one-sided exact McNemar p-value that
    the candidate is worse, `limit` the significance level, `n` the paired images."""

    check: Check
    passed: bool
    candidate: float | None = None
    current: float | None = None
    limit: float = 0.0  # the tolerance, the allowed drop, the significance level or the small-holdout size
    n: int = 0  # images behind the figures
    label: str | None = None  # the class, for CLASS_F1
    p: float | None = None  # PAIRED: the McNemar p-value


@dataclass(frozen=True)
class Decision:
    promote: bool
    findings: tuple[Finding, ...]

    @property
    def failed(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if not f.passed)


def mcnemar_worse_p(gained: int, lost: int) -> float:
    """The exact one-sided McNemar p-value that the candidate is worse: among the gained + lost images on
    which the two models disagree about being right, the chance of `lost` or more going to the serving model
    if each were a fair coin (both models equally good). 1.0 when they never disagree."""
    m = gained + lost
    return sum(math.comb(m, k) for k in range(lost, m + 1)) / 2 ** m


def paired(candidate: HoldoutScore, current: HoldoutScore) -> Finding | None:
    """The paired test on the images both scores cover; None when either lacks per-image results."""
    same = sorted(candidate.correct.keys() & current.correct.keys())
    if not same:
        return None
    gained = sum(1 for k in same if candidate.correct[k] and not current.correct[k])
    lost = sum(1 for k in same if current.correct[k] and not candidate.correct[k])
    p = mcnemar_worse_p(gained, lost)
    return Finding(Check.PAIRED, lost <= gained and p >= ALPHA, gained, lost, ALPHA, len(same), p=p)


def decide(candidate: HoldoutScore, current: HoldoutScore | None, tolerance: float = 0.0,
           class_drop: float = 0.10) -> Decision:
    """Promote when the candidate is no worse overall, accuracy on held-out corrections >= current's, and
    no class with at least MIN_CLASS_N holdout images loses more than `class_drop` of F1.

    "No worse overall" depends on the holdout's size:

    * SMALL_HOLDOUT_N images or more: macro-F1 >= current - `tolerance` (the figures are stable enough).
    * Fewer: a SMALL_HOLDOUT note tells the admin, and the decision is paired, on the very same images.
      Of the images on which the two models disagree about being right, the candidate alone got `gained`
      and the serving model alone got `lost`. The candidate is refused when it is significantly worse
      (exact one-sided McNemar, p < ALPHA), and also when it is merely behind (lost > gained). The second
      condition does the work: with a handful of images no loss is ever significant (three of three
      discordant images against the candidate give p = 0.125), so "measurably no worse" cannot mean "not
      shown to be worse". It means "right on at least as many of the same photos": no image lost that
      was not won back. `tolerance`, a macro-F1 allowance, does not apply here. When the scores carry no
      per-image results (an older trainer), the macro-F1 comparison decides, with the note.

    Holdout images of a class the candidate was not trained on never reach the scores (models.trainset
    leaves such a class out of the holdout list as well), so both models are judged on the same photos.

    `not_kimchi` is a class of the gate like the others. When both models know it, a candidate that catches
    fewer negatives (or calls more kimchi "not kimchi") than `class_drop` allows is refused for it. When only
    the candidate knows it (the first retrain with negatives), the serving model names none of those photos
    right (models.holdout scores the head), so its F1 for the class is 0: the candidate cannot lose on a class
    the serving model never had, and the photos it now turns away count in its favour overall. Each kimchi class
    keeps its own gate; its F1 weighs both what the candidate misses (kimchi called "not kimchi") and what it
    no longer claims (a cat called 배추김치), as users notice both. As that trade can hide kimchi turned away,
    KIMCHI_KEPT also refuses a candidate whose head answers a share of the holdout's kimchi as "not kimchi"
    more than `class_drop` above the serving model's."""
    if current is None:
        return Decision(True, (Finding(Check.NO_BASELINE, True),))
    if candidate.n == 0:
        return Decision(False, (Finding(Check.EMPTY_HOLDOUT, False),))
    small = candidate.n < SMALL_HOLDOUT_N
    overall = paired(candidate, current) if small else None
    if overall is None:
        overall = Finding(Check.MACRO_F1, candidate.f1_macro >= current.f1_macro - tolerance, candidate.f1_macro,
                          current.f1_macro, tolerance, candidate.n)
    findings = [overall]
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
    if (candidate.kimchi_kept is not None and current.kimchi_kept is not None
            and candidate.kimchi_n >= MIN_CLASS_N and current.kimchi_kept - candidate.kimchi_kept > class_drop):
        findings.append(Finding(Check.KIMCHI_KEPT, False, candidate.kimchi_kept, current.kimchi_kept, class_drop,
                                candidate.kimchi_n))
    if small:
        findings.append(Finding(Check.SMALL_HOLDOUT, True, limit=SMALL_HOLDOUT_N, n=candidate.n))
    return Decision(all(f.passed for f in findings), tuple(findings))
