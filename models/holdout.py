"""Scoring a version on the frozen holdout (a JSON-lines file of {path, label, source, sha256}) with the engine.

Besides the figures, the score keeps each image's result (right or wrong, keyed by sha256): two versions
scored on the same file can then be compared image by image (models.promotion's paired test).

Used by the trainer, which scores the candidate and the serving model after training, and by the bot,
which scores the serving model again when it changed while a retrain ran.

`not_kimchi` is a label like the classes: holdout photos labelled not_kimchi (negatives of the base set, users'
accepted "not kimchi" labels an admin decided) are scored like any other. A version is scored by its classifier
head (`Prediction.label`), not by the open-set verdict (`Prediction.answer`): the check is calibrated to turn
away a share of kimchi on purpose (`--keep`), and scoring it would make a calibrated candidate lose to an
uncalibrated serving model for that trade alone. A serving model without the not_kimchi class names none of
those photos right, so its F1 for not_kimchi is 0 and the candidate that learnt the class is credited for it;
the check's own figures (kimchi kept, negatives caught) are in the version's report.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from models.engine import Classifier, EngineConfig, cpu_runtime_from_env
from models.errors import KimchiError
from models.labels import NOT_KIMCHI
from models.scores import summarize
from models.protocol import HoldoutScore
from models.registry import Registry

FAILED = "(unreadable)"


def read_holdout(path: Path) -> list[dict[str, Any]]:
    try:
        rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError) as err:
        raise KimchiError(f"The holdout list {path} cannot be read ({err}).") from err
    return rows


def score(registry: Registry, version: str, rows: list[dict[str, Any]], device: str,
          cpu_runtime: str | None = None) -> tuple[HoldoutScore, np.ndarray, list[str]]:
    """`version` on the holdout rows: its score, its confusion matrix and that matrix's class order.
    `cpu_runtime`: the bot passes its setting; the trainer leaves it to KIMCHI_CPU_RUNTIME."""
    config = EngineConfig(device=device, max_batch=64, cpu_runtime=cpu_runtime or cpu_runtime_from_env())
    classifier = Classifier(registry, version, config)
    try:
        loaders = [(lambda p=Path(r["path"]): p.read_bytes()) for r in rows]
        # The head's label, not the open-set answer (see the module's docstring).
        preds = [r.label if r.ok else FAILED for r in classifier.classify_stream(loaders)]
    finally:
        classifier.close()
    return scored(version, rows, preds)


def scored(version: str, rows: list[dict[str, Any]], preds: list[str]) -> tuple[HoldoutScore, np.ndarray, list[str]]:
    """The score of a version whose answers for the holdout `rows` are `preds` (FAILED where it had none)."""
    labels = [r["label"] for r in rows]
    vocab = sorted(set(labels) | set(preds))
    index = {name: i for i, name in enumerate(vocab)}
    summary = summarize([index[l] for l in labels], [index[p] for p in preds], vocab)
    corrections = [i for i, r in enumerate(rows) if r.get("source") == "correction"]
    kimchi = [i for i, label in enumerate(labels) if label != NOT_KIMCHI]
    classes = sorted(set(labels))
    result = HoldoutScore(
        version=version, n=summary["n"], accuracy=summary["accuracy"], precision_macro=summary["precision_macro"],
        recall_macro=summary["recall_macro"], f1_macro=summary["f1_macro"],
        per_class_f1={c: summary["per_class"][c]["f1"] for c in classes},
        corrections_n=len(corrections),
        corrections_accuracy=float(np.mean([preds[i] == labels[i] for i in corrections])) if corrections else None,
        per_class_n={c: labels.count(c) for c in classes},
        correct={str(r.get("sha256") or r["path"]): preds[i] == labels[i] for i, r in enumerate(rows)},
        kimchi_kept=float(np.mean([preds[i] not in (NOT_KIMCHI, FAILED) for i in kimchi])) if kimchi else None,
        kimchi_n=len(kimchi))
    return result, np.asarray(summary["confusion"]), vocab
