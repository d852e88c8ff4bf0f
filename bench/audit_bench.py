"""Audit benchmark: `kimchi-train audit` on 5,500 images (11 classes x 500) at the recipe's 460/224, split
into the embedding pass and the rest, beside the engine's classify_stream on the same images in one run.

    python bench/audit_bench.py                       # resnet18 with random weights (timing only)
    python bench/audit_bench.py --data /tmp/audit-5500   # keep the generated images for a rerun
    python bench/audit_bench.py --measure-threshold   # the near-duplicate study quoted in models/embed.py
    python bench/audit_bench.py --users               # what the audit flags among users' labels (small)

--users trains the test session's small model (4 classes, 160/64) and audits its training images as the base
beside users' labels: noise (and other things that are not kimchi) labelled as kimchi by two agreeing
accounts, labels flipped to another class, floods of one picture re-saved by one account, and honest labels.
It prints how many of each the audit flags, once with the version's stored open-set check and once as for an
old version without one (the audit fits a check from the base).

The images are imagegen pictures stored as the import stores them: shorter side 460, JPEG quality 95.
Random weights time exactly like trained ones; the audit's verdicts on them mean nothing. Figures are
seconds and images per second of one pass each; compare the ratios within a run.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, report  # noqa: E402  (puts the repository on sys.path)

from models.datafiles import JPEG_QUALITY  # noqa: E402
from models.labels import CLASS_NAMES  # noqa: E402
from tests.imagegen import draw, encode  # noqa: E402


def _write_class(args: tuple[Path, int, int, tuple[int, int]]) -> int:
    root, class_index, per_class, size = args
    folder = root / CLASS_NAMES[class_index]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(per_class):
        path = folder / f"img_{i:04d}.jpg"
        if not path.exists():
            draw(class_index, size, seed=20_000 + class_index * 1000 + i).save(path, "JPEG", quality=JPEG_QUALITY)
    return per_class


def make_images(root: Path, classes: int, per_class: int, size: tuple[int, int] = (613, 460)) -> list[Path]:
    """root/<class>/img_NNNN.jpg, already presized (shorter side 460) as `kimchi-train import` leaves them."""
    with cf.ProcessPoolExecutor(2) as pool:
        list(pool.map(_write_class, [(root, c, per_class, size) for c in range(classes)]))
    return sorted(root.rglob("*.jpg"))


def random_resnet18(home: Path, classes: int) -> tuple:
    """A registry with one resnet18 version at 460/224 and random weights (no download, no training)."""
    from models.archs import build_model
    from models.artifact import ModelMeta, Preprocessing, save_artifact
    from models.registry import Registry

    registry = Registry(home / "models")
    if registry.current():
        return registry, registry.current()
    staging = registry.staging()
    meta = ModelMeta(arch="resnet18", vocab=list(CLASS_NAMES[:classes]), preprocessing=Preprocessing(presize=460, size=224),
                     source="bench")
    save_artifact(staging, build_model("resnet18", classes).eval(), meta)
    return registry, registry.publish(staging)


def engine_pass(classifier, paths: list[Path]) -> float:
    """img/s of the engine's classify_stream (the CLI's path) over `paths`."""
    loaders = [(lambda p=p: p.read_bytes()) for p in paths]
    start = time.perf_counter()
    n = sum(1 for r in classifier.classify_stream(loaders) if r.ok)
    return n / (time.perf_counter() - start)


def embed_pass(embedder, paths: list[Path]) -> float:
    """img/s of the audit's embedding pass over `paths`, with a loaded model like the engine's."""
    start = time.perf_counter()
    n = len(embedder.embed(paths).vectors)
    return n / (time.perf_counter() - start)


def timing(args: argparse.Namespace) -> None:
    from models.embed import DEFAULT_DUPLICATE_THRESHOLD, Embedder
    from models.engine import Classifier, EngineConfig
    from training.audit import run_audit

    work = Path(args.data or tempfile.mkdtemp(prefix="kimchi-audit-bench-"))
    started = time.perf_counter()
    paths = make_images(work / "data", args.classes, args.per_class)
    print(f"{len(paths)} images in {work / 'data'} ({time.perf_counter() - started:.0f} s to make)", flush=True)
    registry, version = random_resnet18(work / "home", args.classes)
    results: dict = {"machine": machine(), "images": len(paths), "model": "resnet18 460/224, random weights"}

    audit = run_audit(work / "data", registry, version, work / "audit", folds=5, device=args.device)
    n = len(audit.rows)
    results["audit"] = {"timings_s": audit.timings, "embed_img_s": n / audit.embed_s, "total_s": audit.embed_s + audit.rest_s,
                        "embed_runtime": audit.embed_runtime, "summary": audit.summary()}
    print(f"audit embedding pass ({audit.embed_runtime}): {n} images in {audit.embed_s:.1f} s = {n / audit.embed_s:.1f} img/s "
          f"(model load included)", flush=True)
    print("audit, the rest: " + ", ".join(f"{k} {v:.2f} s" for k, v in audit.timings.items() if k != "embed")
          + f"; total {audit.rest_s:.1f} s", flush=True)
    print(f"audit total: {audit.embed_s + audit.rest_s:.1f} s (target < 600 s)", flush=True)
    print(audit.summary(), flush=True)
    sizes: dict[int, int] = {}
    for row in audit.rows:
        sizes[row.group] = sizes.get(row.group, 0) + 1
    results["groups"] = {"threshold": DEFAULT_DUPLICATE_THRESHOLD, "groups": len(sizes), "largest": max(sizes.values())}
    print(f"near-duplicate groups at {DEFAULT_DUPLICATE_THRESHOLD}: {len(sizes)} for {n} images, the largest "
          f"{max(sizes.values())} (random weights: not a measure of the threshold)", flush=True)

    # The machine is shared: the engine and the embedding pass alternate on the same subset, so that
    # load from elsewhere falls on both alike; the medians are compared.
    subset = paths[::args.every]
    classifier = Classifier(registry, version, EngineConfig(device=args.device, max_batch=32))
    embedder = Embedder(registry, version, device=args.device)
    engine_rates, embed_rates = [], []
    try:
        list(classifier.classify_stream([(lambda p=p: p.read_bytes()) for p in subset[:64]]))  # warm-up
        embedder.embed(subset[:64])
        for round_ in range(args.rounds):
            engine_rates.append(engine_pass(classifier, subset))
            embed_rates.append(embed_pass(embedder, subset))
            print(f"round {round_ + 1}: engine classify_stream ({classifier.runtime}) "
                  f"{engine_rates[-1]:.1f} img/s, embedding pass ({embedder.runtime}) {embed_rates[-1]:.1f} img/s "
                  f"on {len(subset)} images", flush=True)
    finally:
        classifier.close()
    engine_median, embed_median = statistics.median(engine_rates), statistics.median(embed_rates)
    results["interleaved"] = {"images": len(subset), "engine_img_s": engine_rates, "embed_img_s": embed_rates,
                              "ratio_of_medians": embed_median / engine_median}
    print(f"median of {args.rounds} rounds: engine {engine_median:.1f} img/s, embedding pass {embed_median:.1f} img/s, "
          f"ratio {embed_median / engine_median:.2f} (target >= 1)")
    report(results, args.out)


# ---------------------------------------------------------------------------------------------
# --measure-threshold: where models.embed.DEFAULT_DUPLICATE_THRESHOLD comes from

def _resent(data: bytes) -> bytes:
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    img = img.resize((round(img.width * 0.9), round(img.height * 0.9)), Image.Resampling.BILINEAR)
    return encode(img, "JPEG", quality=70)


def _session_model(home: Path):
    """The test session's model (tests/conftest.py `trained`): efficientnet_lite0 fine-tuned at 160/64."""
    from models.registry import Registry
    from tests.imagegen import make_dataset
    from training.progress import Progress
    from training.train import Recipe, train

    registry = Registry(home / "models")
    if not registry.current():
        make_dataset(home / "data", classes=4, per_class=30, size=(200, 150))
        recipe = Recipe(arch="efficientnet_lite0", size=64, presize=160, bs=16, epochs=3, freeze_epochs=1, workers=0)
        train(home / "data", recipe, registry, Progress("quiet"), report=False)
    return registry, registry.current()


def _imagenet_body(home: Path, presize: int, size: int):
    """efficientnet_lite0 with its bundled ImageNet body and an untrained head: features before any fine-tuning."""
    from models.archs import build_model, cut_body, get_spec, imagenet_backbone
    from models.artifact import ModelMeta, Preprocessing, save_artifact
    from models.efficientnet_lite import LITE_STATS
    from models.registry import Registry

    registry = Registry(home / f"imagenet{size}")
    if not registry.current():
        model = build_model("efficientnet_lite0", 4)
        model[0].load_state_dict(cut_body(imagenet_backbone("efficientnet_lite0"), get_spec("efficientnet_lite0").cut).state_dict())
        staging = registry.staging()
        save_artifact(staging, model.eval(), ModelMeta(arch="efficientnet_lite0", vocab=list(CLASS_NAMES[:4]),
                      preprocessing=Preprocessing(presize=presize, size=size, mean=LITE_STATS[0], std=LITE_STATS[1])))
        registry.publish(staging)
    return registry, registry.current()


def measure_threshold(args: argparse.Namespace) -> None:
    import numpy as np

    from models.embed import embeddings
    from tests.test_audit import photo

    home = Path(args.data or tempfile.mkdtemp(prefix="kimchi-threshold-"))
    models = {"session 160/64": _session_model(home / "session"), "imagenet 160/64": _imagenet_body(home, 160, 64),
              "imagenet 460/224": _imagenet_body(home, 460, 224)}
    n = args.threshold_n
    thresholds = (0.90, 0.92, 0.93, 0.94, 0.95, 0.96)
    for name, (registry, version) in models.items():
        for kind, size in (("imagegen", (200, 150)), ("photo", (320, 240)), ("photo", (640, 480))):
            make = (lambda c, s: draw(c, size, seed=s)) if kind == "imagegen" else (lambda c, s: photo(c, size, seed=s))
            originals = [encode(make(c, 9000 + c * 1000 + i), "JPEG", quality=92) for c in range(4) for i in range(n)]
            labels = np.repeat(np.arange(4), n)
            vectors = embeddings(registry, version, originals + [_resent(d) for d in originals])
            a, b = vectors[:len(originals)], vectors[len(originals):]
            dup = (a * b).sum(1)
            upper = np.triu_indices(len(a), 1)
            same = (a @ a.T)[upper][labels[upper[0]] == labels[upper[1]]]
            print(f"{name:16} {kind:8} {size[0]}x{size[1]}: photo vs resent copy min {dup.min():.3f} p1 {np.percentile(dup, 1):.3f} "
                  f"median {np.median(dup):.3f} | distinct same-class max {same.max():.3f} p99.9 {np.percentile(same, 99.9):.3f} "
                  f"median {np.median(same):.3f} ({len(dup)} copies, {len(same)} pairs)", flush=True)
            print("    " + "; ".join(f"{t}: copies missed {np.mean(dup < t):.1%}, pairs joined {np.mean(same >= t):.2%}"
                                   for t in thresholds), flush=True)


# ---------------------------------------------------------------------------------------------
# --users: what the audit flags among users' labels

def _users_items(root: Path, base: Path, args: argparse.Namespace) -> tuple[list, dict, dict]:
    """Base items (no accounts) and users' labels by kind: (items, users, kinds)."""
    import random

    from models.datafiles import image_files, label_of
    from tests.imagegen import OTHER_KINDS, UsersLabels, draw_other
    from tests.test_audit import photo

    rng = random.Random(0)
    classes = sorted({label_of(p) for p in image_files(base)}, key=CLASS_NAMES.index)
    labelled = UsersLabels(root, [(p, label_of(p)) for p in image_files(base)])
    add = labelled.add

    for i in range(args.noise):  # coordinated junk: two accounts that agree on every label
        add("noise", draw_other("noise", (200, 150), seed=500 + i), rng.choice(classes), ("1", "2"))
    others = [k for k in OTHER_KINDS if k != "noise"]
    for i in range(args.noise):
        add("other", draw_other(others[i % len(others)], (200, 150), seed=600 + i), rng.choice(classes), ("1", "2"))
    for i in range(args.flips):  # a fresh picture of one class labelled as another, each by its own account
        c = i % len(classes)
        wrong = classes[(c + 1 + rng.randrange(len(classes) - 1)) % len(classes)]
        add("flipped", draw(CLASS_NAMES.index(classes[c]), (200, 150), seed=40_000 + i), wrong, (f"f{i}",))
    for i in range(args.flips):  # honest labels: what the audit should leave alone
        c = i % len(classes)
        add("honest", draw(CLASS_NAMES.index(classes[c]), (200, 150), seed=50_000 + i), classes[c], (f"h{i}",))
    for f in range(args.floods):  # one photo re-saved again and again by one account
        c = f % len(classes)
        # photo-like (tests/test_audit.py): imagegen's per-pixel noise changes with each re-save (models/embed.py)
        burst = photo(CLASS_NAMES.index(classes[c]), seed=60_000 + f)
        for i in range(args.flood_size):
            add("flood", burst, classes[c], (f"flood{f}",), quality=95 - 3 * i)
    return labelled.items, labelled.users, labelled.kinds


def user_flags(args: argparse.Namespace) -> None:
    import shutil

    from models.openset import FILE
    from models.registry import Registry
    from training.audit import FLOOD, LABEL, NOT_KIMCHI_ISSUE, Listed, run_audit

    work = Path(args.data or tempfile.mkdtemp(prefix="kimchi-audit-users-"))
    registry, version = _session_model(work / "session")
    old = Registry(work / "old-version")
    if not old.root.exists():  # the same version as published before the check existed
        shutil.copytree(registry.root, old.root)
    (old.path(version) / FILE).unlink(missing_ok=True)
    items, users, kinds = _users_items(work / "users", work / "session" / "data", args)
    print(f"{len(items) - len(users)} base images, {len(users)} users' labels: "
          + ", ".join(f"{len(v)} {k}" for k, v in kinds.items()), flush=True)
    results: dict = {"machine": machine(), "kinds": {k: len(v) for k, v in kinds.items()}}
    wanted = {"noise": NOT_KIMCHI_ISSUE, "other": NOT_KIMCHI_ISSUE, "flipped": LABEL, "flood": FLOOD}
    for name, reg in (("stored check", registry), ("fitted check (old version)", old)):
        started = time.perf_counter()
        result = run_audit(Listed(items, users), reg, version, picture=False)
        flags = {row.file: set(row.issues) for row in result.rows}
        figures = {kind: sum(wanted[kind] in flags[p] for p in kinds[kind]) for kind in wanted}
        honest = sum(bool({LABEL, NOT_KIMCHI_ISSUE, FLOOD} & flags[p]) for p in kinds["honest"])
        why = {issue: sum(issue in flags[p] for p in kinds["honest"]) for issue in (LABEL, NOT_KIMCHI_ISSUE, FLOOD)}
        print(f"{name}: {result.openset_note} ({time.perf_counter() - started:.1f} s)", flush=True)
        print(f"  noise labelled as kimchi flagged not_kimchi: {figures['noise']} of {len(kinds['noise'])}; other things "
              f"(stripes, rings …): {figures['other']} of {len(kinds['other'])}", flush=True)
        print(f"  flipped labels flagged label: {figures['flipped']} of {len(kinds['flipped'])}; flood photos flagged "
              f"flood: {figures['flood']} of {len(kinds['flood'])}; honest labels flagged (label, not_kimchi or "
              f"flood): {honest} of {len(kinds['honest'])} ("
              + ", ".join(f"{issue} {n}" for issue, n in why.items()) + ")", flush=True)
        results[name] = {**figures, "honest_flagged": honest, "honest_by_issue": why, "note": result.openset_note}
    report(results, args.out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=11)
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--data", help="working folder to keep (images, registry) for a rerun")
    parser.add_argument("--every", type=int, default=10, help="the engine/embedding comparison uses every Nth image")
    parser.add_argument("--rounds", type=int, default=3, help="alternating engine/embedding rounds")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    parser.add_argument("--measure-threshold", action="store_true", help="the near-duplicate similarity study instead")
    parser.add_argument("--threshold-n", type=int, default=40, help="photos per class in the study")
    parser.add_argument("--users", action="store_true", help="what the audit flags among users' labels instead")
    parser.add_argument("--noise", type=int, default=20, help="--users: noise pictures (and as many other things)")
    parser.add_argument("--flips", type=int, default=40, help="--users: flipped labels (and as many honest ones)")
    parser.add_argument("--floods", type=int, default=3, help="--users: floods, each one picture from one account")
    parser.add_argument("--flood-size", type=int, default=8, help="--users: copies in each flood")
    args = parser.parse_args()
    if args.users:
        user_flags(args)
    else:
        measure_threshold(args) if args.measure_threshold else timing(args)


if __name__ == "__main__":
    main()
