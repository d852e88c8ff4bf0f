"""Synthetic kimchi: each class a colour and a shape on a noisy background, in many sizes and formats.

Tests and benchmarks make their own data with this; nothing is downloaded.
"""
from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from models.labels import CLASS_NAMES

_COLOURS = [(200, 30, 30), (40, 160, 60), (40, 70, 200), (220, 200, 40), (160, 60, 200), (30, 190, 200),
            (240, 140, 30), (250, 250, 250), (120, 80, 40), (20, 20, 20), (250, 120, 190)]
_SHAPES = ["ellipse", "rectangle", "triangle"]


def draw(class_index: int, size: tuple[int, int] = (96, 72), seed: int = 0) -> Image.Image:
    """One image of class `class_index`: its colour and shape, jittered, on a noisy background."""
    rng = random.Random(seed * 1009 + class_index)
    w, h = size
    background = np.random.default_rng(seed).integers(90, 150, size=(h, w, 3), dtype=np.uint8)
    img = Image.fromarray(background, "RGB")
    d = ImageDraw.Draw(img)
    colour = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in _COLOURS[class_index % len(_COLOURS)])
    shape = _SHAPES[class_index % len(_SHAPES)]
    cx, cy = w * rng.uniform(0.35, 0.65), h * rng.uniform(0.35, 0.65)
    r = min(w, h) * rng.uniform(0.22, 0.34)
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "ellipse":
        d.ellipse(box, fill=colour)
    elif shape == "rectangle":
        d.rectangle(box, fill=colour)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return img


def encode(img: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 92} if fmt == "JPEG" and not kwargs else kwargs))
    return buf.getvalue()


def photo_bytes(class_index: int, seed: int = 0, size: tuple[int, int] = (320, 240)) -> bytes:
    """A photo as the bot tests send one: `draw` as a JPEG of quality 90."""
    return encode(draw(class_index, size, seed=seed), "JPEG", quality=90)


def make_dataset(root: Path, classes: Sequence[str] | int = 3, per_class: int = 12, size: tuple[int, int] = (96, 72),
                 seed: int = 0, fmt: str = "JPEG") -> dict[str, list[Path]]:
    """root/<class>/img_NNN.jpg for the first `classes` kimchi names (or the names given)."""
    names = list(CLASS_NAMES[:classes]) if isinstance(classes, int) else list(classes)
    out: dict[str, list[Path]] = {}
    for ci, name in enumerate(names):
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        index = CLASS_NAMES.index(name) if name in CLASS_NAMES else ci
        paths = []
        for i in range(per_class):
            path = folder / f"img_{i:03d}.{'jpg' if fmt == 'JPEG' else fmt.lower()}"
            draw(index, size, seed=seed * 100_000 + ci * 1000 + i).save(path, fmt)
            paths.append(path)
        out[name] = paths
    return out


def varied_images(n: int) -> list[bytes]:
    """Sizes from 40 px to 1280x960, aspect ratios up to 4:1, all EXIF orientations, JPEG/PNG/WEBP, grey."""
    sizes = [(1280, 960), (960, 1280), (640, 480), (200, 150), (150, 200), (400, 100), (100, 400), (333, 777),
             (161, 161), (90, 60), (48, 40), (1000, 999), (513, 257)]
    out = []
    for i in range(n):
        img = draw(i % 4, sizes[i % len(sizes)], seed=500 + i)
        kind = i % 6
        if kind == 0:
            exif = Image.Exif()
            exif[0x0112] = 1 + (i // 6) % 8
            out.append(encode(img, "JPEG", quality=90, exif=exif))
        elif kind == 1:
            out.append(encode(img, "PNG"))
        elif kind == 2:
            out.append(encode(img, "WEBP", quality=90))
        elif kind == 3:
            out.append(encode(img.convert("L").convert("RGB"), "JPEG", quality=85))
        elif kind == 4:
            out.append(encode(img, "JPEG", quality=70, progressive=True))
        else:
            out.append(encode(img, "JPEG", quality=95, subsampling=0))
    return out


# ---------------------------------------------------------------------------------------------
# photos of things that are not kimchi, for the open-set check

OTHER_KINDS = ("stripes", "checker", "rings", "gradient", "noise", "cross")


def draw_other(kind: str, size: tuple[int, int] = (200, 150), seed: int = 0) -> Image.Image:
    """A picture unlike every class of `draw` in content, not just in noise: other shapes (stripes, a
    chequerboard, rings, a cross), other textures (smooth gradients, coarse colour noise) and other colour
    statistics (pastel or saturated colours, dark or bright backgrounds)."""
    rng = np.random.default_rng(seed * 31 + OTHER_KINDS.index(kind))
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    if kind == "stripes":
        period = rng.uniform(6, 20) * w / 200
        angle = rng.uniform(0, np.pi)
        t = (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0)[..., None]
        pixels = np.where(t, a, b)
    elif kind == "checker":
        cell = max(2, int(rng.uniform(8, 24) * w / 200))
        t = (((xx // cell) + (yy // cell)) % 2 == 0)[..., None]
        pixels = np.where(t, a, b)
    elif kind == "rings":
        cx, cy = w * rng.uniform(0.3, 0.7), h * rng.uniform(0.3, 0.7)
        r = np.hypot(xx - cx, yy - cy)
        t = (np.sin(r / rng.uniform(3, 9) * w / 200) > 0)[..., None]
        pixels = np.where(t, a, b)
    elif kind == "gradient":
        t = ((xx / w) * rng.uniform(0.3, 1) + (yy / h) * rng.uniform(0.3, 1))[..., None] / 2
        pixels = a * (1 - t) + b * t
    elif kind == "noise":
        coarse = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
        return Image.fromarray(coarse, "RGB").resize((w, h), Image.Resampling.NEAREST)
    else:  # cross: a thick plus sign on a flat background of another colour
        pixels = np.broadcast_to(b, (h, w, 3)).copy()
        cx, cy, t = int(w * rng.uniform(0.4, 0.6)), int(h * rng.uniform(0.4, 0.6)), max(2, int(min(w, h) * 0.12))
        pixels[:, cx - t:cx + t] = a
        pixels[cy - t:cy + t, :] = a
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def other_photo_bytes(kind: str, seed: int = 0, size: tuple[int, int] = (320, 240)) -> bytes:
    """A photo of something that is not kimchi, as the bot tests send one (JPEG quality 90)."""
    return encode(draw_other(kind, size, seed=seed), "JPEG", quality=90)


def make_others(root: Path, kinds: Sequence[str] = OTHER_KINDS, per_kind: int = 5, size: tuple[int, int] = (200, 150),
                seed: int = 0) -> list[Path]:
    """root/<kind>_NNN.jpg: `per_kind` pictures of each kind that is not kimchi."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind in kinds:
        for i in range(per_kind):
            path = root / f"{kind}_{i:03d}.jpg"
            draw_other(kind, size, seed=seed * 1000 + i).save(path, "JPEG", quality=92)
            paths.append(path)
    return paths


class UsersLabels:
    """Users' labelled photos for the label audit: each picture saved under `root`, the audit's (path, label)
    items (after the `items` given, e.g. the base), the accounts behind each photo, and the photos by kind."""

    def __init__(self, root: Path, items: Sequence[tuple[Path, str]] = ()) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.items: list[tuple[Path, str]] = list(items)
        self.users: dict[Path, tuple[str, ...]] = {}
        self.kinds: dict[str, list[Path]] = {}

    def add(self, kind: str, image: Image.Image, label: str, accounts: tuple[str, ...], quality: int = 92) -> Path:
        path = self.root / f"{kind}_{len(self.kinds.get(kind, [])):03d}.jpg"
        image.save(path, "JPEG", quality=quality)
        self.items.append((path, label))
        self.users[path] = accounts
        self.kinds.setdefault(kind, []).append(path)
        return path
