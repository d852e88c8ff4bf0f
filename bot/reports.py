"""A retrain's typed outcomes in words: the promotion rule's findings, why a run failed, the report table.

The sentences are keys of bot.texts, in Korean and English; this module only picks and fills them.
"""
from __future__ import annotations

import json

from bot.texts import kimchi_name, number, percent, say
from models.promotion import NOTES, Check, Decision, Finding
from models.protocol import TrainResult
from models.trainset import left_out_detail

FINDING_KEYS = {Check.NO_BASELINE: "finding_no_baseline", Check.EMPTY_HOLDOUT: "finding_empty_holdout",
                Check.MACRO_F1: "finding_macro_f1", Check.CORRECTIONS: "finding_corrections",
                Check.CLASS_F1: "finding_class_f1", Check.PAIRED: "finding_paired",
                Check.SMALL_HOLDOUT: "finding_small_holdout", Check.KIMCHI_KEPT: "finding_kimchi_kept"}
FAILURE_KEYS = {"trainer_error": "failure_trainer_error", "signal": "failure_signal",
                "exit_status": "failure_exit_status", "no_result": "failure_no_result", "timeout": "failure_timeout",
                "load_failed": "failure_load_failed", "internal": "failure_internal",
                "bot_stopped": "failure_bot_stopped"}
RUN_STATUS_KEYS = {"running": "run_status_running", "promoted": "run_status_promoted",
                   "kept": "run_status_kept", "cancelled": "run_status_cancelled",
                   "failed": "run_status_failed", "refused": "run_status_refused"}
REFUSAL_KEYS = {"too_few_classes": "retrain_too_few_classes", "too_few_images": "retrain_too_few",
                "too_few_trainable": "retrain_too_few_trainable"}


def finding_text(f: Finding, lang: str) -> str:
    if f.check is Check.PAIRED:  # image counts and a p-value, not scores
        fmt = lambda x: "-" if x is None else f"{x:.0f}"  # noqa: E731
    elif f.check in (Check.CORRECTIONS, Check.KIMCHI_KEPT):
        fmt = lambda x: percent(x, 1)  # noqa: E731
    else:
        fmt = number
    return say(FINDING_KEYS[f.check], lang, candidate=fmt(f.candidate), current=fmt(f.current),
               limit=f"{f.limit:g}", n=f.n, label=kimchi_name(f.label, lang) if f.label else "", p=number(f.p))


def decision_text(decision: Decision, lang: str) -> str:
    """Why the rule promoted or kept: the failed checks when it kept, every check when it promoted; notes
    (a small holdout) always, after them."""
    if decision.findings and decision.findings[0].check in (Check.NO_BASELINE, Check.EMPTY_HOLDOUT):
        return finding_text(decision.findings[0], lang)
    notes = [f for f in decision.findings if f.check in NOTES]
    shown = decision.failed or [f for f in decision.findings if f.check not in NOTES]
    findings = "; ".join(finding_text(f, lang) for f in (*shown, *notes))
    return say("decision_no_worse" if decision.promote else "decision_worse", lang, findings=findings)


def left_out_text(left_out: dict[str, int], minimum: int, forgets: tuple[str, ...] | list[str], lang: str) -> str:
    """Which classes a run left out and why, and which of them the serving model knows; '' when none."""
    if not left_out:
        return ""
    text = say("retrain_left_out", lang, minimum=minimum, detail=left_out_detail(left_out))
    if forgets:
        text += "\n" + say("retrain_left_out_known", lang, classes=", ".join(forgets))
    return text


def failure_text(code: str, detail: str, lang: str) -> str:
    return say(FAILURE_KEYS.get(code, "failure_internal"), lang, detail=detail or "-")


def run_reason(reason: str | None, lang: str) -> str:
    """retrain_runs.reason (typed JSON) in words."""
    try:
        data = json.loads(reason or "{}")
    except ValueError:
        return reason or "-"
    if "findings" in data:
        findings = tuple(Finding(**{**f, "check": Check(f["check"])}) for f in data["findings"])
        return decision_text(Decision(all(f.passed for f in findings), findings), lang)
    if "refusal" in data:
        key = REFUSAL_KEYS.get(data.pop("refusal"))
        return say(key, lang, **data) if key else "-"
    if data.get("failure"):
        return failure_text(data["failure"], data.get("detail", ""), lang)
    return "-"


def run_status(status: str, lang: str) -> str:
    key = RUN_STATUS_KEYS.get(status)
    return say(key, lang) if key else status


def report_table(result: TrainResult, total: int, corrections: int, duration: float, lang: str,
                 left_out: dict[str, int] | None = None) -> str:
    """Old against new, monospace: overall figures, per-class F1 with deltas, data (and the classes left
    out) and time."""
    candidate, current = result.candidate, result.current

    def row(name: str, new: float | None, old: float | None) -> str:
        delta = f"{new - old:+.3f}" if new is not None and old is not None else ""
        return f"{name:<18}{number(old):>8}{number(new):>8}{delta:>8}"

    def old(attr: str) -> float | None:
        return getattr(current, attr) if current else None

    lines = [f"{'':<18}{current.version if current else '-':>8}{candidate.version:>8}{'Δ':>8}",
             row(say("report_accuracy", lang), candidate.accuracy, old("accuracy")),
             row(say("report_precision", lang), candidate.precision_macro, old("precision_macro")),
             row(say("report_recall", lang), candidate.recall_macro, old("recall_macro")),
             row(say("report_f1", lang), candidate.f1_macro, old("f1_macro")),
             row(say("report_corrections", lang, n=candidate.corrections_n), candidate.corrections_accuracy,
                 old("corrections_accuracy")),
             say("report_per_class", lang)]
    for label in sorted(candidate.per_class_f1):
        lines.append(row(f" {label}", candidate.per_class_f1[label], current.per_class_f1.get(label) if current else None))
    openset = openset_line(result.valid_metrics, lang)
    lines += [*([openset] if openset else []),
              say("report_holdout", lang, n=candidate.n),
              say("report_training", lang, total=total, corrections=corrections),
              *([say("report_left_out", lang, detail=left_out_detail(left_out))] if left_out else []),
              say("report_time", lang, epoch=result.kept_epoch or "-", train=f"{result.train_time_s:.0f}",
                  whole=f"{duration:.0f}")]
    return "\n".join(lines)


def openset_line(metrics: dict, lang: str) -> str:
    """The new version's open-set check on its validation split (the trainer's DoneEvent: openset_kept,
    openset_caught, openset_right_kind); '' when it has none. Negatives caught is '-' without negatives."""
    if metrics.get("openset_kept") is None:
        return ""
    return say("report_openset", lang, kept=percent(metrics["openset_kept"], 1),
               caught=percent(metrics.get("openset_caught"), 1), right_kind=percent(metrics.get("openset_right_kind"), 1))


def bar(fraction: float, width: int = 10) -> str:
    filled = max(0, min(width, round(fraction * width)))
    return "▓" * filled + "░" * (width - filled)
