"""The evaluation report of a version: metrics.json, the classification report, most-confused pairs and
confusion-matrix pictures, with Hangul drawn in NanumGothic."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from models.scores import most_confused, summarize
from training.fonts import use_korean_font


def classification_report_text(targets: Sequence[int], preds: Sequence[int], vocab: Sequence[str]) -> str:
    from sklearn.metrics import classification_report

    return classification_report(list(targets), list(preds), labels=list(range(len(vocab))),
                                 target_names=list(vocab), digits=3, zero_division=0)


def plot_confusion(cm: np.ndarray, vocab: Sequence[str], path: Path, normalized: bool, title: str) -> None:
    """fastai's plot_confusion_matrix look: actual down, predicted across, numbers in the cells."""
    use_korean_font()
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, dtype=float)
    shown = cm / np.maximum(cm.sum(1, keepdims=True), 1) if normalized else cm
    n = len(vocab)
    side = max(5.0, 0.62 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side, side), dpi=110)
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalized else max(1.0, shown.max()))
    ax.set_title(title)
    ticks = np.arange(n)
    ax.set_xticks(ticks, labels=list(vocab), rotation=90)
    ax.set_yticks(ticks, labels=list(vocab))
    threshold = (1 if normalized else shown.max()) / 2
    for i in range(n):
        for j in range(n):
            text = f"{shown[i, j]:.2f}" if normalized else f"{int(cm[i, j])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8 if n > 8 else 10,
                    color="white" if shown[i, j] > threshold else "black")
    ax.set_ylabel("실제 (actual)")
    ax.set_xlabel("예측 (predicted)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(folder: Path, targets: Sequence[int], preds: Sequence[int], vocab: Sequence[str],
                 extra: dict[str, Any] | None = None, title: str = "") -> dict[str, Any]:
    """Write the report files into `folder`; returns the metrics written to metrics.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    metrics = summarize(targets, preds, vocab)
    if extra:
        metrics.update(extra)
    (folder / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=2), encoding="utf-8")
    (folder / "classification_report.txt").write_text(classification_report_text(targets, preds, vocab), encoding="utf-8")
    pairs = most_confused(metrics["confusion"], vocab)
    lines = [f"{actual} → {predicted}: {count}" for actual, predicted, count in pairs] or ["(no confusions)"]
    (folder / "most_confused.txt").write_text("actual → predicted: count\n" + "\n".join(lines) + "\n", encoding="utf-8")
    cm = np.asarray(metrics["confusion"])
    suffix = f" — {title}" if title else ""
    plot_confusion(cm, vocab, folder / "confusion_matrix.png", False, f"Confusion matrix{suffix}")
    plot_confusion(cm, vocab, folder / "confusion_matrix_normalized.png", True, f"Confusion matrix, normalised{suffix}")
    return metrics
