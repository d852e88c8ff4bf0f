"""The training callback that records every epoch, keeps the best weights and reports through Progress."""
from __future__ import annotations

import math
import time
from typing import Any

from fastai.callback.core import Callback, CancelFitException
from torch.nn.parallel import DistributedDataParallel

from models.protocol import BatchEvent, EpochEvent
from training.progress import Progress


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class EpochTracker(Callback):
    """Records every epoch across fine_tune's phases and fit_one_cycle, and keeps the best weights.

    The blog kept epoch 4 of 5 by eye, because valid loss rose while train loss fell; this keeps the
    epoch with the lowest valid loss automatically, and can stop early after `patience` epochs
    without improvement.
    """

    order = 60  # after Recorder (50), so final_record holds this epoch's values

    def __init__(self, total: int, progress: Progress, patience: int | None = None) -> None:
        self.total, self.progress, self.patience = total, progress, patience
        self.rows: list[dict[str, Any]] = []
        self.best_loss = math.inf
        self.best_epoch: int | None = None
        self.best_state: dict | None = None
        self.stopped_early = False
        self.phases: list[str] = []  # one name per fit() call, in order
        self.phase = "train"
        self._last_batch_emit = 0.0

    def before_fit(self) -> None:
        if self.phases:
            self.phase = self.phases.pop(0)
        if self.stopped_early:
            raise CancelFitException()

    def after_batch(self) -> None:
        if not self.training or not self.progress.json:
            return
        now = time.monotonic()
        if now - self._last_batch_emit >= 1.0:
            self._last_batch_emit = now
            fraction = (self.iter + 1) / max(1, self.n_iter)
            self.progress.emit(BatchEvent(epoch=len(self.rows) + 1, total=self.total, fraction=round(fraction, 3)))

    def after_epoch(self) -> None:
        names = [str(n) for n in self.recorder.metric_names[1:-1]]  # without 'epoch' and 'time'
        values = dict(zip(names, self.learn.final_record))
        train_loss, valid_loss = _finite(values.pop("train_loss", None)), _finite(values.pop("valid_loss", None))
        metrics = {_metric_name(k): _finite(v) for k, v in values.items()}
        epoch = len(self.rows) + 1
        improved = valid_loss is not None and valid_loss < self.best_loss
        if improved:
            self.best_loss, self.best_epoch = valid_loss, epoch
            model = self.learn.model
            if isinstance(model, DistributedDataParallel):  # --gpus N: keep the plain model's keys
                model = model.module
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        row = {"epoch": epoch, "phase": self.phase, "train_loss": train_loss, "valid_loss": valid_loss, **metrics}
        self.rows.append(row)
        self.progress.emit(EpochEvent(epoch=epoch, total=self.total, phase=self.phase, train_loss=train_loss,
                                      valid_loss=valid_loss, metrics=metrics, best=improved))
        if self.patience and self.best_epoch is not None and epoch - self.best_epoch >= self.patience:
            self.stopped_early = True
            raise CancelFitException()

    def restore_best(self, model) -> None:
        """Load the kept epoch's weights into `model`."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


def _metric_name(name: str) -> str:
    return {"recall_score": "recall_macro", "precision_score": "precision_macro"}.get(name, name)
