"""Classification metrics from labels alone (numpy), shared by the trainer's reports and the
promotion rule, so that "better" is computed one way everywhere."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def confusion(targets: Sequence[int], preds: Sequence[int], n_classes: int) -> np.ndarray:
    """Counts, rows = actual, columns = predicted."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(targets, dtype=np.int64), np.asarray(preds, dtype=np.int64)), 1)
    return cm


def summarize(targets: Sequence[int], preds: Sequence[int], vocab: Sequence[str]) -> dict[str, Any]:
    """accuracy, error_rate, macro precision/recall/F1 and per-class figures.

    Macro averages run over the classes that occur in `targets` or `preds` (sklearn's behaviour
    when `labels` is not given), with 0 for an undefined precision or recall.
    """
    n = len(vocab)
    cm = confusion(targets, preds, n)
    total = int(cm.sum())
    tp = np.diag(cm).astype(float)
    predicted = cm.sum(0).astype(float)
    actual = cm.sum(1).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(actual > 0, tp / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = (predicted + actual) > 0
    accuracy = float(tp.sum() / total) if total else 0.0
    per_class = {
        vocab[i]: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(actual[i])}
        for i in range(n)
    }
    return {
        "n": total,
        "accuracy": accuracy,
        "error_rate": 1.0 - accuracy if total else 0.0,
        "precision_macro": float(precision[present].mean()) if present.any() else 0.0,
        "recall_macro": float(recall[present].mean()) if present.any() else 0.0,
        "f1_macro": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": per_class,
        "confusion": cm.tolist(),
        "vocab": list(vocab),
    }


def most_confused(cm: np.ndarray | list, vocab: Sequence[str], min_val: int = 1) -> list[tuple[str, str, int]]:
    """(actual, predicted, count) off the diagonal, most frequent first, as fastai's interp.most_confused."""
    cm = np.asarray(cm)
    pairs = [(vocab[i], vocab[j], int(cm[i, j])) for i in range(len(vocab)) for j in range(len(vocab))
             if i != j and cm[i, j] >= min_val]
    return sorted(pairs, key=lambda p: (-p[2], p[0], p[1]))
