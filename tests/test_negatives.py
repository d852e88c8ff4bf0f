"""Negatives: the other dishes of AI Hub's kfood/ imported into not_kimchi in one command, and users' accepted
"not kimchi" labels trained on at the next retrain, exported and scored like any class."""
import csv
import hashlib
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from models.corpus import corpus_rows
from models.datafiles import read_manifest
from models.home import Home, holdout_key
from models.labels import CLASS_NAMES, NOT_KIMCHI
from models.schema import MIGRATIONS
from models.trainset import build_training_set, collect_items
from tests.imagegen import OTHER_KINDS, draw, draw_other, make_dataset, other_photo_bytes, photo_bytes
from training.cli import main
from training.importer import import_dataset, negative_quotas

DISHES = {"불고기": 12, "라면": 10, "김치찌개": 8, "갈비": 3}  # a dish's photos in the fake kfood/
CATEGORY = {"불고기": "구이", "라면": "면", "김치찌개": "찌개", "갈비": "구이"}


@pytest.fixture
def kfood(tmp_path: Path) -> Path:
    """AI Hub's layout: kfood/김치/<class>/, kfood/<category>/<dish>/, crop_area.properties beside the photos.

    Besides two classes: 동치미 inside 김치/ and 섞박지 elsewhere (kimchi, but no class: never negatives), and
    four other dishes, one of them with a crop box for every photo."""
    root = tmp_path / "kfood"
    for name, index, n in (("깍두기", 4, 4), ("배추김치", 0, 3)):
        for i in range(n):
            draw(index, (120, 90), seed=i).save(_dir(root / "김치" / name) / f"Img_{index:03d}_{i:04d}.jpg")
    for folder in (root / "김치" / "동치미", root / "기타" / "섞박지"):
        for i in range(2):
            draw(7, (120, 90), seed=i).save(_dir(folder) / f"Img_dong_{i:04d}.jpg")
    for d, (dish, n) in enumerate(DISHES.items()):
        folder = _dir(root / CATEGORY[dish] / dish)
        for i in range(n):
            draw_other(OTHER_KINDS[d], (160, 120), seed=i).save(folder / f"Img_{d:03d}_{i:04d}.jpg")
    lines = [f"Img_000_{i:04d}=20,10,100,80" for i in range(DISHES["불고기"])]
    (root / "구이" / "불고기" / "crop_area.properties").write_text("\n".join(lines), encoding="utf-8")
    return root


def _dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sampled(dest: Path) -> dict[str, set[str]]:
    """dish -> the source file names it gave to not_kimchi."""
    out: dict[str, set[str]] = {}
    for row in read_manifest(dest):
        if row["class"] == NOT_KIMCHI:
            out.setdefault(row["dish"], set()).add(Path(row["source"]).name)
    return out


def test_negatives_are_sampled_evenly_with_a_cap_the_same_every_time(kfood, tmp_path, home, capsys):
    assert main(["import", str(kfood), "--negatives", "20", "--negatives-per-dish", "4", "--crop",
                 "--presize", "0", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    first = _sampled(home.base)
    # 20 asked of 4 dishes: 5 each, but at most 4 a dish, and 갈비 has only 3 photos
    assert {dish: len(names) for dish, names in first.items()} == {"불고기": 4, "라면": 4, "김치찌개": 4, "갈비": 3}
    assert "negatives: 15 added into not_kimchi (15 sampled of about 20 asked for) from 4 dishes, at most 4 each" in out
    assert "not_kimchi: 15 added" in out and "깍두기: 4 added" in out and "배추김치: 3 added" in out
    # kimchi that are no class are never negatives, wherever they sit, and are named in the summary
    assert "동치미" not in first and "섞박지" not in first
    assert "never used as negatives: 동치미, 섞박지" in out
    assert sorted(p.name for p in home.base.iterdir() if p.is_dir()) == ["not_kimchi", "깍두기", "배추김치"]
    rows = [r for r in read_manifest(home.base) if r["class"] == NOT_KIMCHI]
    assert all(r["path"].startswith("not_kimchi/") and Path(r["source"]).parent.name == r["dish"] for r in rows)
    for row in rows:  # crop as for the classes: 불고기's box, the others whole
        with Image.open(home.base / row["path"]) as img:
            assert list(img.size) == row["size"] == ([100, 80] if row["dish"] == "불고기" else [160, 120])
        assert (row["crop"] == [20, 10, 120, 90]) is (row["dish"] == "불고기")

    # Again: nothing new. Into another folder: the very same photos (seeded, not the alphabet's first ones).
    again = import_dataset(kfood, home.base, crop=True, presize=0, workers=1, negatives=20, negatives_per_dish=4)
    assert again.total_added == 0 and again.negatives_added == 0 and _sampled(home.base) == first
    elsewhere = tmp_path / "elsewhere"
    import_dataset(kfood, elsewhere, crop=True, presize=0, workers=1, negatives=20, negatives_per_dish=4)
    assert _sampled(elsewhere) == first
    assert first["불고기"] != {f"Img_000_{i:04d}.jpg" for i in range(4)}  # spread over the dish
    # Asking for more adds to the same sample, never a second one
    more = import_dataset(kfood, home.base, crop=True, presize=0, workers=1, negatives=40, negatives_per_dish=6)
    assert more.negatives_added == 6  # 불고기, 라면 and 김치찌개 give 6 each now, 갈비 still its 3
    grown = _sampled(home.base)
    assert all(first[dish] <= grown[dish] for dish in first) and len(grown["갈비"]) == 3


def test_without_negatives_the_other_dishes_stay_out_and_the_summary_says_how(kfood, tmp_path):
    summary = import_dataset(kfood, tmp_path / "base", presize=0, workers=1)
    assert sorted(summary.unknown_classes) == sorted(DISHES) and summary.negatives_added == 0
    assert not (tmp_path / "base" / NOT_KIMCHI).exists()
    (hint,) = [line for line in summary.lines() if "no kimchi class" in line]
    assert "--negatives N" in hint and "not_kimchi" in hint


def test_quotas_spread_evenly_over_many_dishes():
    # AI Hub's other 139 dishes, ~1000 photos each: 1000 negatives are 7 or 8 a dish
    quota = negative_quotas({f"dish{i}": 1000 for i in range(139)}, 1000, 50)
    assert sum(quota.values()) == 1000 and set(quota.values()) == {7, 8}
    assert negative_quotas({f"d{i}": 1000 for i in range(139)}, 10, 50) == {f"d{i}": 1 for i in range(139)}
    assert sum(negative_quotas({"a": 1000, "b": 1000}, 5000, 50).values()) == 100  # the cap holds
    assert negative_quotas({"a": 2, "b": 100, "c": 0}, 30, 50) == {"a": 2, "b": 28, "c": 0}


# ---------------------------------------------------------------------------------------------
# users' "not kimchi" labels: the next retrain's negatives, and the export's

def _database(home: Home, labels: list[tuple[Path, str, str]]) -> None:
    """The bot's database with one user's label per photo: (photo, label, status)."""
    con = sqlite3.connect(home.database)
    for script in MIGRATIONS:
        con.executescript(script)
    for i, (path, label, status) in enumerate(labels, 1):
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        con.execute("INSERT INTO predictions (id, chat_id, user_id, message_id, file_id, sha256, label, created_at)"
                    " VALUES (?, 1, 7, ?, 'f', ?, '배추김치', '2024-01-01')", (i, i, sha))
        con.execute("INSERT INTO corrections (prediction_id, user_id, chat_id, sha256, corrected_label, path,"
                    " created_at, updated_at, status) VALUES (?, 7, 1, ?, ?, ?, '2024-01-01', '2024-01-01', ?)",
                    (i, sha, label, str(path), status))
    con.commit()
    con.close()


def _photos(folder: Path, make, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i:03d}.jpg"
        path.write_bytes(make(i))
        paths.append(path)
    return paths


def test_accepted_not_kimchi_labels_are_the_next_retrains_negatives_and_exported(home, tmp_path):
    make_dataset(home.base, classes=2, per_class=6, size=(96, 72))
    others = _photos(home.corrections, lambda i: other_photo_bytes(OTHER_KINDS[i % 6], seed=i, size=(96, 72)), 9)
    statuses = ["accepted"] * 6 + ["pending", "rejected", "accepted"]
    labels = ["not_kimchi"] * 8 + ["김치아님"]  # an alias stored by an older bot is the same class
    _database(home, [(p, label, status) for p, label, status in zip(others, labels, statuses)])
    collected = collect_items(home.base, corpus_rows(home, lambda uid: False))
    tset = build_training_set(tmp_path / "run", collected, {}, 0, holdout_key(home))
    linked = sorted(p.stem for p in (tset.train_dir / NOT_KIMCHI).iterdir())
    accepted = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p, s in zip(others, statuses) if s == "accepted")
    assert linked == accepted and tset.train_counts[NOT_KIMCHI] == 7  # pending and rejected wait
    assert set(tset.train_counts) == {"배추김치", "오이소박이", NOT_KIMCHI}

    out = tmp_path / "export"
    assert main(["--home", str(home.root), "export-dataset", str(out)]) == 0
    with open(out / "metadata.csv", encoding="utf-8") as fh:
        listed = [r for r in csv.DictReader(fh) if r["label"] == NOT_KIMCHI]
    assert len(listed) == 7 and all(r["file_name"].split("/")[1] == NOT_KIMCHI for r in listed)
    assert all((out / r["file_name"]).is_file() for r in listed)


# ---------------------------------------------------------------------------------------------
# a retrain that learns negatives

@pytest.fixture(scope="module")
def learnt(tmp_path_factory):
    """A retrain's folder (3 classes in the base, 24 users' accepted not_kimchi labels of other pictures), trained
    and published like the bot's retrain does (efficientnet_lite0, size 64, presize 160, knn open-set check)."""
    from models.registry import Registry
    from training.progress import Progress
    from training.train import Recipe, train

    root = tmp_path_factory.mktemp("negatives")
    home = Home(root / "home").ensure()
    make_dataset(home.base, classes=3, per_class=16, size=(200, 150))
    others = _photos(root / "photos", lambda i: other_photo_bytes(OTHER_KINDS[i % 6], seed=i, size=(200, 150)), 24)
    _database(home, [(p, NOT_KIMCHI, "accepted") for p in others])
    collected = collect_items(home.base, corpus_rows(home, lambda uid: False))
    tset = build_training_set(root / "run", collected, {}, 0, holdout_key(home))
    # Mostly the head (two frozen epochs at a high rate, one unfrozen): on 72 pictures that is what learns the
    # classes and not_kimchi in the fewest seconds; fine_tune(2, freeze_epochs=1) at 2e-3 still mixed them up.
    recipe = Recipe(arch="efficientnet_lite0", size=64, presize=160, bs=16, epochs=1, freeze_epochs=2, base_lr=1e-2,
                    workers=0, openset="knn")
    outcome = train(tset.train_dir, recipe, Registry(home.models), Progress("quiet"), report=False)
    return home, outcome


def test_a_retrain_with_users_negatives_answers_not_kimchi_and_still_names_kimchi(learnt):
    from models.engine import Classifier, EngineConfig

    home, outcome = learnt
    assert sorted(outcome.meta.vocab) == sorted([*CLASS_NAMES[:3], NOT_KIMCHI])
    # photos none of them was trained on: new seeds, the size users send
    kimchi = [(i, photo_bytes(i, seed=500 + j)) for i in range(3) for j in range(4)]
    others = [other_photo_bytes(kind, seed=500 + j) for kind in OTHER_KINDS for j in range(2)]
    with Classifier(home.models, outcome.version, EngineConfig(device="cpu")) as classifier:
        named = classifier.classify_batch([data for _, data in kimchi])
        turned = classifier.classify_batch(others)
    right = sum(p.answer == CLASS_NAMES[i] for (i, _), p in zip(kimchi, named))
    assert right >= 10, [p.answer for p in named]  # of 12 kimchi photos: still their own class
    assert sum(p.answer == NOT_KIMCHI for p in turned) >= 10, [(p.label, p.openset, p.threshold) for p in turned]
    # the head learnt the class from the users' labels: not only the open-set check says so (it would alone)
    assert sum(p.label == NOT_KIMCHI for p in turned) >= 8, [p.label for p in turned]
    assert all(p.closest is not None and p.closest[0] in CLASS_NAMES for p in turned)  # the nearest kimchi
