"""Bad input to kimchi-train: one clear sentence on stderr, a non-zero exit, no traceback, nothing damaged."""
import subprocess
import sys
import urllib.error

from models.registry import Registry
from tests.botkit import refused
from tests.imagegen import make_dataset
from training.cli import main

TINY = ["--size", "32", "--presize", "40", "--epochs", "1", "--freeze-epochs", "0", "--bs", "4", "--workers", "0"]


def test_wrong_path_empty_and_single_class_folders(home, tmp_path, capsys):
    refused(capsys, main, ["train", str(tmp_path / "nowhere"), *TINY], "does not exist")
    (tmp_path / "empty").mkdir()
    refused(capsys, main, ["train", str(tmp_path / "empty"), *TINY], "holds no images")
    make_dataset(tmp_path / "one", classes=1, per_class=3)
    refused(capsys, main, ["train", str(tmp_path / "one"), *TINY], "only one class")
    refused(capsys, main, ["import", str(tmp_path / "empty")], "no class folders")
    refused(capsys, main, ["import", str(tmp_path / "nowhere")], "does not exist")
    refused(capsys, main, ["predict", str(tmp_path / "empty")], "No images found")
    assert not Registry(home.models).versions()


def test_unknown_arch_and_bad_values(home, tmp_path, capsys, monkeypatch):
    make_dataset(tmp_path / "d", classes=2, per_class=3)
    refused(capsys, main, ["train", str(tmp_path / "d"), "--arch", "vgg99", *TINY], "Unknown architecture 'vgg99'",
            "resnet18")
    refused(capsys, main, ["train", str(tmp_path / "d"), "--valid-pct", "1.5", *TINY], "valid_pct")
    monkeypatch.setenv("KIMCHI_CPU_RUNTIME", "tensorrt")  # the holdout scoring's runtime: said before training
    (tmp_path / "holdout.jsonl").write_text("", encoding="utf-8")
    refused(capsys, main, ["train", str(tmp_path / "d"), "--holdout", str(tmp_path / "holdout.jsonl"), *TINY],
            "KIMCHI_CPU_RUNTIME", "tensorrt")
    assert not Registry(home.models).versions()


def test_offline_without_weights_says_what_to_pass(home, tmp_path, capsys, monkeypatch):
    import torchvision.models._api as weights_api

    def offline(*args, **kwargs):  # the network is the one thing mocked
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(weights_api, "load_state_dict_from_url", offline)
    make_dataset(tmp_path / "d", classes=2, per_class=3)
    line = refused(capsys, main, ["train", str(tmp_path / "d"), "--arch", "resnet18", *TINY], "--weights PATH",
                   "efficientnet_lite0", "--no-pretrained")
    assert "ImageNet weights for resnet18" in line
    refused(capsys, main, ["train", str(tmp_path / "d"), "--weights", str(tmp_path / "missing.pth"), *TINY],
            "does not exist")
    assert not Registry(home.models).versions()


def test_resnet_trains_offline_from_a_weights_file(home, tmp_path, capsys):
    import torch
    import torchvision

    weights = tmp_path / "resnet18-imagenet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    make_dataset(tmp_path / "d", classes=2, per_class=4)
    assert main(["train", str(tmp_path / "d"), "--weights", str(weights), *TINY]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith("v1")


def test_corrupt_model_directory_and_unknown_versions(trained_copy, capsys, tmp_path):
    reg = trained_copy.registry
    (reg.path("v1") / "model.safetensors").write_bytes(b"\x00" * 100)
    photo = tmp_path / "p.jpg"
    from tests.imagegen import draw

    draw(0).save(photo)
    refused(capsys, main, ["predict", str(photo)], "damaged")
    (reg.path("v1") / "meta.json").write_text("{oops", encoding="utf-8")
    refused(capsys, main, ["predict", str(photo)], "not a valid model description")
    refused(capsys, main, ["promote", "v9"], "no complete model version 'v9'")
    refused(capsys, main, ["evaluate", "v9", str(trained_copy.data)], "v9")
    refused(capsys, main, ["rollback"], "no earlier version")


def test_console_script_reports_one_sentence(tmp_path):
    """The installed `kimchi-train` entry point, as a user runs it."""
    result = subprocess.run([sys.executable, "-m", "training.cli", "--home", str(tmp_path / "h"), "train",
                             str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().endswith("import images first (kimchi-train import SRC).")


def test_presets_name_recipes_and_flags_beside_them_win():
    from training.cli import build_parser, recipe_from_args
    from training.recipe import PRESETS, Recipe

    def recipe(*argv):
        return recipe_from_args(build_parser().parse_args(["train", *argv]))

    assert recipe() == Recipe()  # no preset: the blog's recipe, unchanged
    fast = recipe("--preset", "cpu-fast")
    assert (fast.arch, fast.presize, fast.epochs, fast.size) == ("efficientnet_lite0", 192, 2, 160)
    assert fast == Recipe(**PRESETS["cpu-fast"][1])
    mixed = recipe("--preset", "cpu-fast", "--epochs", "4", "--size", "128")
    assert (mixed.arch, mixed.epochs, mixed.size, mixed.presize) == ("efficientnet_lite0", 4, 128, 192)
    for name in PRESETS:
        Recipe.from_preset(name).validate()
