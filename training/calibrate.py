"""The open-set check of a version (models/openset.py): fitted on its training kimchi, calibrated on its
validation kimchi, measured on its negatives, and written beside its weights.

Images go through the engine's own runner (models.runner, Output.BOTH): the same preprocessing and runtime
as serving, and the probabilities and pooled features of one forward pass. Used when `kimchi-train train`
publishes a version, by `kimchi-train calibrate VERSION` for a version published before the check existed
(or to change its method or `--keep`), and by `kimchi-train evaluate`.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from models.datafiles import image_files, label_of
from models.engine_config import EngineConfig, cpu_runtime_from_env, thread_plan
from models.errors import KimchiError
from models.labels import NOT_KIMCHI
from models.openset import DEFAULT_K, DEFAULT_KEEP, DEFAULT_METHOD, FILE, OpenSet, fit
from models.registry import Registry
from models.runner import Runner, stream
from models.runtimes import Output
from models.types import ImageError

log = logging.getLogger(__name__)


@dataclass
class Measured:
    """The runner's answers for the images that could be read: probabilities, pooled features, labels."""

    probs: np.ndarray  # (n, classes)
    pooled: np.ndarray  # (n, features)
    labels: list[str]
    failed: int = 0


def runner_for(folder: Path, device: str = "cpu", batch_size: int = 32) -> Runner:
    """An Output.BOTH runner on the version in `folder` (a registry version or a staging folder)."""
    folder = Path(folder)
    # float32 on every device: the bot on a CPU serves float32, and the threshold must be met on its numbers
    config = EngineConfig(device=device, max_batch=batch_size, cpu_runtime=cpu_runtime_from_env(), batch_lanes=1,
                          openset=False, half="off")
    return Runner(Registry(folder.parent), folder.name, config, Output.BOTH)


def measure(runner: Runner, items: Sequence[Path], labels: Sequence[str]) -> Measured:
    """Run every image once; unreadable ones are counted and left out."""
    probs, pooled, kept, failed = [], [], [], 0
    with cf.ThreadPoolExecutor(thread_plan(runner.config)[0], thread_name_prefix="kimchi-calibrate") as pool:
        for label, out in zip(labels, stream(runner, (Path(p).read_bytes for p in items), pool)):
            if isinstance(out, ImageError):
                failed += 1
                continue
            probs.append(out[0])
            pooled.append(out[1])
            kept.append(label)
    if failed:
        log.warning("%d images could not be read and were left out of the open-set calibration", failed)
    n_classes = len(runner.meta.vocab)
    return Measured(torch.stack(probs).numpy() if probs else np.zeros((0, n_classes), np.float32),
                    torch.stack(pooled).numpy() if pooled else np.zeros((0, 0), np.float32), kept, failed)


@dataclass
class Verdicts:
    """What the verdict did on labelled images: scores, and which were called not kimchi by the score or the head."""

    scores: np.ndarray
    far: np.ndarray  # the score says not kimchi
    head_says_not: np.ndarray  # the head's best class is not_kimchi
    right: np.ndarray  # the head's best class is the label
    negative: np.ndarray  # the label is not_kimchi

    @property
    def not_kimchi(self) -> np.ndarray:
        return self.far | self.head_says_not

    def figures(self) -> dict:
        kimchi = ~self.negative
        answered = kimchi & ~self.not_kimchi
        n_kimchi, n_negative = int(kimchi.sum()), int(self.negative.sum())
        return {"n_kimchi": n_kimchi, "n_negatives": n_negative,
                "kept": float(answered.sum() / n_kimchi) if n_kimchi else None,
                "right_kind": float((answered & self.right).sum() / answered.sum()) if answered.any() else None,
                "caught": float(self.not_kimchi[self.negative].mean()) if n_negative else None}


def verdicts(measured: Measured, vocab: Sequence[str], scores: np.ndarray, threshold: float) -> Verdicts:
    """The verdict on each measured image given any open-set score and its threshold (experiments compare
    scores that are no OpenSet: max softmax, energy)."""
    n = len(measured.labels)
    best = np.asarray([vocab[i] for i in measured.probs.argmax(1)]) if n else np.zeros(0, str)
    labels = np.asarray(measured.labels)
    return Verdicts(scores, scores > threshold, best == NOT_KIMCHI, best == labels, labels == NOT_KIMCHI)


def judge(openset: OpenSet | None, measured: Measured, vocab: Sequence[str]) -> Verdicts:
    """The verdict on each measured image under `openset` (None: the head alone)."""
    n = len(measured.labels)
    if openset is None or not n:
        return verdicts(measured, vocab, np.zeros(n, np.float32), np.inf)
    return verdicts(measured, vocab, openset.scores(torch.from_numpy(measured.pooled)).numpy(), openset.threshold)


def kimchi_bank(runner: Runner, train_items: Sequence[Path]) -> Measured:
    """The version's training kimchi its distance checks are fitted on (not_kimchi and classes it does not know
    left out), at most BANK_CAP drawn evenly over the classes, measured."""
    from models.openset import BANK_CAP, balanced_sample

    vocab = runner.meta.vocab
    kimchi = [Path(p) for p in train_items if label_of(p) != NOT_KIMCHI and label_of(p) in vocab]
    kimchi = [kimchi[i] for i in balanced_sample([label_of(p) for p in kimchi], BANK_CAP)]
    return measure(runner, kimchi, [label_of(p) for p in kimchi])


@dataclass
class Calibration:
    """A calibrated check and what it did on the version's validation images (and any extra negatives)."""

    openset: OpenSet
    valid: Verdicts
    extra: Verdicts | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def negatives(self) -> np.ndarray:
        """Scores of every negative: the validation not_kimchi and the extra ones."""
        parts = [self.valid.scores[self.valid.negative]]
        if self.extra is not None:
            parts.append(self.extra.scores)
        return np.concatenate(parts)

    def summary(self) -> dict:
        """The figures kept in meta.json, the trainer's DoneEvent and the report."""
        figures = self.valid.figures()
        if self.extra is not None and len(self.extra.scores):
            everything = np.concatenate([self.valid.not_kimchi[self.valid.negative], self.extra.not_kimchi])
            figures["n_negatives"] = int(len(everything))
            figures["caught"] = float(everything.mean())
        return {"method": self.openset.method, "k": self.openset.k, "keep": self.openset.keep,
                "threshold": self.openset.threshold, **figures}

    def lines(self) -> list[str]:
        s = self.summary()
        out = [f"open-set check: {s['method']}" + (f" (k={s['k']})" if s["method"] == "knn" else "")
               + f", threshold {s['threshold']:.4f}, calibrated to keep {s['keep']:.0%} of kimchi"]
        if s["kept"] is not None:
            out.append(f"kimchi answered as kimchi: {s['kept']:.1%} of {s['n_kimchi']}"
                       + (f"; the right kind among them: {s['right_kind']:.1%}" if s["right_kind"] is not None else ""))
        if s["caught"] is not None:
            out.append(f"negatives called not kimchi: {s['caught']:.1%} of {s['n_negatives']}")
        else:
            out.append("negatives called not kimchi: - (no negatives to measure on; add a not_kimchi folder, "
                       "or --negatives DIR)")
        return out + self.notes


def calibrate(folder: Path, train_items: Sequence[Path], valid_items: Sequence[Path], *,
              method: str = DEFAULT_METHOD, keep: float = DEFAULT_KEEP, k: int = DEFAULT_K, device: str = "cpu",
              negatives: Sequence[Path] = (), save: bool = True) -> Calibration:
    """Fit the check on the kimchi of `train_items`, calibrate it on those of `valid_items` to keep `keep`,
    judge the validation negatives (and `negatives`, photos that are no kimchi), and write it into `folder`."""
    folder = Path(folder)
    runner = runner_for(folder, device)
    vocab = list(runner.meta.vocab)
    valid_items = [Path(p) for p in valid_items if label_of(p) in vocab]
    trained = kimchi_bank(runner, train_items)
    if len(trained.labels) < 2:
        raise KimchiError(f"{folder.name} has fewer than 2 training images of kimchi; the open-set check needs more.")
    valid = measure(runner, valid_items, [label_of(p) for p in valid_items])
    check = fit(method, trained.pooled, trained.labels, k=k)
    kimchi = [i for i, label in enumerate(valid.labels) if label != NOT_KIMCHI]
    if not kimchi:
        raise KimchiError(f"{folder.name} has no validation images of kimchi to calibrate the open-set check on.")
    scores = check.scores(torch.from_numpy(valid.pooled[kimchi])).numpy()
    check = check.calibrated(scores, keep)
    notes = []
    if len(kimchi) < 20:
        notes.append(f"only {len(kimchi)} validation kimchi: the threshold is their largest score, and the share "
                     f"kept on new photos may fall short of {keep:.0%}")
    extra = None
    if negatives:
        others = measure(runner, [Path(p) for p in negatives], [NOT_KIMCHI] * len(negatives))
        extra = judge(check, others, vocab)
    check.info.update({"calibrated_on": len(kimchi), "version": folder.name})
    calibration = Calibration(check, judge(check, valid, vocab), extra, notes)
    check.info.update({k: v for k, v in calibration.summary().items() if k not in ("method", "k", "keep", "threshold")})
    if save:
        check.save(folder)
    return calibration


def recorded_split(meta, data_dir: Path) -> tuple[list[Path], list[Path], list[str]]:
    """The version's training and validation images in `data_dir`, split as training split them (the same
    RandomSplitter over the same sorted file list); and notes on why the split may differ from training's."""
    from fastai.data.transforms import RandomSplitter

    recipe = meta.recipe or {}
    items = image_files(data_dir)
    if not items:
        raise KimchiError(f"{data_dir} holds no images; expected {data_dir}/<class>/<image>.jpg.")
    notes = []
    recorded = (meta.dataset or {}).get("fingerprint")
    from training.datafolder import fingerprint

    if recorded and recorded != fingerprint(data_dir):
        notes.append(f"{data_dir} has changed since the version was trained: some validation images may have been "
                     f"training images, which makes the threshold stricter than asked")
    elif not recorded:
        notes.append("the version does not record its data folder's fingerprint; the split is the recipe's seed's")
    train_idx, valid_idx = RandomSplitter(valid_pct=recipe.get("valid_pct", 0.2), seed=recipe.get("seed", 42))(items)
    return [items[i] for i in train_idx], [items[i] for i in valid_idx], notes


def calibrate_version(registry: Registry, version: str, data_dir: Path | None = None, *,
                      method: str = DEFAULT_METHOD, keep: float = DEFAULT_KEEP, k: int = DEFAULT_K,
                      device: str = "cpu", negatives: Sequence[Path] = ()) -> tuple[str, Calibration]:
    """`kimchi-train calibrate VERSION`: (re)make a published version's open-set check."""
    name = registry.resolve(version)
    meta = registry.meta(name)
    data_dir = Path(data_dir or (meta.dataset or {}).get("path") or "")
    if not str(data_dir) or not data_dir.is_dir():
        raise KimchiError(f"{name} was trained on {data_dir or 'an unknown folder'}, which is not here; "
                          f"give its data folder: kimchi-train calibrate {name} --data DIR.")
    train_items, valid_items, notes = recorded_split(meta, data_dir)
    calibration = calibrate(registry.path(name), train_items, valid_items, method=method, keep=keep, k=k,
                            device=device, negatives=negatives)
    calibration.notes[:0] = notes
    return name, calibration


def histogram(path: Path, kimchi: np.ndarray, negatives: np.ndarray, threshold: float, title: str = "") -> Path:
    """A PNG of the score: kimchi against negatives, the threshold as a line."""
    from training.fonts import use_korean_font

    use_korean_font()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.concatenate([kimchi, negatives, [threshold]])
    bins = np.linspace(float(values.min()), float(values.max()) or 1.0, 40)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.hist(kimchi, bins=bins, alpha=0.6, label=f"김치 kimchi ({len(kimchi)})", color="#c0392b")
    if len(negatives):
        ax.hist(negatives, bins=bins, alpha=0.6, label=f"김치 아님 not kimchi ({len(negatives)})", color="#2c3e50")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("open-set score (larger: farther from the kimchi the model knows)")
    ax.set_ylabel("images")
    ax.set_title(title or "open-set score")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_histogram(calibration: Calibration, folder: Path, title: str = "") -> Path:
    """`folder`/openset.png for a calibration."""
    valid = calibration.valid
    return histogram(Path(folder) / "openset.png", valid.scores[~valid.negative], calibration.negatives,
                     calibration.openset.threshold, title)


__all__ = ["Calibration", "FILE", "calibrate", "calibrate_version", "histogram", "judge", "kimchi_bank", "measure",
           "runner_for", "verdicts", "write_histogram"]
