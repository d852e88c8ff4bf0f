"""The registry: numbered versions published by rename, an atomic current pointer, rollback."""
import json
import os
import threading
from pathlib import Path

import pytest

from models.artifact import META, WEIGHTS, ModelMeta
from models.errors import ArtifactError, KimchiError, NoModel, UnknownVersion
from models.registry import CURRENT, Registry


def _stage(reg: Registry, arch: str = "resnet18") -> Path:
    """A staged version with a real meta.json; the registry itself never opens the weights."""
    staging = reg.staging()
    (staging / META).write_text(ModelMeta(arch=arch, vocab=["배추김치", "깍두기"]).to_json(), encoding="utf-8")
    (staging / WEIGHTS).write_bytes(b"weights")
    return staging


def test_first_version_becomes_current_and_later_ones_wait(tmp_path):
    reg = Registry(tmp_path / "models")
    with pytest.raises(NoModel):
        reg.resolve("current")
    assert reg.publish(_stage(reg)) == "v1"
    assert reg.publish(_stage(reg)) == "v2"
    assert reg.versions() == ["v1", "v2"]
    assert reg.current() == "v1"
    assert reg.promote("v2") == "v1"
    assert reg.current() == "v2"
    assert reg.resolve("2") == "v2"


def test_half_written_versions_are_invisible_and_not_promotable(tmp_path):
    reg = Registry(tmp_path / "models")
    reg.publish(_stage(reg))
    staging = reg.staging()
    (staging / META).write_text("{}", encoding="utf-8")  # killed before the weights were written
    broken = reg.root / "v7"
    broken.mkdir()
    (broken / META).write_text("{}", encoding="utf-8")
    assert reg.versions() == ["v1"]
    for name in (staging.name, "v7"):
        with pytest.raises(UnknownVersion):
            reg.promote(name)
    with pytest.raises(ArtifactError):
        reg.publish(staging)
    assert reg.current() == "v1"
    assert reg.publish(_stage(reg)) == "v8"  # numbers are never reused, even by a broken folder


def test_a_crash_while_switching_leaves_the_old_pointer(tmp_path, monkeypatch):
    reg = Registry(tmp_path / "models")
    reg.publish(_stage(reg))
    reg.publish(_stage(reg))

    def crash(*args, **kwargs):
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        reg.promote("v2")
    monkeypatch.undo()
    assert reg.current() == "v1"
    assert json.loads((reg.root / CURRENT).read_text())["version"] == "v1"


def test_readers_never_see_a_missing_or_torn_pointer(tmp_path):
    reg = Registry(tmp_path / "models")
    reg.publish(_stage(reg))
    reg.publish(_stage(reg))
    seen, errors, stop = set(), [], threading.Event()

    def read():
        while not stop.is_set():
            try:
                seen.add(Registry(reg.root).current())
            except Exception as err:  # noqa: BLE001 - any failure is the finding
                errors.append(err)

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(150):
        reg.promote("v2" if i % 2 == 0 else "v1")
    stop.set()
    reader.join()
    assert errors == []
    assert seen <= {"v1", "v2"} and None not in seen


def test_rollback_walks_back_through_promotions(tmp_path):
    reg = Registry(tmp_path / "models")
    for _ in range(3):
        reg.publish(_stage(reg))
    reg.promote("v2")
    reg.promote("v3")
    assert reg.rollback() == "v2"
    assert reg.rollback() == "v1"
    with pytest.raises(KimchiError, match="no earlier version"):
        reg.rollback()
    history = [json.loads(l) for l in (reg.root / "promotions.jsonl").read_text().splitlines()]
    assert [h["version"] for h in history] == ["v1", "v2", "v3", "v2", "v1"]


def test_staging_of_a_dead_process_is_cleaned_up(tmp_path):
    reg = Registry(tmp_path / "models")
    dead = reg.root / ".staging-999999999-deadbeef"
    dead.mkdir(parents=True)
    mine = reg.staging()
    assert reg.cleanup_staging() == [dead.name]
    assert mine.exists() and not dead.exists()


def test_damaged_pointer_is_one_sentence(tmp_path):
    reg = Registry(tmp_path / "models")
    reg.publish(_stage(reg))
    (reg.root / CURRENT).write_text("{not json", encoding="utf-8")
    with pytest.raises(ArtifactError, match="damaged"):
        reg.current()
