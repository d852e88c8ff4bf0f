"""The CPU runtime: model.onnx exported and checked against torch, served by the engine, made when missing,
replaced when damaged, refused when wrong, and the torch fallback or one clear error when it cannot be had."""
import asyncio
import sys
import threading

import numpy as np
import pytest
import torch

from bot.settings import Settings
from models import onnx_export
from models.artifact import load_artifact
from models.engine import Classifier, EngineConfig
from models.errors import ArtifactError, KimchiError
from models.onnx_export import ONNX, TAG_MAX_DP, TAG_WEIGHTS, export_onnx, sample_batch, weights_digest, with_tags
from tests.imagegen import varied_images
from tests.modelkit import publish_relabelled
from training.cli import main as kimchi_train

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw1"


def _session(data_or_path):
    import onnxruntime as ort

    return ort.InferenceSession(data_or_path if isinstance(data_or_path, bytes) else str(data_or_path),
                                providers=["CPUExecutionProvider"])


def _probs(classifier: Classifier, images: list[bytes]) -> np.ndarray:
    vocab = classifier.meta.vocab
    results = classifier.classify_batch(images)
    assert all(r.ok for r in results)
    return np.array([[dict(r.top)[label] for label in vocab] for r in results])


def _engine(trained, runtime: str, version: str | None = None) -> Classifier:
    return Classifier(trained.registry, version or trained.version,
                      EngineConfig(device="cpu", cpu_runtime=runtime, top_k=100, max_batch=8))


def test_publish_writes_a_checked_model_onnx_with_a_dynamic_batch(trained):
    folder = trained.registry.path(trained.version)
    session = _session(folder / ONNX)
    tags = session.get_modelmeta().custom_metadata_map
    assert tags[TAG_WEIGHTS] == weights_digest(folder)
    assert float(tags[TAG_MAX_DP]) <= 1e-4
    model, meta = load_artifact(folder)
    batch, source = sample_batch(varied_images(5), meta)
    assert source == "given images"
    with torch.inference_mode():
        reference = torch.softmax(model(batch), 1).numpy()
    for n in (5, 1):  # the batch axis is dynamic
        logits = session.run(None, {"input": batch[:n].numpy()})[0]
        assert np.abs(torch.softmax(torch.from_numpy(logits), 1).numpy() - reference[:n]).max() <= 1e-4


def test_export_parity_on_generated_images(trained_copy):
    folder = trained_copy.registry.path(trained_copy.version)
    (folder / ONNX).unlink()
    result = export_onnx(folder, images=varied_images(12))
    assert result.written and result.images == 8 and result.max_dp <= 1e-4
    assert (folder / ONNX).read_bytes() == result.data
    model, meta = load_artifact(folder)
    batch, _ = sample_batch(varied_images(24)[12:], meta)  # images the export's own check did not see
    with torch.inference_mode():
        reference = torch.softmax(model(batch), 1).numpy()
    ours = torch.softmax(torch.from_numpy(_session(folder / ONNX).run(None, {"input": batch.numpy()})[0]), 1).numpy()
    assert np.abs(ours - reference).max() <= 1e-4
    assert (ours.argmax(1) == reference.argmax(1)).all()


def _wrong_exporter(monkeypatch):
    """An exporter that writes a subtly different network: what the parity check is there to catch."""
    real = onnx_export.export_bytes

    def export_bytes(model, pre):
        with torch.no_grad():
            model[1][-1].weight.mul_(1.5)
        return real(model, pre)

    monkeypatch.setattr(onnx_export, "export_bytes", export_bytes)


def test_an_export_that_differs_from_torch_is_refused_and_not_written(trained_copy, monkeypatch):
    folder = trained_copy.registry.path(trained_copy.version)
    (folder / ONNX).unlink()
    _wrong_exporter(monkeypatch)
    with pytest.raises(ArtifactError, match="differs from the torch model"):
        export_onnx(folder)
    assert not (folder / ONNX).exists()
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_the_onnx_engine_matches_the_torch_engine(trained):
    images = varied_images(40)
    onnx_engine, torch_engine = _engine(trained, "onnx"), _engine(trained, "torch")
    try:
        assert (onnx_engine.runtime, torch_engine.runtime) == ("onnx", "torch")
        ours, reference = _probs(onnx_engine, images), _probs(torch_engine, images)
        assert (ours.argmax(1) == reference.argmax(1)).all()
        assert np.abs(ours - reference).max() <= 1e-4
        single = asyncio.run(onnx_engine.classify(images[0]))  # the bot's path: worker thread, micro-batch
        assert single.label == torch_engine.classify_batch(images[:1])[0].label
    finally:
        onnx_engine.close()
        torch_engine.close()


def test_a_version_without_model_onnx_gets_it_on_first_load(trained_copy):
    folder = trained_copy.registry.path(trained_copy.version)
    (folder / ONNX).unlink()
    engine = _engine(trained_copy, "auto")
    try:
        assert engine.runtime == "onnx"
        assert engine.classify_batch(varied_images(2))[0].ok
    finally:
        engine.close()
    assert _session(folder / ONNX).get_modelmeta().custom_metadata_map[TAG_WEIGHTS] == weights_digest(folder)


@pytest.mark.parametrize("damage", ["truncated", "other weights"])
def test_a_damaged_or_foreign_model_onnx_is_exported_again(trained_copy, damage):
    folder = trained_copy.registry.path(trained_copy.version)
    good = (folder / ONNX).read_bytes()
    bad = {"truncated": good[: len(good) // 2],
           "other weights": with_tags(good, {TAG_WEIGHTS: "0" * 64})}[damage]
    (folder / ONNX).write_bytes(bad)
    engine = _engine(trained_copy, "onnx")
    try:
        assert engine.runtime == "onnx"
    finally:
        engine.close()
    assert _session(folder / ONNX).get_modelmeta().custom_metadata_map[TAG_WEIGHTS] == weights_digest(folder)


def test_when_no_good_export_can_be_made_auto_serves_torch_and_onnx_says_why(trained_copy, monkeypatch, caplog):
    folder = trained_copy.registry.path(trained_copy.version)
    (folder / ONNX).write_bytes(b"damaged")
    _wrong_exporter(monkeypatch)
    engine = _engine(trained_copy, "auto")
    try:
        assert engine.runtime == "torch"
        assert all(r.ok for r in engine.classify_batch(varied_images(3)))
    finally:
        engine.close()
    assert "serving it with torch" in caplog.text
    assert (folder / ONNX).read_bytes() == b"damaged"  # the refused export was not written
    with pytest.raises(ArtifactError) as err:
        _engine(trained_copy, "onnx")
    message = str(err.value)
    assert trained_copy.version in message and "auto or torch" in message and "\n" not in message


def test_without_onnxruntime_auto_serves_torch_and_onnx_says_how_to_fix_it(trained, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    engine = _engine(trained, "auto")
    try:
        assert engine.runtime == "torch"
        assert engine.classify_batch(varied_images(1))[0].ok
    finally:
        engine.close()
    with pytest.raises(KimchiError, match="pip install onnxruntime"):
        _engine(trained, "onnx")
    with pytest.raises(KimchiError, match="Unknown CPU runtime"):
        _engine(trained, "openvino")


def test_swap_serves_the_new_version_on_onnx_exporting_it_first(trained_copy):
    registry = trained_copy.registry
    engine = _engine(trained_copy, "onnx")
    relabelled = publish_relabelled(registry, trained_copy.version)
    (registry.path(relabelled) / ONNX).unlink()
    image = varied_images(1)
    try:
        before = asyncio.run(engine.classify(image[0]))
        engine.swap(relabelled)
        after = asyncio.run(engine.classify(image[0]))
        assert engine.runtime == "onnx" and after.version == relabelled
        vocab = registry.meta(trained_copy.version).vocab
        assert after.label == vocab[len(vocab) - 1 - vocab.index(before.label)]  # same logits, reversed names
        assert abs(after.confidence - before.confidence) <= 1e-6
    finally:
        engine.close()
    assert (registry.path(relabelled) / ONNX).is_file()


def test_kimchi_train_export_onnx(trained_copy, capsys):
    folder = trained_copy.registry.path(trained_copy.version)
    (folder / ONNX).unlink()
    home = str(trained_copy.home.root)
    assert kimchi_train(["--home", home, "export-onnx"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{trained_copy.version}: {ONNX} written") and "dataset images" in out
    assert _session(folder / ONNX).get_modelmeta().custom_metadata_map[TAG_WEIGHTS] == weights_digest(folder)
    assert kimchi_train(["--home", home, "export-onnx", "v99"]) == 1
    err = capsys.readouterr().err
    assert "v99" in err and len(err.strip().splitlines()) == 1


def test_kimchi_cpu_runtime_chooses_what_the_bot_serves_with(trained_copy):
    from bot.app import build_serving

    env = {"TELEGRAM_BOT_TOKEN": TOKEN, "KIMCHI_HOME": str(trained_copy.home.root), "KIMCHI_DEVICE": "cpu"}
    assert Settings.load(environ=env, env_file=None).cpu_runtime == "auto"
    for runtime in ("torch", "onnx"):
        serving = build_serving(Settings.load(environ={**env, "KIMCHI_CPU_RUNTIME": runtime}, env_file=None))
        try:
            assert serving.classifier.runtime == runtime
        finally:
            serving.classifier.close()
    with pytest.raises(KimchiError, match="KIMCHI_CPU_RUNTIME"):
        Settings.load(environ={**env, "KIMCHI_CPU_RUNTIME": "tensorrt"}, env_file=None)


def test_kimchi_cpu_runtime_reaches_kimchi_train_predict_and_the_holdout_scoring(trained_copy, tmp_path, monkeypatch,
                                                                                 capsys):
    """The bot reads KIMCHI_CPU_RUNTIME with its settings; the command line and the trainer's holdout
    scoring read it from the environment, `--cpu-runtime` wins over it, and a wrong value is one sentence."""
    from models.holdout import score

    folder = trained_copy.registry.path(trained_copy.version)
    (folder / ONNX).unlink()
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, data in enumerate(varied_images(3)):
        (photos / f"{i}.jpg").write_bytes(data)
    predict = ["--home", str(trained_copy.home.root), "predict", str(photos)]
    monkeypatch.setenv("KIMCHI_CPU_RUNTIME", "torch")
    assert kimchi_train(predict) == 0
    assert "cpu, torch, batch" in capsys.readouterr().err and not (folder / ONNX).exists()  # nothing exported
    label = load_artifact(folder, device="cpu")[1].vocab[0]
    rows = [{"path": str(p), "label": label} for p in sorted(photos.iterdir())]
    assert score(trained_copy.registry, trained_copy.version, rows, "cpu")[0].n == 3
    assert not (folder / ONNX).exists()
    assert kimchi_train([*predict, "--cpu-runtime", "onnx"]) == 0
    assert "cpu, onnx, batch" in capsys.readouterr().err and (folder / ONNX).is_file()
    monkeypatch.setenv("KIMCHI_CPU_RUNTIME", "tensorrt")
    assert kimchi_train(predict) == 1
    err = capsys.readouterr().err.strip()
    assert "KIMCHI_CPU_RUNTIME" in err and "tensorrt" in err and len(err.splitlines()) == 1, err


def test_embeddings_run_on_onnx_runtime_with_torchs_vectors(trained, monkeypatch):
    """The embedding pass is the public runner with pooled output: on ONNX Runtime on the CPU (also when
    KIMCHI_CPU_RUNTIME asks for it), giving the unit vectors torch gives."""
    from models.embed import Embedder

    images, vectors = varied_images(6), {}
    for runtime in ("onnx", "torch"):
        monkeypatch.setenv("KIMCHI_CPU_RUNTIME", runtime)
        embedder = Embedder(trained.registry, trained.version)
        result = embedder.embed(images)
        assert embedder.runtime == result.runtime == runtime and not result.errors
        vectors[runtime] = result.vectors
    assert vectors["onnx"].shape == (6, 2 * 1280) and np.abs(vectors["onnx"] - vectors["torch"]).max() <= 1e-4


class _Counting:
    """An ORT session wrapper that counts runs and the most that were in it at once. With `hold`, a run
    waits (up to 10 s) for a second one to come in beside it, so that overlap does not hang on timing."""

    def __init__(self, session, log: list[str], name: str, hold: bool = False) -> None:
        self.session, self.log, self.name, self.hold = session, log, name, hold
        self.inside = self.most = 0
        self.lock = threading.Lock()
        self.both = threading.Event()

    def run(self, *args, **kwargs):
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
            if self.inside >= 2:
                self.both.set()
        self.log.append(self.name)
        try:
            if self.hold:
                self.both.wait(10)
            return self.session.run(*args, **kwargs)
        finally:
            with self.lock:
                self.inside -= 1


def test_batches_run_side_by_side_narrow_under_load_and_wide_alone(trained, monkeypatch):
    """On ONNX Runtime with two lanes: a burst runs on the one-thread session, two batches at once, with
    the same answers as one at a time; a lone photo runs on the session with every thread, and only its
    resize is split over two threads (which costs CPU a burst cannot spare)."""
    from models import prepare

    splits: list[bool] = []
    real_presize = prepare.presize_array

    def presize(img, presize, split=False):
        splits.append(split)
        return real_presize(img, presize, split=split)

    monkeypatch.setattr(prepare, "presize_array", presize)
    images = varied_images(24)
    engine = Classifier(trained.registry, trained.version, EngineConfig(
        device="cpu", cpu_runtime="onnx", top_k=100, max_batch=2, batch_lanes=2, runtime_threads=2))
    runs: list[str] = []
    try:
        onnx = engine.runner.net
        assert engine.runner.parallel_batches == 2 and onnx.narrow is not None
        onnx.wide, onnx.narrow = _Counting(onnx.wide, runs, "wide"), _Counting(onnx.narrow, runs, "narrow", hold=True)
        lone = [dict(asyncio.run(engine.classify(data)).top) for data in images]
        alone = np.array([[top[label] for label in engine.meta.vocab] for top in lone])
        assert set(runs) == {"wide"} and all(splits) and len(splits) == len(images)
        splits.clear()

        async def burst():
            return await asyncio.gather(*(engine.classify(data) for data in images))

        runs.clear()
        together = np.array([[dict(r.top)[label] for label in engine.meta.vocab] for r in asyncio.run(burst())])
        assert runs.count("narrow") >= len(runs) - 2 and onnx.narrow.most == 2, (runs, onnx.narrow.most)
        assert splits.count(True) <= 1, splits  # the first of the burst may find itself alone
        splits.clear()
        runs.clear()
        onnx.narrow.most = 0
        onnx.narrow.both.clear()
        streamed = _probs(engine, images)  # classify_stream: chunks on the lanes, results in order
        assert set(runs) == {"narrow"} and onnx.narrow.most == 2 and not any(splits)
        assert (together.argmax(1) == alone.argmax(1)).all() and np.abs(together - alone).max() <= 1e-5
        assert (streamed.argmax(1) == alone.argmax(1)).all() and np.abs(streamed - alone).max() <= 1e-5
        lanes = engine.batcher.lane_pool(2)
    finally:
        engine.close()
    with pytest.raises(RuntimeError):  # close() shut the lanes down
        lanes.submit(int)


@pytest.mark.parametrize("version", ["trained", "calibrated"])
def test_kimchi_train_predict_on_onnx_imports_neither_torchvision_nor_fastai(version, request, tmp_path):
    """Its start-up is part of what a user waits for: the parser needs no torch at all, and the engine
    on model.onnx needs neither torchvision (which imports torch._dynamo) nor fastai, with the open-set check
    or without. (On torch it would import torchvision, for fold_batchnorm, so this also shows that it served
    from ONNX Runtime.)"""
    import subprocess

    home = request.getfixturevalue(version).home
    (tmp_path / "a.jpg").write_bytes(varied_images(1)[0])
    probe = ("import sys\nfrom training import cli\ncli.build_parser()\nparser_torch = 'torch' in sys.modules\n"
             f"code = cli.main(['--home', {str(home.root)!r}, 'predict', {str(tmp_path)!r}, '--json'])\n"
             "print('PROBE', code, parser_torch, 'torchvision' in sys.modules, 'fastai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120).stdout
    assert "PROBE 0 False False False" in out, out
    assert ('"openset": {"score"' in out) == (version == "calibrated"), out
