"""The open-set check in the engine: "not kimchi" for photos unlike any class, the head's probabilities
untouched, versions without a check, `kimchi-train calibrate` and `predict --json`.

Synthetic figures: the session model knows 4 classes (a coloured shape on a noisy background); photos of other
things (tests/imagegen.draw_other: stripes, chequerboards, rings, gradients, coarse noise, crosses) are what
it has never seen."""
import json
import shutil

import numpy as np
import pytest
import torch

from models.engine import Classifier, EngineConfig, Output, Runner
from models.labels import CLASS_NAMES, NOT_KIMCHI
from models.openset import FILE, OpenSet, balanced_sample, conformal_threshold
from tests.imagegen import OTHER_KINDS, other_photo_bytes, photo_bytes

KIMCHI = [photo_bytes(i % 4, seed=700 + i, size=(320, 240)) for i in range(40)]
OTHERS = [other_photo_bytes(kind, seed=s) for kind in OTHER_KINDS for s in range(5)]


def classify(registry, version, images, **config):
    with Classifier(registry, version, EngineConfig(device="cpu", **config)) as classifier:
        return classifier.classify_batch(images)


@pytest.fixture(scope="module")
def verdicts(calibrated):
    return classify(calibrated.registry, calibrated.version, KIMCHI + OTHERS)


def test_photos_unlike_any_class_are_not_kimchi_and_kimchi_keep_their_class(verdicts):
    kimchi, others = verdicts[:len(KIMCHI)], verdicts[len(KIMCHI):]
    flagged = np.mean([p.not_kimchi for p in others])
    kept = [p for p in kimchi if not p.not_kimchi]
    assert flagged >= 0.8, flagged
    assert len(kept) / len(kimchi) >= 0.85, len(kept)
    right = np.mean([p.label == CLASS_NAMES[i % 4] for i, p in enumerate(kimchi) if not p.not_kimchi])
    assert right >= 0.85, right
    one = next(p for p in others if p.not_kimchi)
    assert one.answer == NOT_KIMCHI and one.far and one.openset > one.threshold
    assert one.closest is not None and one.closest[0] == one.label  # the model has no not_kimchi class


def test_the_check_leaves_the_heads_probabilities_as_they_were(calibrated, verdicts):
    """Parity with learn.predict holds on the probabilities: the verdict is extra, from the same pass."""
    plain = classify(calibrated.registry, calibrated.version, KIMCHI + OTHERS, openset=False)
    assert all(p.openset is None for p in plain)
    for with_check, without in zip(verdicts, plain):
        assert with_check.top == without.top


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_every_runtime_gives_the_same_verdict(calibrated, verdicts, runtime):
    scored = classify(calibrated.registry, calibrated.version, KIMCHI[:8] + OTHERS[::3], cpu_runtime=runtime,
                      max_batch=4)
    reference = verdicts[:8] + verdicts[len(KIMCHI)::3]
    assert [p.not_kimchi for p in scored] == [p.not_kimchi for p in reference]
    assert np.allclose([p.openset for p in scored], [p.openset for p in reference], atol=1e-4)


def test_a_version_without_a_check_answers_as_before(trained):
    results = classify(trained.registry, trained.version, OTHERS[:6])
    assert all(p.openset is None and p.threshold is None and not p.not_kimchi for p in results)
    assert all(p.answer == p.label for p in results)


def test_a_damaged_check_is_logged_and_the_version_still_answers(calibrated_copy, caplog):
    (calibrated_copy.registry.path(calibrated_copy.version) / FILE).write_bytes(b"\x00" * 64)
    results = classify(calibrated_copy.registry, calibrated_copy.version, OTHERS[:2])
    assert all(p.ok and p.openset is None for p in results)
    assert "kimchi-train calibrate" in caplog.text and "is damaged" in caplog.text


def test_calibrate_an_old_version_then_predict_json_says_not_kimchi(trained_copy, tmp_path, capsys):
    from training.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "stripes.jpg").write_bytes(other_photo_bytes("stripes", seed=3))
    (photos / "kimchi.jpg").write_bytes(photo_bytes(1, seed=901))
    registry = trained_copy.registry
    assert main(["predict", str(photos), "--json", "--device", "cpu"]) == 0
    before = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all(row["openset"] is None and row["kimchi"] for row in before)

    assert main(["calibrate", trained_copy.version, "--data", str(trained_copy.data), "--keep", "0.95"]) == 0
    out = capsys.readouterr().out
    assert "calibrated to keep 95% of kimchi" in out and "kimchi answered as kimchi" in out
    assert (registry.path(trained_copy.version) / FILE).is_file()
    assert (registry.path(trained_copy.version) / "report" / "openset.png").stat().st_size > 5000

    assert main(["predict", str(photos), "--json", "--device", "cpu"]) == 0
    rows = {row["file"].rsplit("/", 1)[1]: row for row in map(json.loads, capsys.readouterr().out.splitlines())}
    stripes, kimchi = rows["stripes.jpg"], rows["kimchi.jpg"]
    assert stripes["label"] == NOT_KIMCHI and stripes["kimchi"] is False
    assert stripes["closest"][0] == stripes["top"][0][0] and stripes["confidence"] is None
    assert stripes["openset"]["score"] > stripes["openset"]["threshold"]
    assert kimchi["label"] == "오이소박이" and kimchi["kimchi"] and kimchi["confidence"] == kimchi["top"][0][1]


def test_calibrate_without_its_data_folder_says_what_to_pass(trained_copy, tmp_path, capsys):
    from training.cli import main

    moved = tmp_path / "moved"
    shutil.copytree(trained_copy.data, moved)
    meta_path = trained_copy.registry.path(trained_copy.version) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["dataset"]["path"] = str(tmp_path / "gone")
    meta_path.write_text(json.dumps(meta, ensure_ascii=False))
    assert main(["calibrate", trained_copy.version]) == 1
    err = capsys.readouterr().err
    assert "--data DIR" in err and "Traceback" not in err
    assert main(["calibrate", trained_copy.version, "--data", str(moved), "--method", "mahalanobis"]) == 0
    check = OpenSet.load(trained_copy.registry.path(trained_copy.version))
    assert check.method == "mahalanobis"
    results = classify(trained_copy.registry, trained_copy.version, OTHERS + KIMCHI[:20])
    assert np.mean([p.not_kimchi for p in results[:len(OTHERS)]]) >= 0.8
    assert np.mean([not p.not_kimchi for p in results[len(OTHERS):]]) >= 0.8


def test_pooled_and_probabilities_come_from_one_pass(calibrated):
    """Output.BOTH gives what PROBABILITIES and POOLED give separately."""
    config = EngineConfig(device="cpu", openset=False)
    both = Runner(calibrated.registry, calibrated.version, config, Output.BOTH)
    pooled = Runner(calibrated.registry, calibrated.version, config, Output.POOLED)
    prepared = [both.prepare(data) for data in KIMCHI[:3]]
    for (probs, features), alone in zip(both.run(prepared), pooled.run(prepared)):
        assert torch.allclose(features, alone, atol=1e-5)
        assert abs(float(probs.sum()) - 1) < 1e-5


def test_conformal_threshold_and_the_balanced_bank():
    scores = np.arange(100, dtype=float)
    assert conformal_threshold(scores, 0.95) == 95.0  # ceil(101 * 0.95) = 96th smallest
    assert conformal_threshold(scores[:10], 0.95) == 9.0  # too few for that rank: the largest
    labels = ["a"] * 500 + ["b"] * 30 + ["c"] * 300
    chosen = balanced_sample(labels, 120)
    picked = [labels[i] for i in chosen]
    assert len(chosen) == 120 and picked.count("b") == 30 and picked.count("a") == picked.count("c") == 45
    assert balanced_sample(labels, 120) == chosen  # seeded
