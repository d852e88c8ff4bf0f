"""The recipe's flags of `kimchi-train train`, in one place for both programs.

The trainer builds its `train` and `lr-find` parsers with `add_recipe_args`; the bot checks
KIMCHI_TRAIN_ARGS with `check_recipe_args`, the same flags in a parser that raises instead of exiting,
so a flag outside the recipe or a bad value is refused at start, not at /retrain. Plain argparse: no torch,
no fastai (`kimchi-train --help` stays fast).
"""
from __future__ import annotations

import argparse
from typing import NoReturn, Sequence

# Named recipes, for `--preset NAME` (flags given beside a preset still win) and KIMCHI_TRAIN_ARGS.
# name -> (what it is for, the fields of training.recipe.Recipe it changes). The README's "CPU retrain"
# table has their measured time and accuracy (bench/retrain_bench.py --mode bot).
PRESETS: dict[str, tuple[str, dict[str, object]]] = {
    "blog": ("the blog's recipe: resnet18, Resize(460), 224 px, fine_tune(5, freeze_epochs=1)", {}),
    "cpu-fast": ("a retrain a CPU box finishes while you wait: efficientnet_lite0 (ImageNet weights bundled), "
                 "Resize(192), 160 px, fine_tune(2, freeze_epochs=1)",
                 {"arch": "efficientnet_lite0", "presize": 192, "size": 160, "epochs": 2, "freeze_epochs": 1,
                  "bs": 32}),
}


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    """The recipe's flags; defaults live in training.recipe.Recipe, so None here means 'default'."""
    g = p.add_argument_group("recipe (defaults: the blog's)")
    g.add_argument("--preset", choices=list(PRESETS), default="blog",
                   help="; ".join(f"{name}: {about}" for name, (about, _) in PRESETS.items())
                   + ". Flags given beside it win")
    g.add_argument("--arch", help="resnet18 (default), resnet34, resnet50, efficientnet_v2_s, efficientnet_lite0")
    g.add_argument("--no-pretrained", dest="pretrained", action="store_false", default=None,
                   help="start from random weights")
    g.add_argument("--weights", metavar="PATH", help="ImageNet weights file for the arch (offline use)")
    g.add_argument("--epochs", type=int, help="fine_tune epochs after the frozen ones (5)")
    g.add_argument("--freeze-epochs", type=int, help="epochs with the body frozen (1)")
    g.add_argument("--base-lr", type=float, help="fine_tune base_lr (2e-3)")
    g.add_argument("--pct-start", type=float, help="fine_tune pct_start (0.3)")
    g.add_argument("--cycles", type=int, help="extra fit_one_cycle epochs after fine_tune (0)")
    g.add_argument("--lr-max", type=float, help="lr_max of those cycles (1e-4)")
    g.add_argument("--size", type=int, help="aug_transforms size (224)")
    g.add_argument("--presize", type=int, help="Resize item_tfms size (460)")
    g.add_argument("--min-scale", type=float, help="aug_transforms min_scale (0.75)")
    g.add_argument("--bs", type=int, help="batch size (64)")
    g.add_argument("--valid-pct", type=float, help="RandomSplitter valid_pct (0.2)")
    g.add_argument("--seed", type=int, help="RandomSplitter seed (42)")
    g.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"],
                   help="auto (default): bf16 on a GPU that has it, none on the CPU")
    g.add_argument("--channels-last", choices=["auto", "on", "off"], help="auto (default): on for CUDA")
    g.add_argument("--early-stop", type=int, metavar="N", help="stop after N epochs without a better valid loss")
    g.add_argument("--workers", type=int, help="DataLoader worker processes")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], help="auto (default)")
    g.add_argument("--no-normalize", dest="normalize", action="store_false", default=None)
    g.add_argument("--openset", choices=["knn", "mahalanobis", "off"],
                   help="the open-set check published with the version: knn (default), mahalanobis, or off")
    g.add_argument("--keep", type=float, metavar="SHARE",
                   help="share of validation kimchi the open-set check answers as kimchi (0.95)")


class _RecipeOnly(argparse.ArgumentParser):
    """The recipe's flags alone, and a ValueError where argparse would print usage and exit."""

    def __init__(self) -> None:
        super().__init__(prog="kimchi-train train", add_help=False, allow_abbrev=False)  # as the trainer's
        add_recipe_args(self)

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


class NotARecipeFlag(ValueError):
    """An argument that is not one of the recipe's flags: a data folder, `--holdout`, `--gpus`, `-h`, a typo."""

    def __init__(self, arg: str) -> None:
        super().__init__(f"'{arg}' is not a recipe flag")
        self.arg = arg


def check_recipe_args(args: Sequence[str]) -> argparse.Namespace:
    """`args` parsed as `kimchi-train train` parses its recipe flags.

    NotARecipeFlag for the first argument outside the recipe; ValueError, in argparse's words, for a bad
    value (`--epochs x`: "argument --epochs: invalid int value: 'x'").
    """
    known, rest = _RecipeOnly().parse_known_args(list(args))
    if rest:
        raise NotARecipeFlag(rest[0])
    return known
