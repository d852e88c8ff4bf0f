"""The safe model artifact: `model.safetensors` (weights) beside `meta.json` (everything else).

Loading never unpickles. `learner.pkl` (fastai's export) may sit in the same folder for people who
use `load_learner`, but nothing here reads it.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.atomic import atomic_write
from models.errors import ArtifactError, KimchiError

if TYPE_CHECKING:  # torch is imported where weights are read or written, so that reading meta.json (the
    import torch   # registry, `kimchi-train --help`, `models`) does not pay for importing torch
    from torch import nn

WEIGHTS = "model.safetensors"
META = "meta.json"
LEARNER = "learner.pkl"
FORMAT = 1


@dataclass
class Preprocessing:
    """What the model was validated with: Resize(presize, crop) then the batch pipeline to `size`."""

    presize: int = 460
    size: int = 224
    resize_method: str = "crop"
    normalize: bool = True
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass
class ModelMeta:
    """Everything about a version but its weights."""

    arch: str
    vocab: list[str]
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    metrics: dict[str, Any] = field(default_factory=dict)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    kept_epoch: int | None = None
    dataset: dict[str, Any] = field(default_factory=dict)
    train_time_s: float | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    source: str = "train"
    format: int = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=2, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelMeta":
        data = dict(data)
        pre = data.pop("preprocessing", {}) or {}
        known = {f for f in cls.__dataclass_fields__}
        meta = cls(**{k: v for k, v in data.items() if k in known})
        meta.preprocessing = Preprocessing(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in pre.items()
                                              if k in Preprocessing.__dataclass_fields__})
        return meta


def save_artifact(folder: Path, model: nn.Module, meta: ModelMeta) -> None:
    """Write the weights and meta.json into `folder` (a staging folder; the registry publishes it)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS), metadata={"arch": meta.arch, "format": str(FORMAT)})
    with open(folder / WEIGHTS, "rb+") as fh:
        os.fsync(fh.fileno())
    atomic_write(folder / META, meta.to_json().encode("utf-8"))


def read_meta(folder: Path) -> ModelMeta:
    """meta.json of a version, or ArtifactError saying what is wrong with it."""
    path = folder / META
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        meta = ModelMeta.from_dict(data)
    except FileNotFoundError:
        raise ArtifactError(f"{folder} has no {META}; it is not a complete model version.") from None
    except (ValueError, TypeError) as err:
        raise ArtifactError(f"{path} is not a valid model description ({err}).") from err
    if not meta.vocab:
        raise ArtifactError(f"{path} lists no classes.")
    return meta


def load_artifact(folder: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelMeta]:
    """The model in eval mode, on `device`, and its meta, from the safe pair. Never unpickles."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from models.archs import build_model, get_spec

    folder = Path(folder)
    meta = read_meta(folder)
    try:
        get_spec(meta.arch)
        model = build_model(meta.arch, len(meta.vocab))
    except KimchiError as err:
        raise ArtifactError(f"{folder}: {err}") from err
    try:
        state = load_file(str(folder / WEIGHTS))
    except FileNotFoundError:
        raise ArtifactError(f"{folder} has no {WEIGHTS}; it is not a complete model version.") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise ArtifactError(f"{folder / WEIGHTS} is damaged ({err}).") from err
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ArtifactError(f"The weights in {folder} do not fit a {meta.arch} with {len(meta.vocab)} classes ({first}).") from err
    return model.eval().to(device), meta
