"""`kimchi-train train --gpus N`: N processes under accelerate launch (here two CPU processes over gloo),
one version published by rank 0, one set of progress lines."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.artifact import load_artifact
from models.registry import Registry
from tests.imagegen import make_dataset
from training.cli import main

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--arch", "efficientnet_lite0", "--size", "32", "--presize", "40", "--epochs", "2", "--freeze-epochs", "0",
        "--bs", "4", "--workers", "0"]


@pytest.mark.slow
def test_two_processes_publish_one_complete_version(home, tmp_path, capfd, monkeypatch):
    data = tmp_path / "data"
    make_dataset(data, classes=2, per_class=8, size=(60, 48))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two processes on a small machine
    code = main(["--home", str(home.root), "train", str(data), "--gpus", "2", "--device", "cpu", "--progress", "json",
                 *TINY])
    out, err = capfd.readouterr()
    assert code == 0, err[-3000:]
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    kinds = [e["event"] for e in events]
    assert kinds.count("start") == 1 and kinds.count("done") == 1, kinds  # rank 0 alone reports
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2]
    registry = Registry(home.models)
    assert registry.versions() == ["v1"] and registry.current() == "v1"
    done = next(e for e in events if e["event"] == "done")
    assert done["version"] == "v1" and out.strip().splitlines()[-1] == str(registry.path("v1"))
    model, meta = load_artifact(registry.path("v1"), device="cpu")  # the safe artifact loads and names its epochs
    assert meta.vocab == sorted(p.name for p in data.iterdir()) and len(meta.epochs) == 2
    assert meta.kept_epoch in (1, 2) and not list(home.models.glob("*staging*"))


def test_gpus_beyond_the_machine_is_one_sentence(home, tmp_path, capsys):
    data = tmp_path / "data"
    make_dataset(data, classes=2, per_class=3)
    assert main(["train", str(data), "--gpus", "64", "--device", "auto", *TINY]) == 1
    err = capsys.readouterr().err
    assert "--gpus 64 needs 64 CUDA GPUs" in err and "Traceback" not in err
    assert not Registry(home.models).versions()
