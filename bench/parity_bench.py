"""Parity of the engine with fastai's learn.predict on 216 varied images (sizes, aspect ratios, EXIF
orientations, PNG/WEBP/grey/progressive), with a trained resnet18 at the recipe's 460/224:
top-1 agreement and max |Δprobability|, for the CPU path and, where there is one, the GPU path (nvJPEG).

    python bench/parity_bench.py [--home DIR]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, report, trained_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import numpy as np
    import torch
    from fastai.learner import load_learner
    from fastai.vision.core import PILImage

    from models.engine import Classifier, EngineConfig
    from models.preprocess import decode_rgb
    from tests.imagegen import varied_images

    home = Path(args.home or tempfile.mkdtemp(prefix="kimchi-parity-"))
    registry, version = trained_model(home, epochs=2)
    images = varied_images(216)
    learn = load_learner(registry.path(version) / "learner.pkl", cpu=True)
    with learn.no_bar():
        reference = np.stack([learn.predict(PILImage(decode_rgb(d)))[2].numpy() for d in images])
    vocab = [str(v) for v in learn.dls.vocab]
    results = {"machine": machine(), "images": len(images), "model": version,
               "reference_mean_top1_prob": float(reference.max(1).mean())}
    paths = [("cpu", "pil"), ("cpu", "torchvision")] + ([("cuda", "auto")] if torch.cuda.is_available() else [])
    for device, decoder in paths:
        classifier = Classifier(registry, version, EngineConfig(device=device, top_k=len(vocab), jpeg_decoder=decoder))
        out = classifier.classify_batch(images)
        classifier.close()
        ours = np.array([[dict(r.top)[label] for label in vocab] for r in out])
        delta = np.abs(ours - reference).max(1)
        row = {"top1_agreement": float((ours.argmax(1) == reference.argmax(1)).mean()),
               "max_abs_dprob": float(delta.max()), "median_abs_dprob": float(np.median(delta))}
        results[f"{device}/{decoder}"] = row
        print(f"{device}/{decoder}: {row}", flush=True)
    report(results, args.out)


if __name__ == "__main__":
    main()
