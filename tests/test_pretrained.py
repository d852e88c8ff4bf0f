"""The offline ImageNet backbone is real: frozen, it learns a small labelled set far better than random init."""
import random
from pathlib import Path

from PIL import Image, ImageDraw

from models.archs import imagenet_backbone
from models.efficientnet_lite import LITE_STATS


def _shape(kind: int, seed: int) -> Image.Image:
    """Circle, square or triangle in random colours on a random background: only the shape tells."""
    r = random.Random(seed)
    img = Image.new("RGB", (96, 96), tuple(r.randint(0, 255) for _ in range(3)))
    d = ImageDraw.Draw(img)
    fg = tuple(r.randint(0, 255) for _ in range(3))
    cx, cy, s = r.uniform(30, 66), r.uniform(30, 66), r.uniform(14, 26)
    if kind == 0:
        d.ellipse([cx - s, cy - s, cx + s, cy + s], fill=fg)
    elif kind == 1:
        d.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fg)
    else:
        d.polygon([(cx, cy - s), (cx - s, cy + s), (cx + s, cy + s)], fill=fg)
    return img


def _accuracy(tmp_path: Path, pretrained: bool) -> float:
    from fastai.torch_core import set_seed

    from training.recipe import Recipe
    from training.learner import build_dls, build_learner, quiet

    set_seed(0)
    recipe = Recipe(arch="efficientnet_lite0", pretrained=pretrained, size=64, presize=96, bs=16, workers=0,
                    valid_pct=0.5, seed=1)
    learn = build_learner(build_dls(tmp_path, recipe), recipe)
    quiet(learn)
    learn.freeze()  # only the head learns: the body's features decide
    learn.fit_one_cycle(4, 3e-3)
    return float(learn.validate()[1])


def test_bundled_weights_know_imagenet():
    """A daisy-like image is not a good check offline; the weights' own statistics are: BN running stats
    of a trained net are far from their init (0 mean, 1 var), and the 1000-way head is non-trivial."""
    model = imagenet_backbone("efficientnet_lite0")
    bn = model.stem[1]
    assert bn.running_var.mean() > 2 or bn.running_mean.abs().mean() > 0.1
    assert model.fc.weight.shape == (1000, 1280) and model.fc.weight.std() > 0.01
    assert LITE_STATS[0][0] == 127 / 255


def test_frozen_pretrained_body_learns_far_better_than_random(tmp_path):
    names = ["배추김치", "오이소박이", "파김치"]
    for kind, name in enumerate(names):
        (tmp_path / name).mkdir()
        for i in range(40):
            _shape(kind, kind * 1000 + i).save(tmp_path / name / f"{i}.jpg")
    pretrained = _accuracy(tmp_path, True)
    scratch = _accuracy(tmp_path, False)
    assert pretrained >= 0.55, pretrained
    assert pretrained >= scratch + 0.2, (pretrained, scratch)
