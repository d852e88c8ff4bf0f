"""The experiment workflow: a grid with tables and reports, resuming, bad configs, Hangul in the pictures, and
the open-set methods as rows."""
import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.errors import KimchiError
from models.labels import CLASS_NAMES
from tests.conftest import SESSION_CLASSES
from tests.imagegen import OTHER_KINDS, draw, make_dataset, make_others
from training.cli import main
from training.experiments import OPENSET_METHODS, kimchi_only, load_grid, measure_openset, openset_rows, write_results
from training.fonts import font_path

TINY = 'size = 32\npresize = 48\nbs = 8\nfine_tune = { epochs = 0, freeze_epochs = 1 }\n'


def _aihub(root: Path) -> Path:
    """Three classes in AI Hub's layout with crop boxes around the food."""
    for index, name in ((0, "배추김치"), (1, "오이소박이"), (2, "파김치")):
        folder = root / name
        folder.mkdir(parents=True)
        lines = []
        for i in range(9):
            draw(index, (96, 72), seed=i).save(folder / f"Img_00{index}_{i:04d}.jpg")
            lines.append(f"Img_00{index}_{i:04d}=16,8,64,56")
        (folder / "crop_area.properties").write_text("\n".join(lines), encoding="utf-8")
    return root


def _grid(path: Path, source: Path, second_extra: str = "") -> Path:
    path.write_text(f'[defaults]\nsource = "{source}"\nseed = 42\nvalid_pct = 0.25\nworkers = 0\n\n'
                    f'[[run]]\nname = "full"\narch = "efficientnet_lite0"\n{TINY}\n'
                    f'[[run]]\nname = "crop"\narch = "efficientnet_lite0"\ncrop = true\n{TINY}{second_extra}\n',
                    encoding="utf-8")
    return path


@pytest.mark.slow
def test_grid_tables_reports_and_resume(home, tmp_path, capsys):
    source = _aihub(tmp_path / "kfood" / "김치")
    config = _grid(tmp_path / "grid.toml", source)
    out = tmp_path / "out"
    assert main(["experiments", str(config), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "full: training" in printed and "crop: training" in printed
    with open(out / "results.csv", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert [r["name"] for r in table] == ["full", "crop"]
    assert all(0 <= float(r["accuracy"]) <= 1 and float(r["img_s"]) > 0 and r["kept_epoch"] for r in table)
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "| full" in md and "| crop" in md and "Best run: **" in md and "**(best)**" in md
    for name in ("full", "crop"):
        report = out / "runs" / name / "report"
        for png in ("confusion_matrix.png", "show_batch.png", "show_results.png", "top_losses.png"):
            with Image.open(report / png) as img:
                assert img.size[0] >= 300 and np.asarray(img.convert("L")).std() > 10, (name, png)
        assert (report / "classification_report.txt").read_text().count("배추김치") == 1
    full_data, crop_data = (Path(json.loads((out / "runs" / n / "run.json").read_text())["data"]) for n in ("full", "crop"))
    with Image.open(next(full_data.rglob("*.jpg"))) as a, Image.open(next(crop_data.rglob("*.jpg"))) as b:
        assert a.size == (64, 48) and b.size == (55, 48)  # the crop variant holds the food box only

    before = (out / "runs" / "full" / "run.json").stat().st_mtime_ns
    assert main(["experiments", str(config), "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("skipped") == 2
    _grid(config, source, second_extra="max_rotate = 25\n")  # only the crop run changes
    assert main(["experiments", str(config), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "full: unchanged" in printed and "crop: training" in printed
    assert (out / "runs" / "full" / "run.json").stat().st_mtime_ns == before
    (out / "runs" / "crop" / "run.json").unlink()  # as if interrupted before the crop run finished
    assert main(["experiments", str(config), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "full: unchanged" in printed and "crop: training" in printed


@pytest.mark.parametrize("body,needle", [
    ("[[run]\nname = 'x'", "not valid TOML"),
    ("[[run]]\nname = 'fast'\nmax_rotat = 5", "run 'fast': unknown key 'max_rotat' (did you mean max_rotate?)"),
    ("[[run]]\nname = 'neg'\nfine_tune = { epochs = -1 }", "run 'neg'"),
    ("[[run]]\nname = 'typed'\nepochs = 'five'", "run 'typed': epochs must be a whole number"),
    ("[[run]]\nname = 'arch'\narch = 'vgg99'", "run 'arch': Unknown architecture 'vgg99'"),
    ("[[run]]\nname = 'cropped'\ncrop = true", "run 'cropped': crop = true needs `source`"),
    ("[[run]]\nname = 'seeded'\nseed = 1", "run 'seeded': 'seed' belongs in [defaults]"),
    ("[[run]]\nname = 'a'\n[[run]]\nname = 'a'", "run 'a': the name is used twice"),
    ("[defaults]\nseed = 1", "no runs"),
    ("[[run]]\nname = 'open'\nopenset = ['knm']", "run 'open': unknown open-set method 'knm' (did you mean knn?)"),
    ("[[run]]\nname = 'open'\nopenset = ['knn', 'knn']", "run 'open': openset names a method twice"),
    ("[[run]]\nname = 'neg'\nnegatives = 'no'", "run 'neg': negatives must be true or false"),
])
def test_bad_configs_are_reported_before_training(home, tmp_path, capsys, body, needle):
    config = tmp_path / "bad.toml"
    config.write_text(body, encoding="utf-8")
    with pytest.raises(KimchiError) as err:
        load_grid(config, home)
    assert needle in str(err.value)
    assert main(["experiments", str(config), "--out", str(tmp_path / "out")]) == 1
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_shipped_blog_grid_parses(home):
    grid = load_grid(Path(__file__).parent.parent / "experiments" / "blog.toml", home)
    runs = {r.name: r for r in grid.runs}
    assert [r.recipe.arch for r in grid.runs] == ["resnet18", "efficientnet_v2_s", "resnet50", "efficientnet_lite0",
                                                  "resnet18"]
    heavy = runs["resnet50-heavy-aug"].recipe
    assert (heavy.flip_vert, heavy.max_rotate, heavy.max_zoom, heavy.max_lighting, heavy.max_warp) == (True, 20, 1.2, 0.3, 0.2)
    assert (heavy.epochs, heavy.freeze_epochs, heavy.base_lr, heavy.pct_start) == (3, 1, 1e-4, 0.3)
    assert (heavy.cycles, heavy.lr_max) == (2, 1e-4)
    assert runs["resnet18-crop"].crop and grid.per_class == 500


def test_shipped_openset_grid_parses(home):
    grid = load_grid(Path(__file__).parent.parent / "experiments" / "openset.toml", home)
    runs = {r.name: r for r in grid.runs}
    assert set(runs) == {"with-negatives", "kimchi-only"}
    assert all(r.openset == OPENSET_METHODS and r.recipe.keep == 0.95 for r in grid.runs)
    assert runs["with-negatives"].negatives and not runs["kimchi-only"].negatives
    assert grid.unseen is not None


def test_kimchi_only_drops_the_negatives_folder(home, tmp_path):
    from training.datafolder import count_classes

    data = tmp_path / "data"
    make_dataset(data, classes=2, per_class=3)
    assert kimchi_only(data, home) == data  # nothing to drop: the data itself
    make_others(data / "김치아님", kinds=OTHER_KINDS[:2], per_kind=2)
    assert count_classes(data)["not_kimchi"] == 4
    view = kimchi_only(data, home)
    assert view != data and count_classes(view) == {name: 3 for name in CLASS_NAMES[:2]}


def test_openset_rows_compare_the_methods(trained, tmp_path):
    """The rows of a version trained on kimchi only: the head alone flags nothing, the distance checks flag
    dishes it never saw, and every row says how many kimchi it still answers, and rightly."""
    from models.datafiles import image_files
    from training.calibrate import Measured, recorded_split

    unseen = tmp_path / "unseen"
    make_dataset(unseen, classes=SESSION_CLASSES, per_class=4, size=(200, 150), seed=7)  # new photos of its kimchi
    make_others(unseen / "dishes", per_kind=3, seed=5)
    folder = trained.registry.path(trained.version)
    train_items, valid_items, _ = recorded_split(trained.registry.meta(trained.version), trained.data)
    measured = measure_openset(folder, train_items, valid_items, image_files(unseen))
    rows, checks = openset_rows(measured, OPENSET_METHODS, keep=0.95, run="kimchi-only")
    by = {r["method"]: r for r in rows}
    assert list(by) == list(OPENSET_METHODS)
    assert all(r["negatives"] == "no" and r["measured_on"] == "unseen" and r["n_unseen"] == 3 * len(OTHER_KINDS)
               and r["n_kimchi"] == 4 * SESSION_CLASSES for r in rows)
    assert by["head"]["unseen_flagged"] == 0 and by["head"]["kimchi_kept"] == 1 and by["head"]["threshold"] is None
    assert by["head"]["right_kind"] >= 0.9
    assert by["knn"]["unseen_flagged"] >= 0.5 and by["mahalanobis"]["unseen_flagged"] >= 0.5
    for row in rows:
        assert 0.5 <= row["kimchi_kept"] <= 1 and row["right_kind"] >= 0.9, row
    assert set(checks) == {"knn", "mahalanobis"} and all(c.threshold < float("inf") for c in checks.values())
    # The energy reads the head's logits: the engine's probabilities are their softmax.
    logits = torch.from_numpy(measured.logits["valid"])
    assert np.abs(torch.softmax(logits, 1).numpy() - measured.valid.probs).max() < 1e-3

    # Without unseen photos, the rows say they were measured on the validation split (no dishes in it here).
    empty = Measured(np.zeros((0, len(measured.vocab)), np.float32), np.zeros((0, 0), np.float32), [])
    alone, _ = openset_rows(replace(measured, unseen=empty, logits={**measured.logits, "unseen": np.zeros((0, 0))}),
                            OPENSET_METHODS)
    assert all(r["measured_on"] == "valid" and r["unseen_flagged"] is None and r["n_kimchi"] == len(valid_items)
               for r in alone)

    write_results(tmp_path / "out", [], rows)
    md = (tmp_path / "out" / "results.md").read_text(encoding="utf-8")
    assert "| kimchi-only | knn | no |" in md and "## Not kimchi" in md
    with open(tmp_path / "out" / "openset.csv", encoding="utf-8") as fh:
        assert [r["method"] for r in csv.DictReader(fh)] == list(OPENSET_METHODS)


def test_bundled_font_draws_hangul():
    from matplotlib.ft2font import FT2Font

    font = FT2Font(str(font_path()))
    assert all(font.get_char_index(ord(ch)) != 0 for ch in "배추김치깍두기총각갓무생채")
    assert font.get_char_index(0x10FFFD) == 0  # a private-use code point it lacks: the check can fail
