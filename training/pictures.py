"""The blog's pictures as PNG files: a batch of augmented training images, results with green (right)
or red (wrong) titles, and the top losses. Hangul titles use NanumGothic."""
from __future__ import annotations

import logging
from pathlib import Path

from training.fonts import use_korean_font

log = logging.getLogger(__name__)


def _save_current_figure(path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = plt.gcf()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close("all")


def write_pictures(learn, dl, folder: Path, max_n: int = 9, top_k: int = 9) -> list[Path]:
    """show_batch.png, show_results.png and top_losses.png in `folder`; returns the paths written."""
    use_korean_font()
    import matplotlib.pyplot as plt
    from fastai.interpret import ClassificationInterpretation
    from fastai.vision.learner import plot_top_losses, show_results  # noqa: F401  (register the type dispatch)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    n_train = len(learn.dls.train.dataset)
    if n_train:
        learn.dls.train.show_batch(max_n=min(max_n, n_train), figsize=(9, 9))
        _save_current_figure(folder / "show_batch.png")
        written.append(folder / "show_batch.png")
    n = len(dl.dataset)
    if n:
        learn.show_results(dl=dl, max_n=min(max_n, n), figsize=(9, 9), shuffle=False)
        plt.suptitle("초록 = 맞음, 빨강 = 틀림 (green right, red wrong): actual / predicted")
        _save_current_figure(folder / "show_results.png")
        written.append(folder / "show_results.png")
        interp = ClassificationInterpretation.from_learner(learn, dl=dl)
        interp.plot_top_losses(min(top_k, n), figsize=(12, 12))
        _save_current_figure(folder / "top_losses.png")
        written.append(folder / "top_losses.png")
    return written
