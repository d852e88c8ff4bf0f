"""Training end to end through the CLI, the artifact it publishes, and the commands around it."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.artifact import LEARNER, META, WEIGHTS, read_meta
from models.engine import Classifier, EngineConfig
from models.registry import Registry
from tests.imagegen import draw, make_dataset
from models.protocol import BatchEvent, EpochEvent, parse
from training.cli import main


def test_tiny_train_publishes_a_complete_version(home, tmp_path, capsys):
    data = tmp_path / "data"
    make_dataset(data, classes=3, per_class=16, size=(96, 72))
    rc = main(["train", str(data), "--arch", "efficientnet_lite0", "--size", "64", "--presize", "80",
               "--epochs", "1", "--freeze-epochs", "1", "--bs", "8", "--workers", "0", "--progress", "json"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    path = Path(lines[-1])  # the new version's path is the last line of stdout
    events = [parse(line) for line in lines[:-1]]  # every other line is a protocol event
    kinds = [e.kind for e in events if not isinstance(e, BatchEvent)]
    assert kinds == ["start", "epoch", "epoch", "stage", "done"]
    epochs = [e for e in events if isinstance(e, EpochEvent)]
    assert [e.phase for e in epochs] == ["frozen", "unfrozen"] and [e.total for e in epochs] == [2, 2]
    assert all(e.train_loss is not None and e.valid_loss is not None and e.elapsed > 0 for e in epochs)
    assert set(epochs[0].metrics) == {"accuracy", "error_rate", "recall_macro", "precision_macro"}
    assert events[-1].version == "v1" and events[-1].kept_epoch in (1, 2)

    assert path == home.models / "v1"
    for name in (WEIGHTS, META, LEARNER, "report/metrics.json", "report/classification_report.txt",
                 "report/most_confused.txt", "report/confusion_matrix.png"):
        assert (path / name).is_file(), name
    with Image.open(path / "report" / "confusion_matrix.png") as img:
        assert img.size[0] > 300 and np.asarray(img.convert("L")).std() > 10
    meta = read_meta(path)
    assert meta.arch == "efficientnet_lite0" and meta.vocab == ["배추김치", "오이소박이", "파김치"]
    assert meta.preprocessing.presize == 80 and meta.preprocessing.size == 64
    assert len(meta.epochs) == 2
    losses = [row["valid_loss"] for row in meta.epochs]
    assert meta.kept_epoch == int(np.argmin(losses)) + 1  # the best valid loss is kept, not the last
    kept = meta.epochs[meta.kept_epoch - 1]
    assert meta.metrics["accuracy"] == pytest.approx(kept["accuracy"], abs=1e-6)  # the weights are that epoch's
    assert meta.dataset["counts"] == {"배추김치": 16, "오이소박이": 16, "파김치": 16}
    assert meta.dataset["n_valid"] == 9 and len(meta.dataset["fingerprint"]) == 16
    assert {"torch", "fastai", "torchvision"} <= meta.versions.keys() and meta.created_at
    assert Registry(home.models).current() == "v1"  # the first model becomes current


def test_safe_artifact_predicts_like_learner_pkl(trained, tmp_path):
    """The engine on model.safetensors + meta.json agrees with load_learner(learner.pkl).predict."""
    from fastai.learner import load_learner
    from fastai.vision.core import PILImage

    learn = load_learner(trained.registry.path(trained.version) / LEARNER)
    classifier = Classifier(trained.registry, trained.version, EngineConfig(device="cpu"))
    images = [draw(i % 4, (180 + 7 * i, 140 + 3 * i), seed=100 + i) for i in range(12)]
    blobs = []
    for i, img in enumerate(images):
        path = tmp_path / f"{i}.png"
        img.save(path)
        blobs.append(path.read_bytes())
    results = classifier.classify_batch(blobs)
    classifier.close()
    for img, result in zip(images, results):
        label, _, probs = learn.predict(PILImage(img))
        assert result.label == str(label)
        assert result.confidence == pytest.approx(float(probs.max()), abs=0.02)


def test_models_promote_and_rollback_commands(trained_copy, capsys):
    from training.convert import import_fastai_export

    reg = trained_copy.registry
    version, _ = import_fastai_export(reg.path("v1") / LEARNER, reg)  # unpickled in a child process
    assert version == "v2" and read_meta(reg.path("v2")).arch == "efficientnet_lite0"
    assert sorted(p.name for p in reg.path("v2").iterdir()) == sorted([META, WEIGHTS])  # no pickle unless asked
    from safetensors.torch import load_file
    before, after = load_file(reg.path("v1") / WEIGHTS), load_file(reg.path("v2") / WEIGHTS)
    assert before.keys() == after.keys() and all(before[k].equal(after[k]) for k in before)
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "* v1" in listing and "  v2" in listing
    assert main(["promote", "v2"]) == 0
    assert "v2 is now current (was v1)" in capsys.readouterr().out
    assert reg.current() == "v2"
    assert main(["rollback"]) == 0
    assert reg.current() == "v1"


def test_predict_command_lines_json_and_bad_files(trained_copy, tmp_path, capsys):
    folder = tmp_path / "photos" / "nested"
    folder.mkdir(parents=True)
    draw(0, (120, 90), seed=1).save(folder / "a.jpg")
    draw(2, (120, 90), seed=2).save(folder.parent / "b.webp", "WEBP")
    (folder / "c.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    assert main(["predict", str(tmp_path / "photos"), "--json", "--top", "2"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(l) for l in captured.out.splitlines()]
    assert len(rows) == 3
    by_name = {Path(r["file"]).name: r for r in rows}
    assert by_name["a.jpg"]["label"] == "배추김치" and by_name["a.jpg"]["model"] == "v1"
    assert len(by_name["a.jpg"]["top"]) == 2
    assert by_name["b.webp"]["label"] == "파김치"
    assert "error" in by_name["c.jpg"]
    assert "img/s" in captured.err and "1 errors" in captured.err
    assert main(["predict", str(folder / "a.jpg")]) == 0
    assert "a.jpg: 배추김치" in capsys.readouterr().out


@pytest.mark.slow
def test_evaluate_writes_report_and_pictures(trained_copy, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["evaluate", "v1", str(trained_copy.data), "--out", str(out), "--tta"]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "with TTA" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 24 and metrics["accuracy"] >= 0.9 and "tta" in metrics
    assert set(metrics["per_class"]) == {"배추김치", "오이소박이", "파김치", "열무김치"}
    for name in ("show_batch.png", "show_results.png", "top_losses.png", "confusion_matrix.png",
                 "confusion_matrix_normalized.png"):
        with Image.open(out / name) as img:
            assert img.size[0] >= 300 and np.asarray(img.convert("L")).std() > 10, name
    confused = np.asarray(metrics["confusion"])
    off_diagonal = confused - np.diag(np.diag(confused))
    pairs = [line for line in (out / "most_confused.txt").read_text().splitlines()[1:] if line.strip()]
    if off_diagonal.any():  # one line per confused pair, with its count
        assert len(pairs) == np.count_nonzero(off_diagonal) and all(": " in p and "→" in p for p in pairs)
        assert sum(int(p.rsplit(": ", 1)[1]) for p in pairs) == off_diagonal.sum()
    else:
        assert pairs == ["(no confusions)"]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's")
def test_threads_and_loader_workers_follow_the_cpus_this_process_may_use():
    """Under `taskset` or a container's cpuset the machine's CPU count overstates what we may run on."""
    import torch

    from models.engine import thread_plan
    from training.learner import default_workers

    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})  # this thread only; the others keep theirs
    try:
        one = (default_workers(torch.device("cpu")), thread_plan(EngineConfig(device="cpu")))
    finally:
        os.sched_setaffinity(0, allowed)
    assert one == (0, (1, 1))  # one core: no loader process beside the model, one decoder, one ORT thread
    assert default_workers(torch.device("cpu")) == min(2, len(allowed) - 1)


def test_macro_metrics_are_fastais_without_sklearns_warning():
    import warnings

    import torch
    from fastai.metrics import Precision, Recall

    from training.learner import macro

    preds, targets = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 2, 1, 2])  # class 2 is never predicted
    for ours, theirs in ((macro("precision_score"), Precision(average="macro")),
                         (macro("recall_score"), Recall(average="macro"))):
        for metric in (ours, theirs):
            metric.reset()
            metric.accum_values(preds, targets, None)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # train.log stays free of "Precision is ill-defined"
            value = ours.value
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fastai's own says it
            reference = theirs.value
        assert (ours.name, value) == (theirs.name, pytest.approx(reference))
