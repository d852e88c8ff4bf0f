"""The promotion rule on a small holdout: a paired, exact McNemar decision on the same images, and the admin
is told the holdout is small. Hand-built scores; no model, no bot."""
import json
import math

import pytest

from bot.reports import decision_text, run_reason
from bot.supervisor import Outcome, RunStatus
from models.promotion import ALPHA, SMALL_HOLDOUT_N, Check, decide, mcnemar_worse_p
from models.protocol import HoldoutScore


def score(version: str, right: set[int], n: int, f1: float, corrections: float | None = None) -> HoldoutScore:
    """`n` holdout images k0…k(n-1), the model right on those in `right`; f1 stands for macro-F1 as reported
    (per-class F1 stays level, so the class check never decides here)."""
    correct = {f"k{i}": i in right for i in range(n)}
    return HoldoutScore(version, n, len(right) / n, f1, f1, f1, {"깍두기": 0.5, "배추김치": 0.5},
                        2 if corrections is not None else 0, corrections, {"깍두기": n // 2, "배추김치": n - n // 2},
                        correct)


@pytest.mark.parametrize("gained, lost, p", [
    (0, 0, 1.0),  # never disagree: nothing against the candidate
    (0, 3, 1 / 8),  # three of three against it: still not significant
    (0, 5, 1 / 32),
    (1, 1, 3 / 4),
    (2, 8, (45 + 10 + 1) / 1024),
    (8, 2, 1 - (1 + 10) / 1024),  # two or more of ten fair coins: 1 - P(0) - P(1)
])
def test_the_exact_one_sided_mcnemar_p_value(gained, lost, p):
    assert mcnemar_worse_p(gained, lost) == pytest.approx(p)


def test_the_p_value_is_the_binomial_tail():
    for m in range(0, 12):
        for lost in range(0, m + 1):
            tail = sum(math.comb(m, k) * 0.5 ** m for k in range(lost, m + 1))
            assert mcnemar_worse_p(m - lost, lost) == pytest.approx(tail)


def test_seven_images_a_candidate_behind_on_three_is_refused_though_macro_f1_calls_it_noise():
    """The poisoned model's case: on 7 images it lost 3 that the serving model got right and won none back;
    its macro-F1 was within the tolerance. The old rule promoted it; the paired rule refuses it."""
    current = score("v1", {0, 1, 2, 3}, 7, f1=0.53)
    candidate = score("v2", {0}, 7, f1=0.52)
    decision = decide(candidate, current, tolerance=0.02)
    assert not decision.promote
    (paired,) = decision.failed
    assert (paired.check, paired.candidate, paired.current, paired.n) == (Check.PAIRED, 0, 3, 7)
    assert paired.p == pytest.approx(0.125) and paired.p >= ALPHA  # behind, though not significantly
    (note,) = [f for f in decision.findings if f.check is Check.SMALL_HOLDOUT]
    assert note.passed and note.n == 7 and note.limit == SMALL_HOLDOUT_N
    # the same figures without per-image results: only the old macro-F1 comparison is possible, and passes
    blind = decide(HoldoutScore(**{**candidate.__dict__, "correct": {}}), current, tolerance=0.02)
    assert blind.promote and Check.MACRO_F1 in [f.check for f in blind.findings]


def test_the_admin_reads_that_the_holdout_is_small_and_the_paired_counts():
    decision = decide(score("v2", {0}, 7, f1=0.52), score("v1", {0, 1, 2, 3}, 7, f1=0.53), tolerance=0.02)
    en, ko = decision_text(decision, "en"), decision_text(decision, "ko")
    assert en.startswith("worse: on the same 7 holdout photos the new model alone was right on 0, the current one "
                         "alone on 3 (exact McNemar test, one-sided p = 0.125")
    assert "the holdout is small (7 photos, under 50)" in en
    assert "새 모델만 맞힌 사진 0장, 현재 모델만 맞힌 사진 3장" in ko and "holdout이 작아요 (7장, 50장 미만)" in ko
    # what retrain_runs keeps reads back into the same words, in either language, later
    reason = Outcome(RunStatus.KEPT, 1.0, decision=decision).reason_json()
    assert json.loads(reason)["findings"][0]["p"] == pytest.approx(0.125)
    assert run_reason(reason, "en") == en and run_reason(reason, "ko") == ko


@pytest.mark.parametrize("candidate_right, current_right, promote", [
    ({0, 1, 2, 3}, {0, 1, 2, 3}, True),  # the same answers
    ({0, 1, 4, 5}, {0, 1, 2, 3}, True),  # two lost, two won back: right as often on the same photos
    ({0, 1, 2, 4, 5}, {0, 1, 2, 3}, True),  # ahead
    ({0, 1, 4}, {0, 1, 2, 3}, False),  # one lost more than won: behind, refused
    (set(), {0, 1, 2, 3, 4}, False),  # five of five against it: significantly worse (p = 1/32)
])
def test_on_a_small_holdout_the_candidate_must_be_right_at_least_as_often(candidate_right, current_right, promote):
    # macro-F1 set to favour the other answer each time: the pairs decide, not the reported F1
    decision = decide(score("v2", candidate_right, 12, f1=0.4 if promote else 0.9),
                      score("v1", current_right, 12, f1=0.6 if promote else 0.1))
    assert decision.promote is promote
    assert [f.check for f in decision.findings] == [Check.PAIRED, Check.SMALL_HOLDOUT]
    text = decision_text(decision, "en")
    assert text.startswith("no worse: " if promote else "worse: ") and "holdout is small (12 photos" in text


def test_the_other_vetoes_still_apply_on_a_small_holdout():
    decision = decide(score("v2", {0, 1, 2}, 10, 0.5, corrections=0.5),
                      score("v1", {0, 1, 2}, 10, 0.5, corrections=1.0))
    assert not decision.promote and [f.check for f in decision.failed] == [Check.CORRECTIONS]


def test_a_large_holdout_keeps_the_macro_f1_rule_without_the_note():
    n = SMALL_HOLDOUT_N
    candidate, current = score("v2", set(range(30)), n, f1=0.79), score("v1", set(range(33)), n, f1=0.80)
    decision = decide(candidate, current, tolerance=0.02)
    assert decision.promote and [f.check for f in decision.findings] == [Check.MACRO_F1]
    assert not decide(candidate, current, tolerance=0.0).promote
    assert "small" not in decision_text(decision, "en")


def test_scores_of_different_images_cannot_be_paired_and_fall_back_to_the_figures():
    candidate = HoldoutScore(**{**score("v2", {0}, 7, 0.9).__dict__, "correct": {"other": True}})
    decision = decide(candidate, score("v1", {0, 1, 2}, 7, 0.5))
    assert decision.promote and [f.check for f in decision.findings] == [Check.MACRO_F1, Check.SMALL_HOLDOUT]


# not_kimchi in the gate: scores made by models.holdout from the answers, on 15 깍두기, 15 배추김치, 20 negatives

NEG = "not_kimchi"
TRUTH = ["깍두기"] * 15 + ["배추김치"] * 15 + [NEG] * 20


def answered(version: str, answers: list[str]) -> HoldoutScore:
    from models.holdout import scored

    rows = [{"path": f"p{i}.jpg", "label": label, "sha256": f"s{i}"} for i, label in enumerate(TRUTH)]
    return scored(version, rows, answers)[0]


def test_a_serving_model_without_not_kimchi_cannot_veto_the_candidate_on_it():
    old = answered("v1", TRUTH[:30] + ["배추김치"] * 20)  # knows no not_kimchi: every negative is "배추김치"
    assert old.per_class_f1[NEG] == 0.0 and old.per_class_n[NEG] == 20
    new = answered("v2", TRUTH[:28] + [NEG] * 2 + [NEG] * 16 + ["배추김치"] * 4)  # misses 2 kimchi, catches 16 of 20
    decision = decide(new, old)
    assert decision.promote, decision.failed
    assert Check.CLASS_F1 not in [f.check for f in decision.findings]


def test_when_both_know_not_kimchi_catching_fewer_negatives_is_a_class_loss():
    old = answered("v1", TRUTH)
    new = answered("v2", TRUTH[:30] + [NEG] * 8 + ["배추김치"] * 12)  # catches 8 of 20, the rest "배추김치"
    decision = decide(new, old, tolerance=1.0)  # whatever macro-F1 says: the class gate alone
    failed = {(f.check, f.label) for f in decision.failed}
    assert not decision.promote and (Check.CLASS_F1, NEG) in failed
    assert "Not kimchi F1 fell from 1.000" in decision_text(decision, "en")
    # calling kimchi "not kimchi" costs that kimchi its F1 as well
    eager = answered("v3", ["깍두기"] * 7 + [NEG] * 8 + TRUTH[15:])
    assert (Check.CLASS_F1, "깍두기") in {(f.check, f.label) for f in decide(eager, old, tolerance=1.0).failed}


def test_a_candidate_that_turns_kimchi_away_wholesale_is_refused_even_when_each_class_looks_fine():
    """The per-class F1 can hide it: kimchi lost to "not kimchi" across classes, a little each, while the
    candidate now catches every negative. The kimchi-kept check sees the whole share."""
    old = answered("v1", TRUTH[:30] + ["배추김치"] * 20)  # no not_kimchi class: keeps all 30 kimchi
    assert old.kimchi_kept == 1.0 and old.kimchi_n == 30
    eager = answered("v2", ["깍두기"] * 11 + [NEG] * 4 + ["배추김치"] * 11 + [NEG] * 4 + [NEG] * 20)  # keeps 22 of 30
    decision = decide(eager, old, class_drop=0.2, tolerance=1.0)  # each class within 0.2 of F1: only the new check bites
    assert not decision.promote and [f.check for f in decision.failed] == [Check.KIMCHI_KEPT]
    assert "kimchi answered as kimchi fell from 100.0% to 73.3% of 30 holdout kimchi" in decision_text(decision, "en")
    careful = answered("v3", TRUTH[:29] + [NEG] + [NEG] * 20)  # keeps 29 of 30: within the allowed drop
    assert decide(careful, old).promote
