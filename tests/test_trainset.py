"""Assembling a retrain's data, and the promotion rule: plain functions, no Telegram."""
import json
import os
import shutil
import stat

import pytest

from bot.reports import decision_text
from models.home import Home, holdout_key
from models.promotion import Check, decide
from models.protocol import HoldoutScore
from models.trainset import CorrectionRow, build_training_set, collect_items, group_sides, holdout_side
from tests.imagegen import OTHER_KINDS, draw, draw_other, encode

KEY = b"k" * 32


def base_set(root, per_class=12):
    for name, index in (("배추김치", 0), ("깍두기", 4)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            draw(index, (64, 48), seed=i).save(root / name / f"{i}.jpg")
    return root


def test_a_correction_never_relabels_a_base_image_and_the_holdout_stays_frozen(tmp_path):
    base = base_set(tmp_path / "base")
    items = collect_items(base, []).items
    target = next(sha for sha, item in items.items() if item.label == "배추김치")
    copy = tmp_path / "c.jpg"
    shutil.copy(items[target].path, copy)
    new_photo = tmp_path / "new.jpg"
    new_photo.write_bytes(encode(draw(7, (64, 48), seed=99), "JPEG"))
    rows = [CorrectionRow(target, "백김치", copy), CorrectionRow("f" * 64, "백김치", new_photo),
            CorrectionRow("e" * 64, "백김치", tmp_path / "gone.jpg")]
    collected = collect_items(base, rows)
    assert collected.items[target].label == "배추김치" and collected.disputes == 1  # the base label stands
    assert collected.items["f" * 64].source == "correction" and collected.missing == 1
    assert collected.corrections == 1 and len(collected.items) == 25

    first = build_training_set(tmp_path / "run1", collected, {}, 20, KEY)
    decided = {sha: side for sha, side, _ in first.new_splits}
    assert set(decided) == set(collected.items) and "holdout" in decided.values()
    listed = [json.loads(line)["sha256"] for line in first.holdout_file.read_text().splitlines()]
    expected_holdout = [s for s, side in decided.items() if side == "holdout" and s != "f" * 64]
    assert sorted(listed) == sorted(expected_holdout)
    assert first.held_back == (decided["f" * 64] == "holdout")
    linked = {p.stem for p in first.train_dir.rglob("*.jpg")}
    assert linked == {s for s, side in decided.items() if side == "train"}
    second = build_training_set(tmp_path / "run2", collected, decided, 50, KEY)
    assert second.new_splits == [] and second.holdout_counts == first.holdout_counts


def test_a_holdout_correction_counts_only_when_an_admin_decided_it(tmp_path):
    photo = tmp_path / "p.jpg"
    photo.write_bytes(encode(draw(2, (64, 48), seed=1), "JPEG"))
    sha = "a" * 64
    for admin, listed in ((False, 0), (True, 1)):
        collected = collect_items(tmp_path / "none", [CorrectionRow(sha, "파김치", photo, admin_decided=admin)])
        tset = build_training_set(tmp_path / f"run-{admin}", collected, {sha: "holdout"}, 10, KEY)
        assert len(tset.holdout_file.read_text().splitlines()) == listed and tset.held_back == 1 - listed


def test_the_holdout_side_depends_on_a_secret_key_kept_private(tmp_path):
    shas = [f"{i:064x}" for i in range(2000)]
    a = [holdout_side(s, 10, b"a" * 32) for s in shas]
    b = [holdout_side(s, 10, b"b" * 32) for s in shas]
    assert a != b and 150 < a.count("holdout") < 250  # about 10%, and unpredictable without the key
    home = Home(tmp_path / "home").ensure()
    key = holdout_key(home)
    assert len(key) == 32 and holdout_key(home) == key
    assert stat.S_IMODE(os.stat(home.root / "holdout.key").st_mode) == 0o600


def score(f1, corrections=None, per_class=None, n_per_class=10, version="v"):
    per_class = per_class or {}
    return HoldoutScore(version, 20, f1, f1, f1, f1, per_class, 4 if corrections is not None else 0, corrections,
                        {label: n_per_class for label in per_class})


@pytest.mark.parametrize("candidate, current, tolerance, promote, failed", [
    (score(0.8, 0.5), None, 0, True, []),
    (score(0.80, 0.75), score(0.80, 0.75), 0, True, []),  # no worse is enough
    (score(0.79, 1.0), score(0.80, 0.5), 0, False, [Check.MACRO_F1]),
    (score(0.79, 1.0), score(0.80, 0.5), 0.02, True, []),
    (score(0.9, 0.25), score(0.8, 0.5), 0, False, [Check.CORRECTIONS]),
    (score(0.8), score(0.8), 0, True, []),  # nothing corrected held out: F1 decides
])
def test_promotion_rule(candidate, current, tolerance, promote, failed):
    decision = decide(candidate, current, tolerance)
    assert decision.promote is promote and [f.check for f in decision.failed] == failed


def test_a_class_that_loses_too_much_f1_blocks_promotion_and_is_named():
    old = score(0.70, per_class={"깍두기": 0.90, "백김치": 0.50, "갓김치": 0.70})
    new = score(0.75, per_class={"깍두기": 0.70, "백김치": 0.90, "갓김치": 0.65})
    decision = decide(new, old, class_drop=0.10)
    assert not decision.promote and [(f.check, f.label) for f in decision.failed] == [(Check.CLASS_F1, "깍두기")]
    assert "깍두기 (kkakdugi) F1 fell from 0.900 to 0.700" in decision_text(decision, "en")
    assert "깍두기의 F1이" in decision_text(decision, "ko")
    few = score(0.75, per_class={"깍두기": 0.70}, n_per_class=4)  # under 5 holdout images: too noisy to veto
    assert decide(few, score(0.70, per_class={"깍두기": 0.90}), class_drop=0.10).promote
    assert decide(new, old, class_drop=0.25).promote


def test_near_duplicates_share_a_side_and_a_huge_group_is_not_one_photo():
    shas = [f"{i:064x}" for i in range(40)]
    holdout_like = next(s for s in shas if holdout_side(s, 10, KEY) == "holdout")
    train_like = next(s for s in shas if holdout_side(s, 10, KEY) == "train")
    sides = group_sides([[holdout_like, train_like], shas[30:32]], {}, 10, KEY)
    assert sides[holdout_like] == sides[train_like] and sides[shas[30]] == sides[shas[31]]
    recorded = group_sides([[holdout_like, train_like]], {train_like: "train"}, 10, KEY)
    assert recorded == {holdout_like: "train", train_like: "train"}  # the side it already has
    split_up = group_sides([[holdout_like, train_like]], {holdout_like: "holdout", train_like: "train"}, 10, KEY)
    assert set(split_up.values()) == {"holdout"}  # members on both sides: the holdout, the cautious side
    assert group_sides([shas], {}, 10, KEY) == {}  # 40 "copies" of one photo: the embedding, not a duplicate


def test_negatives_are_a_class_of_the_retrain_from_the_base_set_and_from_users(tmp_path):
    """Base negatives imported under another folder name (an older `import --allow-new-classes` of 기타) and
    users' accepted not_kimchi labels (any of its names) go into the retrain folder's not_kimchi, a class
    like the others: split, held out and left out under the minimum the same way."""
    base = base_set(tmp_path / "base", per_class=6)
    (base / "기타").mkdir()
    for i in range(4):
        draw_other(OTHER_KINDS[i], (64, 48), seed=i).save(base / "기타" / f"o{i}.jpg")
    photos = []
    for i in range(3):
        photos.append(tmp_path / f"user{i}.jpg")
        photos[-1].write_bytes(encode(draw_other("checker", (64, 48), seed=10 + i), "JPEG"))
    rows = [CorrectionRow(f"{i:064x}", label, path) for i, (label, path) in
            enumerate(zip(["not_kimchi", "김치아님", "not_kimchi"], photos))]
    collected = collect_items(base, rows)
    labels = sorted({item.label for item in collected.items.values()})
    assert labels == ["not_kimchi", "깍두기", "배추김치"] and collected.corrections == 3
    tset = build_training_set(tmp_path / "run", collected, {}, 0, KEY)
    assert tset.train_counts["not_kimchi"] == 7 and sorted(p.name for p in tset.train_dir.iterdir()) == labels
    held = build_training_set(tmp_path / "run2", collected, {sha: "holdout" for sha in collected.items}, 0, KEY)
    listed = [json.loads(line) for line in held.holdout_file.read_text().splitlines()]
    assert {r["label"] for r in listed} == set(labels) and held.held_back == 3  # users' labels: an admin first
    few = build_training_set(tmp_path / "run3", collect_items(base, []), {}, 0, KEY, min_per_class=5)
    assert few.left_out == {"not_kimchi": 4} and "not_kimchi" not in few.train_counts
