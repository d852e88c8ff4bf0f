"""A fair comparison for /retrain: the candidate and the serving model, scored by the same engine on the
same frozen holdout (a JSON-lines file of {path, label, source})."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from models.engine import Classifier, EngineConfig
from models.errors import KimchiError
from models.metrics import summarize
from models.registry import Registry
from training.report import plot_confusion

FAILED = "(unreadable)"


def read_holdout(path: Path) -> list[dict[str, Any]]:
    try:
        rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError) as err:
        raise KimchiError(f"The holdout list {path} cannot be read ({err}).") from err
    return rows


def score(registry: Registry, version: str, rows: list[dict[str, Any]], device: str) -> tuple[dict[str, Any], list[str]]:
    """HoldoutScore fields for `version`, and its predicted label per row."""
    classifier = Classifier(registry, version, EngineConfig(device=device, max_batch=64))
    try:
        loaders = [(lambda p=Path(r["path"]): p.read_bytes()) for r in rows]
        preds = [r.label if r.ok else FAILED for r in classifier.classify_stream(loaders)]
    finally:
        classifier.close()
    labels = [r["label"] for r in rows]
    vocab = sorted(set(labels) | set(preds))
    index = {name: i for i, name in enumerate(vocab)}
    summary = summarize([index[l] for l in labels], [index[p] for p in preds], vocab)
    corrections = [i for i, r in enumerate(rows) if r.get("source") == "correction"]
    corrections_accuracy = (float(np.mean([preds[i] == labels[i] for i in corrections])) if corrections else None)
    result = {k: summary[k] for k in ("n", "accuracy", "precision_macro", "recall_macro", "f1_macro")}
    result.update(version=version, per_class_f1={c: summary["per_class"][c]["f1"] for c in sorted(set(labels))},
                  corrections_n=len(corrections), corrections_accuracy=corrections_accuracy,
                  confusion=summary["confusion"], vocab=vocab)
    return result, preds


def compare_on_holdout(registry: Registry, candidate: str, baseline: str | None, holdout: Path, out_dir: Path,
                       device: str = "auto") -> dict[str, Any]:
    """Score both versions on the holdout; writes compare.json and the candidate's confusion matrix PNG."""
    rows = read_holdout(holdout)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"holdout": str(holdout), "n": len(rows), "candidate": None, "current": None}
    if rows:
        cand, _ = score(registry, candidate, rows, device)
        result["candidate"] = cand
        png = out_dir / "confusion_holdout.png"
        plot_confusion(np.asarray(cand["confusion"]), cand["vocab"], png, False, f"{candidate} on the frozen holdout")
        result["confusion_png"] = str(png)
        if baseline is not None and baseline != candidate:
            result["current"], _ = score(registry, baseline, rows, device)
    (out_dir / "compare.json").write_text(json.dumps(result, ensure_ascii=False, indent=2), encoding="utf-8")
    return result
