"""The label audit: flipped labels surface at the top, clean sets stay quiet, re-sent photos group with
their originals, and bad input to `kimchi-train audit` gets one sentence."""
from __future__ import annotations

import csv
import io
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from models.embed import DEFAULT_DUPLICATE_THRESHOLD, embeddings, near_duplicate_groups
from models.labels import CLASS_NAMES
from tests.botkit import refused
from tests.conftest import SESSION_CLASSES
from tests.imagegen import _COLOURS, _SHAPES, encode, make_dataset
from training.audit import LABEL, collect_items, run_audit
from training.cli import main

PER_CLASS = 50
AUDIT = "kimchi-train audit:"  # how its one sentence starts
FLIPS = 20


def photo(class_index: int, size: tuple[int, int] = (320, 240), seed: int = 0) -> Image.Image:
    """A photo-like picture of class `class_index`: imagegen's colour and shape, at a random angle, on a
    smooth uneven background with a few other objects, slightly blurred like a lens.

    imagegen's pictures (one shape on per-pixel noise) suit the classifier, but not a near-duplicate
    test: pooled features ignore where the shape is, so two of them differ less than one photo does
    from its own recompressed copy, whose noise texture JPEG changes.
    """
    rng = random.Random(seed * 7919 + class_index)
    w, h = size
    low = np.random.default_rng(seed).integers(40, 220, size=(3, 4, 3), dtype=np.uint8)
    img = Image.fromarray(low, "RGB").resize(size, Image.Resampling.BICUBIC)
    d = ImageDraw.Draw(img)
    for _ in range(rng.randint(2, 4)):
        colour = tuple(rng.randint(30, 230) for _ in range(3))
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), min(w, h) * rng.uniform(0.06, 0.16)
        (d.ellipse if rng.random() < 0.5 else d.rectangle)([x - r, y - r, x + r, y + r], fill=colour)
    colour = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in _COLOURS[class_index % len(_COLOURS)])
    cx, cy, r = w * rng.uniform(0.35, 0.65), h * rng.uniform(0.35, 0.65), min(w, h) * rng.uniform(0.22, 0.34)
    shape = _SHAPES[class_index % len(_SHAPES)]
    if shape == "ellipse":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "rectangle":
        angle = rng.uniform(0, math.pi / 2)
        d.polygon([(cx + 1.2 * r * math.cos(angle + k * math.pi / 2), cy + 1.2 * r * math.sin(angle + k * math.pi / 2))
                   for k in range(4)], fill=colour)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return img.filter(ImageFilter.GaussianBlur(1.0))


def resent(data: bytes) -> bytes:
    """What a messenger makes of a photo sent again: 90% of the size, JPEG quality 70."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img = img.resize((round(img.width * 0.9), round(img.height * 0.9)), Image.Resampling.BILINEAR)
    return encode(img, "JPEG", quality=70)


@pytest.fixture(scope="module")
def clean_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes x 50 imagegen pictures, small (the session model reads them at 64 px)."""
    root = tmp_path_factory.mktemp("audit") / "clean"
    make_dataset(root, classes=SESSION_CLASSES, per_class=PER_CLASS, size=(120, 90), seed=3)
    return root


def flip_labels(clean: Path, target: Path, n: int, seed: int = 1) -> set[Path]:
    """A copy of `clean` with `n` images moved into another class's folder; returns their new paths."""
    shutil.copytree(clean, target)
    files = sorted(target.rglob("*.jpg"))
    rng = random.Random(seed)
    moved = set()
    for i, path in enumerate(rng.sample(files, n)):
        others = [c for c in CLASS_NAMES[:SESSION_CLASSES] if c != path.parent.name]
        new = target / rng.choice(others) / f"moved_{i:02d}.jpg"
        path.rename(new)
        moved.add(new)
    return moved


def test_flipped_labels_are_among_the_worst_rows(trained, clean_set, tmp_path, capsys):
    data = tmp_path / "flipped"
    flipped = flip_labels(clean_set, data, FLIPS)
    out = tmp_path / "audit"
    rc = main(["--home", str(tmp_path / "home"), "audit", str(data), "--models-dir", str(trained.registry.root),
               "--out", str(out), "--device", "cpu"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    assert len(printed) == 1 and printed[0].startswith(f"audited {SESSION_CLASSES * PER_CLASS} images"), printed

    with open(out / "audit.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["file", "label", "suggested", "quality", "issue"]
    assert len(rows) == SESSION_CLASSES * PER_CLASS
    qualities = [float(r["quality"]) for r in rows]
    assert qualities == sorted(qualities), "worst first"
    worst = {Path(r["file"]) for r in rows[:40]}
    found = len(worst & flipped)
    assert found >= 16, f"only {found} of {FLIPS} flipped labels among the 40 worst rows"
    for row in rows[:40]:  # a flipped image found is offered another class than its wrong label
        if Path(row["file"]) in flipped:
            assert row["suggested"] != row["label"]
    assert (out / "suspects.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_clean_list_has_few_false_alarms_and_per_file_flags(trained, clean_set, tmp_path):
    items = collect_items(clean_set)  # the explicit-list path the retrain uses
    wrong = (items[0][0], CLASS_NAMES[(CLASS_NAMES.index(items[0][1]) + 1) % SESSION_CLASSES])
    result = run_audit([wrong, *items[1:]], trained.registry, trained.version, tmp_path / "out", folds=5,
                       picture=False)
    flags = result.flags()
    false_alarms = [f for f, issues in flags.items() if LABEL in issues and f != wrong[0]]
    rate = len(false_alarms) / (len(items) - 1)
    print(f"false-positive rate on a clean set: {rate:.1%} ({len(false_alarms)} of {len(items) - 1})")
    assert rate <= 0.05, false_alarms
    assert LABEL in flags[wrong[0]], "the one wrong label in the list is flagged for the caller"
    assert result.rows[0].file == wrong[0] and result.rows[0].suggested == items[0][1]
    assert (tmp_path / "out" / "audit.csv").is_file() and not (tmp_path / "out" / "suspects.png").exists()
    assert f"{result.count(LABEL)} label issues" in result.summary()


def test_a_resent_photo_groups_with_its_original(trained):
    originals = [encode(photo(c, seed=100 + 10 * c + i), "JPEG", quality=92) for c in range(SESSION_CLASSES) for i in range(3)]
    copies = [resent(originals[i]) for i in (0, 4, 8, 11)]
    vectors = embeddings(trained.registry, trained.version, originals + copies)
    assert vectors.shape[0] == len(originals) + len(copies)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    groups = near_duplicate_groups(vectors)
    from_folder = embeddings(trained.registry.path(trained.version), None, [lambda: originals[0]])  # a model folder, a loader
    assert np.allclose(from_folder[0], vectors[0], atol=1e-5)
    assert len(set(groups[:len(originals)])) == len(originals), "distinct photos of one class stay apart"
    for copy, original in zip(range(len(originals), len(groups)), (0, 4, 8, 11)):
        sim = float(vectors[copy] @ vectors[original])
        assert groups[copy] == groups[original], f"copy of photo {original}: similarity {sim:.3f} < {DEFAULT_DUPLICATE_THRESHOLD}"


def test_groups_are_transitive_and_numbered_in_order():
    degrees = [0.0, 90.0, 5.0, 180.0, 10.0]  # unit vectors in a plane
    v = np.array([[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in degrees], dtype=np.float32)
    # 0~2 and 2~4 are 5 degrees apart (cos 0.996), 0~4 are 10 (cos 0.985): one group through 2.
    assert near_duplicate_groups(v, 0.99) == [0, 1, 0, 2, 0]
    assert near_duplicate_groups(v, 0.999) == [0, 1, 2, 3, 4]
    assert near_duplicate_groups(np.zeros((0, 2), np.float32), 0.99) == []


def test_bad_input_is_one_sentence(home, tmp_path, capsys):
    make_dataset(tmp_path / "two", classes=2, per_class=3, size=(48, 40))
    refused(capsys, main, ["audit", str(tmp_path / "two"), "--folds", "2"], "No model", program=AUDIT)
    (tmp_path / "empty").mkdir()
    refused(capsys, main, ["audit", str(tmp_path / "empty")], "no images", program=AUDIT)
    refused(capsys, main, ["audit", str(tmp_path / "nowhere")], "not a folder", program=AUDIT)
    refused(capsys, main, ["audit"], "not a folder", program=AUDIT)  # KIMCHI_HOME/data/base does not exist yet
    make_dataset(tmp_path / "one", classes=1, per_class=6, size=(48, 40))
    refused(capsys, main, ["audit", str(tmp_path / "one")], "one label", program=AUDIT)
    make_dataset(tmp_path / "four", classes=2, per_class=2, size=(48, 40))
    refused(capsys, main, ["audit", str(tmp_path / "four")], "at least 5 images for 5 folds", program=AUDIT)
    refused(capsys, main, ["audit", str(tmp_path / "two")], "No class", "--folds 3", program=AUDIT)
    refused(capsys, main, ["audit", str(tmp_path / "two"), "--folds", "1"], "at least 2", program=AUDIT)
