"""`kimchi-train evaluate`: metrics, report and the blog's pictures for a version, on a data folder.

The learner is rebuilt from the safe artifact (safetensors + meta.json), never from learner.pkl.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.artifact import WEIGHTS, ModelMeta
from models.errors import KimchiError
from models.registry import Registry
from training.learner import build_datablock, build_learner, quiet, train_device
from training.report import write_report

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Predictions of a learner on one DataLoader, and what they add up to."""

    vocab: list[str]
    targets: np.ndarray
    probs: np.ndarray
    losses: np.ndarray
    items: list[Path] = field(default_factory=list)
    tta_probs: np.ndarray | None = None

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(1)

    @property
    def metrics(self) -> dict[str, Any]:
        from models.scores import summarize

        out = summarize(self.targets, self.preds, self.vocab)
        if self.tta_probs is not None:
            tta = summarize(self.targets, self.tta_probs.argmax(1), self.vocab)
            out["tta"] = {k: tta[k] for k in ("accuracy", "error_rate", "precision_macro", "recall_macro", "f1_macro")}
        return out

    def write(self, folder: Path, title: str = "") -> dict[str, Any]:
        extra = {}
        if self.tta_probs is not None:
            extra["tta"] = self.metrics["tta"]
        return write_report(folder, self.targets, self.preds, self.vocab, extra=extra, title=title)


def evaluate_learner(learn, dl, tta: bool = False) -> EvalResult:
    """get_preds (and, with `tta`, learn.tta) on `dl`."""
    probs, targets, losses = learn.get_preds(dl=dl, with_loss=True)
    tta_probs = None
    if tta:
        tta_probs, _ = learn.tta(dl=dl)
        tta_probs = tta_probs.float().numpy()
    items = [Path(p) for p in getattr(dl, "items", [])]
    return EvalResult([str(v) for v in learn.dls.vocab], targets.numpy().astype(np.int64), probs.float().numpy(),
                      losses.float().numpy(), items, tta_probs)


def recipe_from_meta(meta: ModelMeta, **overrides: Any):
    """The Recipe a version was trained with (older or imported versions: the defaults plus its sizes)."""
    from training.recipe import Recipe

    known = Recipe.field_names()
    values = {k: v for k, v in (meta.recipe or {}).items() if k in known}
    values.update(arch=meta.arch, presize=meta.preprocessing.presize, size=meta.preprocessing.size,
                  normalize=meta.preprocessing.normalize, pretrained=False, weights=None)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Recipe(**values)


def learner_for_version(registry: Registry, version: str, data_dir: Path, bs: int | None = None,
                        workers: int | None = None):
    """A fastai Learner for `version` over `data_dir`, with the version's vocab, split and weights."""
    from safetensors.torch import load_file

    from models.datafiles import image_files, label_of
    from training.datafolder import count_classes

    name = registry.resolve(version)
    meta = registry.meta(name)
    recipe = recipe_from_meta(meta, bs=bs, workers=workers)
    counts = count_classes(Path(data_dir))
    foreign = sorted(set(counts) - set(meta.vocab))
    if foreign:
        log.warning("classes the model does not know are left out: %s", ", ".join(foreign))
    vocab = list(meta.vocab)

    def known_images(path):
        return [p for p in image_files(path) if label_of(p) in vocab]

    block = build_datablock(recipe, vocab=vocab, get_items=known_images)
    device = train_device(recipe)
    dls = block.dataloaders(Path(data_dir), bs=recipe.bs, num_workers=recipe.workers or 0, device=device)
    learn = build_learner(dls, recipe)
    state = load_file(str(registry.path(name) / WEIGHTS))
    learn.model.load_state_dict(state)
    learn.model.to(device)
    return learn, meta, name


def evaluate_version(registry: Registry, version: str, data_dir: Path, out: Path | None = None, tta: bool = False,
                     test: bool = False, pictures: bool = True, bs: int | None = None,
                     negatives: list[Path] | None = None) -> tuple[Path, dict[str, Any]]:
    """Evaluate `version` on the validation split of `data_dir` (or on all of it with `test`); with an
    open-set check, also the share of kimchi it keeps and of negatives (a not_kimchi class, `negatives`) it
    catches, and openset.png. `openset_lines` in the result says it in words (not in metrics.json)."""
    learn, meta, name = learner_for_version(registry, version, data_dir, bs=bs)
    quiet(learn)
    if test:
        items = learn.dls.train.items + learn.dls.valid.items
        dl = learn.dls.test_dl(items, with_labels=True)
    else:
        dl = learn.dls.valid
    if len(dl.dataset) == 0:
        raise KimchiError(f"No images to evaluate in {data_dir} for the classes of {name}.")
    result = evaluate_learner(learn, dl, tta=tta)
    folder = Path(out) if out else registry.path(name) / "report"
    split = "all images" if test else "valid split"
    metrics = result.write(folder, title=f"{name}, {split}")
    if pictures:
        from training.pictures import write_pictures

        write_pictures(learn, dl, folder)
    openset, lines = evaluate_openset(registry.path(name), [Path(p) for p in dl.items], negatives or [], folder,
                                      title=f"{name}, {split}")
    if openset is not None:
        metrics["openset"] = openset
        (folder / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=2, default=str),
                                             encoding="utf-8")
    metrics["openset_lines"] = lines
    return folder, metrics


def evaluate_openset(version_folder: Path, items: list[Path], negatives: list[Path], out: Path,
                     title: str) -> tuple[dict | None, list[str]]:
    """The version's open-set check on `items` (labelled by folder) and `negatives`: figures, and lines."""
    from models.datafiles import label_of
    from models.labels import NOT_KIMCHI
    from models.openset import OpenSet
    from training.calibrate import Calibration, judge, measure, runner_for, write_histogram

    check = OpenSet.load(version_folder)
    if check is None:
        return None, [f"no open-set check: every photo is answered as some kimchi "
                      f"(kimchi-train calibrate {version_folder.name} adds one)"]
    runner = runner_for(version_folder)
    vocab = list(runner.meta.vocab)
    measured = measure(runner, items, [label_of(p) for p in items])
    extra = judge(check, measure(runner, negatives, [NOT_KIMCHI] * len(negatives)), vocab) if negatives else None
    calibration = Calibration(check, judge(check, measured, vocab), extra)
    write_histogram(calibration, out, title=title)
    return calibration.summary(), calibration.lines()
