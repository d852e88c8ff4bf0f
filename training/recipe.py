"""The recipe's settings, without importing fastai (so that bad flags fail fast)."""
from __future__ import annotations

from dataclasses import dataclass, fields

from models.errors import KimchiError
from models.recipe_flags import PRESETS


@dataclass
class Recipe:
    """Every knob of the recipe. Defaults are the blog's."""

    arch: str = "resnet18"
    pretrained: bool = True
    weights: str | None = None
    epochs: int = 5
    freeze_epochs: int = 1
    base_lr: float = 2e-3
    pct_start: float = 0.3
    cycles: int = 0
    lr_max: float = 1e-4
    size: int = 224
    presize: int = 460
    min_scale: float = 0.75
    flip_vert: bool = False
    max_rotate: float = 10.0
    max_zoom: float = 1.1
    max_lighting: float = 0.2
    max_warp: float = 0.2
    normalize: bool = True
    bs: int = 64
    valid_pct: float = 0.2
    seed: int = 42
    mixed_precision: str = "auto"  # auto | no | fp16 | bf16
    channels_last: str = "auto"  # auto | on | off
    early_stop: int | None = None  # patience in epochs; None keeps training, still restoring the best
    workers: int | None = None
    device: str = "auto"
    # The open-set check made when the version is published (models/openset.py): knn, mahalanobis or off;
    # calibrated on the validation kimchi so that a share `keep` of them is answered as kimchi.
    openset: str = "knn"
    keep: float = 0.95

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    @classmethod
    def from_preset(cls, preset: str = "blog", **overrides: object) -> "Recipe":
        """The named preset, with `overrides` (flags given beside it) on top."""
        if preset not in PRESETS:
            raise KimchiError(f"Unknown preset '{preset}'; use {', '.join(PRESETS)}.")
        return cls(**{**PRESETS[preset][1], **overrides})

    def validate(self) -> None:
        from models.archs import get_spec  # torch: not for `kimchi-train --help` or a command that needs none

        get_spec(self.arch)
        problems = []
        if self.epochs < 0 or self.freeze_epochs < 0 or self.cycles < 0:
            problems.append("epochs, freeze_epochs and cycles must not be negative")
        if self.epochs + self.freeze_epochs + self.cycles == 0:
            problems.append("at least one epoch must be trained")
        if not 0 < self.valid_pct < 1:
            problems.append(f"valid_pct must lie between 0 and 1, not {self.valid_pct}")
        if self.size < 16 or self.presize < self.size:
            problems.append(f"size must be at least 16 and presize ({self.presize}) at least size ({self.size})")
        if not 0 < self.min_scale <= 1:
            problems.append(f"min_scale must lie in (0, 1], not {self.min_scale}")
        if self.bs < 1:
            problems.append("bs must be at least 1")
        if self.openset not in ("knn", "mahalanobis", "off"):
            problems.append(f"openset must be knn, mahalanobis or off, not {self.openset}")
        if not 0.5 <= self.keep < 1:
            problems.append(f"keep must lie in [0.5, 1), not {self.keep}")
        if self.channels_last not in ("auto", "on", "off"):
            problems.append(f"channels_last must be auto, on or off, not {self.channels_last}")
        if self.early_stop is not None and self.early_stop < 1:
            problems.append("early_stop must be at least 1 epoch")
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            problems.append(f"mixed_precision must be auto, no, fp16 or bf16, not {self.mixed_precision}")
        if self.base_lr <= 0 or self.lr_max <= 0:
            problems.append("learning rates must be positive")
        if problems:
            raise KimchiError("Invalid recipe: " + "; ".join(problems) + ".")

    @property
    def total_epochs(self) -> int:
        return self.freeze_epochs + self.epochs + self.cycles

    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        from models.archs import get_spec

        return get_spec(self.arch).stats
