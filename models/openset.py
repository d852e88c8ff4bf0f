"""The open-set check: whether a photo shows any of a version's kimchi at all.

A score from the model's own pooled features (the head's concat pool, L2-normalised: what its classifier
layers read), computed from the same forward pass as the probabilities (models.runner). Larger is farther:

* `knn` (the default): 1 - the cosine similarity to the k-th nearest of the version's training kimchi
  (Sun et al. 2022, "Out-of-distribution detection with deep nearest neighbors"), from a bank of at most
  BANK_CAP of them drawn evenly over the classes, so one photo costs one (1 x D) @ (D x BANK_CAP) product;
* `mahalanobis`: the smallest Mahalanobis distance to a class mean, under one shared covariance shrunk
  towards its average variance (Lee et al. 2018), stored as a whitening matrix and whitened means.

Only kimchi make the bank and the means: negatives (`not_kimchi`) are the head's business, and the verdict is
"not kimchi" when either the head or the score says so (models.types.Prediction.not_kimchi).

The threshold is calibrated on the version's own validation kimchi (training/calibrate.py), so that a share
`keep` of them passes: the conformal quantile, the ceil((n + 1) * keep)-th smallest score, which a new kimchi
photo from the same distribution stays under with probability at least `keep`.

Everything is stored beside the weights in `openset.safetensors`: tensors, and strings as the file's
metadata. No pickle; a version without the file simply has no check.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from models.errors import ArtifactError, KimchiError

FILE = "openset.safetensors"
METHODS = ("knn", "mahalanobis")
DEFAULT_METHOD = "knn"
DEFAULT_KEEP = 0.95
DEFAULT_K = 5
# Bank rows kept for knn. A photo's cost is one matrix-vector product over the bank: 1,024 x 1,024 floats
# (resnet18's concat pool) is 4 MB, about 1% of resnet18's engine time on a 2-core CPU (bench/openset_bench.py).
BANK_CAP = 1024
# Mahalanobis: the covariance is shrunk towards (its mean variance) x I by this share; with fewer training
# images than dimensions it is singular without it.
SHRINK = 0.2
FORMAT = "1"


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to length 1 (a zero row stays zero)."""
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)


@dataclass
class OpenSet:
    """A version's open-set check: the method, what its score needs (`tensors`), the calibrated threshold
    and what the calibration measured (`info`: plain strings and numbers)."""

    method: str
    k: int
    tensors: dict[str, torch.Tensor]
    threshold: float = math.inf
    keep: float = DEFAULT_KEEP
    info: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.tensors["bank" if self.method == "knn" else "whiten"].shape[1])

    def scores(self, pooled: torch.Tensor) -> torch.Tensor:
        """One score per row of `pooled` (the head's pooled features, as the runtimes give them), float32."""
        x = unit_rows(pooled.float())
        if self.method == "knn":
            bank = self.tensors["bank"]
            sims = x @ bank.T
            k = min(self.k, bank.shape[0])
            return 1.0 - sims.topk(k, dim=1).values[:, k - 1]
        z = x @ self.tensors["whiten"].T
        return torch.cdist(z, self.tensors["means"]).min(dim=1).values ** 2

    def calibrated(self, scores: Sequence[float], keep: float) -> OpenSet:
        """This check with its threshold set so that a share `keep` of `scores` (validation kimchi) pass."""
        return OpenSet(self.method, self.k, self.tensors, conformal_threshold(scores, keep), keep, dict(self.info))

    # -- on disk -------------------------------------------------------------------------------------
    def save(self, folder: Path) -> Path:
        """Write `folder`/openset.safetensors atomically (temp file, fsync, rename)."""
        from safetensors.torch import save as save_bytes

        from models.atomic import atomic_write

        meta = {"format": FORMAT, "method": self.method, "k": str(self.k), "threshold": repr(float(self.threshold)),
                "keep": repr(float(self.keep)), "info": json.dumps(self.info, ensure_ascii=False)}
        tensors = {name: t.detach().float().contiguous().cpu() for name, t in self.tensors.items()}
        path = Path(folder) / FILE
        atomic_write(path, save_bytes(tensors, metadata=meta))
        return path

    @classmethod
    def load(cls, folder: Path) -> OpenSet | None:
        """The check stored in `folder`, or None when the version has none; ArtifactError when it is damaged."""
        from safetensors import SafetensorError, safe_open

        path = Path(folder) / FILE
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {name: f.get_tensor(name).float() for name in f.keys()}
            method, k = meta["method"], int(meta["k"])
            threshold, keep = float(meta["threshold"]), float(meta["keep"])
            info = json.loads(meta.get("info") or "{}")
            needed = {"knn": ("bank",), "mahalanobis": ("whiten", "means")}.get(method)
            if needed is None or any(name not in tensors for name in needed) or k < 1:
                raise ValueError(f"method {method!r} with tensors {sorted(tensors)}")
            if not math.isfinite(threshold):
                raise ValueError("it was never calibrated")
        except (SafetensorError, OSError, KeyError, ValueError, TypeError) as err:
            raise ArtifactError(f"{path} is damaged ({err}); run kimchi-train calibrate {Path(folder).name} "
                                f"to make it again.") from err
        return cls(method, k, tensors, threshold, keep, info)


def fit(method: str, vectors: np.ndarray, labels: Sequence[str], k: int = DEFAULT_K, cap: int = BANK_CAP,
        seed: int = 0) -> OpenSet:
    """An uncalibrated check from the training kimchi's pooled features (`vectors`, one row per image) and
    their labels."""
    if method not in METHODS:
        raise KimchiError(f"Unknown open-set method '{method}'; use {' or '.join(METHODS)}.")
    x = unit_rows(torch.as_tensor(np.asarray(vectors), dtype=torch.float32))
    labels = list(labels)
    if len(x) < 2:
        raise KimchiError("The open-set check needs at least 2 training images of kimchi.")
    if method == "knn":
        keep = balanced_sample(labels, cap, seed)
        return OpenSet("knn", k, {"bank": x[keep].contiguous()}, info={"bank": len(keep)})
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(label) for label in labels])
    means = torch.stack([x[y == c].mean(0) for c in range(len(classes))])
    centred = x - means[y]
    cov = centred.T @ centred / max(1, len(x) - 1)
    average = float(cov.diagonal().mean()) or 1e-6
    cov = (1 - SHRINK) * cov + SHRINK * average * torch.eye(cov.shape[0])
    # whiten = L^-1 with cov = L L^T, so |whiten (x - m)|^2 = (x - m)^T cov^-1 (x - m)
    chol = torch.linalg.cholesky(cov.double())
    whiten = torch.linalg.solve_triangular(chol, torch.eye(cov.shape[0], dtype=torch.float64), upper=False).float()
    return OpenSet("mahalanobis", k, {"whiten": whiten, "means": means @ whiten.T},
                   info={"classes": len(classes), "images": len(x)})


def balanced_sample(labels: Sequence[str], cap: int, seed: int = 0) -> list[int]:
    """Up to `cap` positions of `labels`, as evenly over the labels as they allow (a small class gives all
    it has, the rest share what is left), each class's drawn at random with `seed`; sorted."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    if len(labels) <= cap:
        return list(range(len(labels)))
    chosen: list[int] = []
    left, groups = cap, sorted(by_label.values(), key=len)
    for n, group in enumerate(groups):
        share = left // (len(groups) - n)
        take = group if len(group) <= share else list(rng.choice(group, share, replace=False))
        chosen.extend(int(i) for i in take)
        left -= len(take)
    return sorted(chosen)


def conformal_threshold(scores: Sequence[float], keep: float) -> float:
    """The ceil((n + 1) * keep)-th smallest of `scores` (the largest when n is too small for that rank)."""
    if not 0 < keep < 1:
        raise KimchiError(f"keep must lie between 0 and 1 (e.g. 0.95), not {keep}.")
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    if len(ordered) == 0:
        raise KimchiError("No validation kimchi to calibrate the open-set check on.")
    rank = min(len(ordered), math.ceil((len(ordered) + 1) * keep))
    return float(ordered[rank - 1])
