"""`kimchi-train lr-find`: fastai's lr_find on the recipe's data and model, with all four suggestions."""
from __future__ import annotations

from pathlib import Path

from training.fonts import use_korean_font
from training.recipe import Recipe
from training.datafolder import count_classes
from training.learner import build_dls, build_learner, quiet


def run_lr_find(data_dir: Path, recipe: Recipe, out: Path) -> dict[str, float]:
    """Suggested learning rates (valley, slide, minimum, steep); the loss-versus-lr plot goes to `out`."""
    from fastai.callback.schedule import minimum, slide, steep, valley
    from fastai.torch_core import set_seed

    recipe.validate()
    count_classes(Path(data_dir))
    use_korean_font()
    import matplotlib.pyplot as plt

    set_seed(recipe.seed)
    learn = build_learner(build_dls(Path(data_dir), recipe), recipe)
    quiet(learn)
    found = learn.lr_find(suggest_funcs=(valley, slide, minimum, steep), show_plot=True)
    fig = plt.gcf()
    fig.suptitle(f"lr_find: {recipe.arch}, {len(learn.dls.train_ds)} images")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close("all")
    return {name: float(value) for name, value in found._asdict().items()}
