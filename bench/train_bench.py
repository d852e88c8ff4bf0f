"""Training throughput of the blog pipeline: 1280x960 JPEGs as they come, against the presized import, with
and without bf16 mixed precision and channels_last. One run, same images, same recipe.

    python bench/train_bench.py                               # this CPU, a small set
    python bench/train_bench.py --device cuda --classes 11 --per-class 200

img/s counts training images per second in the second epoch (the first warms up loaders and kernels).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, report  # noqa: E402


def _write_one(args: tuple[str, int, int, int, int]) -> None:
    from tests.imagegen import draw, encode

    path, cls, seed, w, h = args
    Path(path).write_bytes(encode(draw(cls, (w, h), seed=seed), "JPEG", quality=87))


def make_photos(root: Path, classes: int, per_class: int, size=(1280, 960)) -> Path:
    """root/<class>/NNNN.jpg, Telegram-sized, written in parallel."""
    from models.labels import CLASS_NAMES

    jobs = []
    for c in range(classes):
        folder = root / CLASS_NAMES[c % len(CLASS_NAMES)]
        folder.mkdir(parents=True, exist_ok=True)
        jobs += [(str(folder / f"{i:04d}.jpg"), c, c * 100_000 + i, *size) for i in range(per_class)]
    with cf.ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_write_one, jobs, chunksize=16))
    return root


def epoch_throughput(data: Path, **recipe_values) -> dict:
    """Two unfrozen epochs of the recipe; img/s of the second one's training pass."""
    from fastai.callback.core import Callback

    from training.recipe import Recipe
    from training.learner import build_dls, build_learner, quiet

    class Clock(Callback):
        order = 0

        def __init__(self) -> None:
            self.times: list[float] = []

        def before_train(self) -> None:
            if self.learn.dls.device.type == "cuda":
                import torch

                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def after_train(self) -> None:
            if self.learn.dls.device.type == "cuda":
                import torch

                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.start)

    recipe = Recipe(pretrained=False, **recipe_values)
    recipe.validate()
    dls = build_dls(data, recipe)
    learn = build_learner(dls, recipe)
    quiet(learn)
    clock = Clock()
    learn.add_cb(clock)
    learn.unfreeze()
    learn.fit(2, 1e-3)
    n = len(dls.train) * dls.train.bs  # drop_last: the images actually trained on
    return {"img_s": round(n / clock.times[-1], 1), "epoch_s": round(clock.times[-1], 2), "n_train": n,
            "workers": dls.train.num_workers, "mixed_precision": recipe.mixed_precision,
            "channels_last": recipe.channels_last, "presize": recipe.presize}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--per-class", type=int, default=16)
    parser.add_argument("--bs", type=int, default=0, help="default: 16 on the CPU, 64 (the recipe's) on a GPU")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--work", type=Path, help="folder for the images (default: a temp folder)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from training.importer import import_dataset

    work = args.work or Path(tempfile.mkdtemp(prefix="kimchi-train-bench-"))
    raw = work / "raw"
    if not raw.exists():
        started = time.perf_counter()
        make_photos(raw, args.classes, args.per_class)
        print(f"made {args.classes * args.per_class} 1280x960 JPEGs in {time.perf_counter() - started:.1f} s", flush=True)
    presized = work / "presized"
    started = time.perf_counter()
    summary = import_dataset(raw, presized, presize=460)
    import_s = time.perf_counter() - started
    print(f"import --presize 460: {summary.total_added} images in {import_s:.1f} s", flush=True)

    cuda = args.device == "cuda"
    bs = args.bs or (64 if cuda else 16)
    common = dict(arch=args.arch, device=args.device, bs=bs, epochs=1, freeze_epochs=0)
    configs = [("blog: 1280x960 JPEGs, fp32", raw, dict(mixed_precision="no", channels_last="off")),
               ("presized 460, fp32", presized, dict(mixed_precision="no", channels_last="off"))]
    if cuda:
        configs += [("1280x960 JPEGs, bf16 + channels_last", raw, dict(mixed_precision="bf16", channels_last="on")),
                    ("presized 460, bf16 + channels_last", presized, dict(mixed_precision="bf16", channels_last="on")),
                    ("presized 460, bf16, no channels_last", presized, dict(mixed_precision="bf16", channels_last="off"))]
    else:
        configs += [("presized 460, fp32 + channels_last", presized, dict(mixed_precision="no", channels_last="on"))]
    results = {"machine": machine(), "images": args.classes * args.per_class, "import_presize_s": round(import_s, 1),
               "runs": {}}
    for name, data, extra in configs:
        row = epoch_throughput(data, **common, **extra)
        results["runs"][name] = row
        print(f"{name:42} {row['img_s']:8.1f} img/s  ({row['epoch_s']} s for {row['n_train']} images, "
              f"{row['workers']} workers)", flush=True)
    base = results["runs"]["blog: 1280x960 JPEGs, fp32"]["img_s"]
    for name, row in results["runs"].items():
        row["vs_blog"] = round(row["img_s"] / base, 2)
    print(json.dumps({k: v["vs_blog"] for k, v in results["runs"].items()}, ensure_ascii=False))
    report(results, args.out)


if __name__ == "__main__":
    main()
