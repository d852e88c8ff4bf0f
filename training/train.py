"""The fastai recipe from the blog post, as code with every value overridable.

    DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=get_image_files, get_y=<parent folder>,
              splitter=RandomSplitter(valid_pct=0.2, seed=42), item_tfms=Resize(460),
              batch_tfms=[*aug_transforms(size=224, min_scale=0.75), Normalize.from_stats(*imagenet_stats)])
    learn = vision_learner(dls, resnet18, metrics=[accuracy, error_rate, Recall(average='macro'),
                                                   Precision(average='macro')])
    learn.fine_tune(5, freeze_epochs=1); optionally learn.fit_one_cycle(n, lr_max)

Beyond the blog: the epoch with the best valid loss is kept (optionally stopping early), mixed precision
and channels_last on the GPU, and the result is a registry version with safe weights.
"""
from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastai.callback.channelslast import ChannelsLast
from fastai.callback.fp16 import MixedPrecision
from fastai.callback.schedule import fine_tune, fit_one_cycle, lr_find  # noqa: F401  (patch Learner)
from fastai.learner import Learner
from fastai.torch_core import set_seed

from models.artifact import LEARNER, META, ModelMeta, Preprocessing, save_artifact
from models.atomic import atomic_write
from models.errors import KimchiError
from models.clock import stamp
from models.onnx_export import export_onnx
from models.protocol import DoneEvent, Stage, StageEvent, StartEvent
from models.registry import Registry
from training import distributed
from training.recipe import Recipe
from training.datafolder import count_classes, fingerprint
from training.evaluate import evaluate_learner
from training.learner import build_dls, build_learner, quiet, resolve_amp
from training.progress import Progress
from training.tracker import EpochTracker

log = logging.getLogger(__name__)


def fit(learn: Learner, recipe: Recipe, tracker: EpochTracker) -> None:
    """The blog's `fine_tune(epochs, freeze_epochs=…)`, then `fit_one_cycle(cycles, lr_max)` if asked."""
    learn.add_cb(tracker)
    try:
        if recipe.freeze_epochs > 0 and recipe.epochs > 0:
            tracker.phases = ["frozen", "unfrozen"]
            learn.fine_tune(recipe.epochs, base_lr=recipe.base_lr, freeze_epochs=recipe.freeze_epochs,
                            pct_start=recipe.pct_start)
        elif recipe.epochs > 0:  # fine_tune's second half alone
            tracker.phases = ["unfrozen"]
            learn.unfreeze()
            lr = recipe.base_lr / 2
            learn.fit_one_cycle(recipe.epochs, slice(lr / 100, lr), pct_start=recipe.pct_start, div=5.0)
        elif recipe.freeze_epochs > 0:  # fine_tune's first half alone
            tracker.phases = ["frozen"]
            learn.freeze()
            learn.fit_one_cycle(recipe.freeze_epochs, slice(recipe.base_lr), pct_start=0.99)
        if recipe.cycles > 0:
            tracker.phases.append("cycle")
            learn.unfreeze()
            learn.fit_one_cycle(recipe.cycles, recipe.lr_max)
    finally:
        learn.remove_cb(tracker)
    tracker.restore_best(learn.model)


def library_versions() -> dict[str, str]:
    import fastai
    import PIL
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "fastai": fastai.__version__, "pillow": PIL.__version__}


def make_meta(learn: Learner, recipe: Recipe, tracker: EpochTracker, metrics: dict[str, Any],
              counts: dict[str, int], data_dir: Path, train_time: float) -> ModelMeta:
    mean, std = recipe.stats()
    pre = Preprocessing(presize=recipe.presize, size=recipe.size, resize_method="crop", normalize=recipe.normalize,
                        mean=tuple(mean), std=tuple(std))
    n_valid = len(learn.dls.valid_ds)
    return ModelMeta(
        arch=recipe.arch, vocab=[str(v) for v in learn.dls.vocab], preprocessing=pre, metrics=metrics,
        epochs=tracker.rows, kept_epoch=tracker.best_epoch,
        dataset={"path": str(data_dir), "fingerprint": fingerprint(data_dir), "counts": counts,
                 "n_train": len(learn.dls.train_ds), "n_valid": n_valid},
        train_time_s=round(train_time, 2), recipe=asdict(recipe), versions=library_versions(), created_at=stamp(),
    )


@dataclass
class TrainOutcome:
    version: str
    path: Path
    meta: ModelMeta
    learn: Learner = field(repr=False)


def train(data_dir: Path, recipe: Recipe, registry: Registry, progress: Progress,
          report: bool = True) -> TrainOutcome | None:
    """Train the recipe on `data_dir` and publish the result as a new registry version.

    Under `kimchi-train train --gpus N` (training.distributed) every process trains; only rank 0
    evaluates and publishes, and the others return None.
    """
    recipe.validate()
    data_dir = Path(data_dir)
    counts = count_classes(data_dir)
    if distributed.is_main():  # another process's staging folder is not this one's to clean
        registry.cleanup_staging()
    distributed.setup_process(recipe.device)
    set_seed(recipe.seed)
    dls = build_dls(data_dir, recipe)
    learn = build_learner(dls, recipe)
    if not progress.bars:
        quiet(learn)
    progress.emit(StartEvent(arch=recipe.arch, classes=tuple(map(str, dls.vocab)), counts=counts,
                             n_train=len(dls.train_ds), n_valid=len(dls.valid_ds), total=recipe.total_epochs,
                             device=str(dls.device), mixed_precision=resolve_amp(recipe, dls.device) or "no"))
    tracker = EpochTracker(recipe.total_epochs, progress, recipe.early_stop)
    started = time.monotonic()
    with distributed.context(learn, dls.device):
        fit(learn, recipe, tracker)
    train_time = time.monotonic() - started
    if not distributed.is_main():
        return None
    progress.emit(StageEvent(stage=Stage.EVALUATING))
    staging = registry.staging()
    try:
        result = evaluate_learner(learn, learn.dls.valid)
        metrics = result.metrics
        if report:
            metrics = result.write(staging / "report", title=f"{recipe.arch}, valid split")
        metrics = {k: v for k, v in metrics.items() if k not in ("confusion",)}
        metrics["kept_epoch"] = tracker.best_epoch
        metrics["stopped_early"] = tracker.stopped_early
        meta = make_meta(learn, recipe, tracker, metrics, counts, data_dir, train_time)
        save_artifact(staging, learn.model, meta)
        export_learner(learn, staging / LEARNER)
        # model.onnx for the CPU runtime, checked on the version's own validation images: a larger
        # difference than onnx_export.PARITY_TOLERANCE fails the publish.
        export_onnx(staging, images=list(learn.dls.valid_ds.items))
        openset = publish_openset(staging, learn, recipe, report)
        if openset is not None:
            metrics["openset"] = openset  # meta.metrics is this dict
            atomic_write(staging / META, meta.to_json().encode("utf-8"))
        version = registry.publish(staging)
    except BaseException:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        raise
    path = registry.path(version)
    progress.emit(DoneEvent(version=version, path=str(path), kept_epoch=tracker.best_epoch,
                            train_time_s=round(train_time, 2), metrics={k: metrics.get(k) for k in (
                                "accuracy", "error_rate", "precision_macro", "recall_macro", "f1_macro")}
                            | openset_figures(metrics.get("openset"))))
    return TrainOutcome(version, path, meta, learn)


def openset_figures(summary: dict | None) -> dict[str, float | None]:
    """The open-set figures the trainer reports in its DoneEvent: kimchi kept, negatives caught, right kind."""
    if not summary:
        return {}
    return {f"openset_{k}": summary.get(k) for k in ("kept", "caught", "right_kind", "threshold")}


def publish_openset(staging: Path, learn: Learner, recipe: Recipe, report: bool) -> dict | None:
    """The version's open-set check (training/calibrate.py), written into `staging`; its figures, or None
    when the recipe turns it off or it cannot be made (the version is then published without it, and
    `kimchi-train calibrate` can add it later)."""
    if recipe.openset == "off":
        return None
    from training.calibrate import calibrate, write_histogram

    try:
        calibration = calibrate(staging, list(learn.dls.train_ds.items), list(learn.dls.valid_ds.items),
                                method=recipe.openset, keep=recipe.keep, device=str(learn.dls.device))
    except KimchiError as err:
        log.warning("published without the open-set check: %s", err)
        return None
    for line in calibration.lines():
        log.info("%s", line)
    if report:
        write_histogram(calibration, staging / "report", title=f"{recipe.arch}, valid split")
    return calibration.summary()


def export_learner(learn: Learner, path: Path) -> None:
    """fastai's learn.export, without the run's callbacks and in the default memory format."""
    for cb in [cb for cb in learn.cbs if isinstance(cb, (MixedPrecision, ChannelsLast, EpochTracker))]:
        learn.remove_cb(cb)
    learn.model.to(memory_format=torch.contiguous_format)
    learn.export(Path(path).resolve())
