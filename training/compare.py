"""A fair comparison for /retrain: the candidate and the serving model, scored by the same engine on the
same frozen holdout (a JSON-lines file of {path, label, source})."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from models.holdout import read_holdout, score
from models.protocol import ScoredEvent
from models.registry import Registry
from training.report import plot_confusion


def compare_on_holdout(registry: Registry, candidate: str, baseline: str | None, holdout: Path, out_dir: Path,
                       device: str = "auto") -> ScoredEvent:
    """Score both versions on the holdout; writes compare.json and the candidate's confusion matrix PNG."""
    rows = read_holdout(holdout)
    out_dir.mkdir(parents=True, exist_ok=True)
    cand = current = png = None
    if rows:
        cand, confusion, vocab = score(registry, candidate, rows, device)
        png = out_dir / "confusion_holdout.png"
        plot_confusion(confusion, vocab, png, False, f"{candidate} on the frozen holdout")
        if baseline is not None and baseline != candidate:
            current, _, _ = score(registry, baseline, rows, device)
    event = ScoredEvent(n=len(rows), candidate=cand, current=current, confusion_png=str(png) if png else None)
    record = {"holdout": str(holdout), "n": len(rows), "candidate": asdict(cand) if cand else None,
              "current": asdict(current) if current else None, "confusion_png": event.confusion_png}
    (out_dir / "compare.json").write_text(json.dumps(record, ensure_ascii=False, indent=2), encoding="utf-8")
    return event
