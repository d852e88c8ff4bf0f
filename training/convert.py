"""`kimchi-train import-model`: a fastai `learn.export()` pickle (such as the blog's
identifying_Kimchi_model.pkl) into the safe format. Unpickling runs code, so this happens once, on
the user's say-so; afterwards nothing loads the pickle again."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from models.archs import ARCHS, build_model
from models.artifact import LEARNER, ModelMeta, Preprocessing, save_artifact
from models.errors import KimchiError
from models.clock import stamp
from models.registry import Registry

log = logging.getLogger(__name__)


def detect_arch(model: torch.nn.Module, n_out: int) -> str:
    """The architecture whose fastai module tree has exactly these tensor names and shapes."""
    wanted = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for name in ARCHS:
        candidate = build_model(name, n_out).state_dict()
        if wanted == {k: tuple(v.shape) for k, v in candidate.items()}:
            return name
    raise KimchiError(f"The exported model is not one of the supported architectures ({', '.join(ARCHS)}) "
                      f"with fastai's default head.")


def preprocessing_of(learn) -> Preprocessing:
    """Resize size, batch size and Normalize stats read off the export's transforms."""
    from fastai.data.transforms import Normalize
    from fastai.vision.augment import AffineCoordTfm, RandomResizedCropGPU, Resize

    pre = Preprocessing(normalize=False)
    for tfm in learn.dls.after_item.fs:
        if isinstance(tfm, Resize):
            pre.presize = int(tfm.size[0])
            if str(tfm.method) != "crop":
                raise KimchiError(f"The export resizes with method '{tfm.method}'; only the recipe's crop is supported.")
    for tfm in learn.dls.after_batch.fs:
        if isinstance(tfm, RandomResizedCropGPU):
            pre.size = int(tfm.size[0])
        elif isinstance(tfm, AffineCoordTfm) and tfm.size is not None:
            pre.size = int(tfm.size[0] if isinstance(tfm.size, tuple) else tfm.size)
        elif isinstance(tfm, Normalize) and tfm.mean is not None:
            pre.normalize = True
            pre.mean = tuple(float(v) for v in torch.as_tensor(tfm.mean).flatten())
            pre.std = tuple(float(v) for v in torch.as_tensor(tfm.std).flatten())
    return pre


def import_fastai_export(path: Path, registry: Registry) -> tuple[str, Path]:
    """Load the pickle (trusted by the caller), and publish its weights and description as a version."""
    if not path.is_file():
        raise KimchiError(f"{path} does not exist.")
    from fastai.learner import load_learner

    try:
        learn = load_learner(path, cpu=True)
    except RuntimeError as err:
        raise KimchiError(f"{path} could not be loaded with this fastai: {str(err).splitlines()[0]}") from err
    except Exception as err:
        raise KimchiError(f"{path} is not a fastai export that can be loaded here ({err.__class__.__name__}: {err}).") from err
    vocab = [str(v) for v in learn.dls.vocab]
    arch = detect_arch(learn.model, len(vocab))
    model = build_model(arch, len(vocab))
    model.load_state_dict(learn.model.state_dict())
    meta = ModelMeta(arch=arch, vocab=vocab, preprocessing=preprocessing_of(learn), source=f"import-model {path.name}",
                     created_at=stamp())
    staging = registry.staging()
    try:
        save_artifact(staging, model, meta)
        shutil.copyfile(path, staging / LEARNER)
        version = registry.publish(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return version, registry.path(version)
