"""The batched engine on a trained model: parity with fastai, bad input per image, micro-batching, Busy, swap.
The scheduling contract alone, on a fake runner: tests/test_batcher.py."""
import asyncio
import io
import shutil
import struct
import threading
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from models.engine import Classifier, EngineConfig, orient_chw
from models.errors import Busy, ImageRejected, NoModel
from models.preprocess import decode_rgb
from models.registry import Registry
from tests.imagegen import draw, encode, varied_images
from tests.modelkit import publish_relabelled


@pytest.fixture(scope="module")
def parity_reference(trained):
    """learn.predict on each upright RGB image: fastai's own answer, once per module."""
    from fastai.learner import load_learner
    from fastai.vision.core import PILImage

    learn = load_learner(trained.registry.path(trained.version) / "learner.pkl")
    images = varied_images(216)
    probs = []
    with learn.no_bar():
        for data in images:
            _, _, p = learn.predict(PILImage(decode_rgb(data)))
            probs.append(p.numpy())
    return images, np.stack(probs), [str(v) for v in learn.dls.vocab]


@pytest.mark.parametrize("decoder", ["pil", "torchvision"])
def test_parity_with_learn_predict_on_216_varied_images(trained, parity_reference, decoder):
    images, reference, vocab = parity_reference
    classifier = Classifier(trained.registry, trained.version,
                            EngineConfig(device="cpu", top_k=len(vocab), jpeg_decoder=decoder))
    results = classifier.classify_batch(images)
    classifier.close()
    assert all(r.ok for r in results)
    ours = np.array([[dict(r.top)[label] for label in vocab] for r in results])
    agreement = float((ours.argmax(1) == reference.argmax(1)).mean())
    delta = float(np.abs(ours - reference).max())
    assert agreement >= 0.99, agreement
    assert delta <= 0.02, delta
    assert reference.max(1).mean() < 0.999  # a trained, not saturated, model: differences would show


def test_orientation_matches_pillow():
    arr = (np.arange(11 * 13 * 3) % 251).astype(np.uint8).reshape(11, 13, 3)
    for orientation in range(1, 9):
        img = Image.fromarray(arr)
        exif = Image.Exif()
        exif[0x0112] = orientation
        upright = np.asarray(decode_rgb(encode(img, "PNG", exif=exif.tobytes())))
        ours = orient_chw(torch.from_numpy(arr).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
        assert np.array_equal(upright, ours), orientation


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming a huge image; the data is never reached."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _animated_gif() -> bytes:
    frames = [draw(i, (64, 48)).convert("P") for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def test_bad_images_get_their_own_error_and_the_batch_goes_on(trained):
    good = encode(draw(0, (120, 90)))
    jpeg = encode(draw(1, (300, 200), seed=9))
    batch = {
        "good": good,
        "empty": b"",
        "text": b"hello, this is not an image",
        "truncated": jpeg[: len(jpeg) // 2],
        "animated": _animated_gif(),
        "bomb": _bomb_png(30000, 30000),
        "over_cap": _bomb_png(8000, 6000),
        "tiff": encode(draw(2, (64, 48)), "TIFF"),
        "cmyk": encode(draw(3, (120, 90)).convert("CMYK"), "JPEG"),
        "good2": encode(draw(2, (90, 120)), "PNG"),
    }
    classifier = Classifier(trained.registry, trained.version, EngineConfig(device="cpu"))
    results = dict(zip(batch, classifier.classify_batch(list(batch.values()))))
    classifier.close()
    assert results["good"].label == "배추김치" and results["good2"].label == "파김치"
    assert results["cmyk"].ok  # CMYK is converted to RGB, as the import does, not refused
    expected = {"empty": "empty", "text": "not_image", "truncated": "truncated", "animated": "animated",
                "bomb": "too_large", "over_cap": "too_large", "tiff": "format"}
    for name, reason in expected.items():
        assert not results[name].ok and results[name].reason == reason, (name, results[name])
        assert results[name].message.endswith(".")


def test_phone_photo_within_default_limit(trained):
    """A 12-MP phone photo (4032x3024) passes the default pixel cap."""
    classifier = Classifier(trained.registry, trained.version, EngineConfig(device="cpu"))
    (result,) = classifier.classify_batch([encode(draw(0, (4032, 3024)), "JPEG", quality=60)])
    classifier.close()
    assert result.ok and result.label == "배추김치"


async def test_concurrent_requests_are_micro_batched(trained):
    classifier = Classifier(trained.registry, trained.version, EngineConfig(device="cpu", max_batch=16, max_wait_ms=20))
    images = [encode(draw(i % 4, (160, 120), seed=i)) for i in range(40)]
    reference = classifier.classify_batch(images)
    results = await asyncio.gather(*(classifier.classify(data) for data in images))
    classifier.close()
    assert [r.label for r in results] == [r.label for r in reference]
    assert [r.confidence for r in results] == pytest.approx([r.confidence for r in reference], abs=1e-5)
    assert sum(r.label == ("배추김치", "오이소박이", "파김치", "열무김치")[i % 4] for i, r in enumerate(results)) >= 38
    sizes = [size for size, _ in classifier.batches]
    assert sum(sizes) == 40 and max(sizes) > 1 and max(sizes) <= 16


async def test_a_lone_photo_does_not_wait_for_companions(trained):
    """max_wait only holds a decoded photo while others are still decoding; alone, it runs at once."""
    classifier = Classifier(trained.registry, trained.version, EngineConfig(device="cpu", max_wait_ms=5000))
    data = encode(draw(0, (160, 120)))
    await classifier.classify(data)  # warm
    started = time.monotonic()
    result = await classifier.classify(data)
    elapsed = time.monotonic() - started
    classifier.close()
    assert result.label == "배추김치" and elapsed < 2.5, elapsed


async def test_full_queue_raises_busy_at_once(trained):
    classifier = Classifier(trained.registry, trained.version, EngineConfig(device="cpu", queue_limit=4))
    data = encode(draw(0, (160, 120)))
    outcomes = await asyncio.gather(*(classifier.classify(data) for _ in range(30)), return_exceptions=True)
    classifier.close()
    busy = [o for o in outcomes if isinstance(o, Busy)]
    assert len(busy) == 26 and "try again" in str(busy[0])
    assert all(o.label == "배추김치" for o in outcomes if not isinstance(o, Exception))
    assert classifier.queued == 0


async def test_async_bad_image_raises_image_rejected(trained):
    classifier = Classifier(trained.registry, trained.version, EngineConfig(device="cpu"))
    with pytest.raises(ImageRejected) as err:
        await classifier.classify(b"")
    good = await classifier.classify(encode(draw(1, (120, 90))))
    classifier.close()
    assert err.value.reason == "empty" and good.label == "오이소박이"


async def test_swap_between_batches_without_failures(trained_copy):
    registry = trained_copy.registry
    v2 = publish_relabelled(registry, "v1")
    vocab = registry.meta("v1").vocab
    images = [encode(draw(i % 4, (160, 120), seed=i)) for i in range(48)]
    with Classifier(registry, "v1", EngineConfig(device="cpu", max_batch=4, max_wait_ms=5)) as classifier:
        by_v1 = [vocab.index(r.label) for r in classifier.classify_batch(images)]
        first_batch = threading.Event()
        classifier.on_batch = lambda size: first_batch.set()
        tasks = [asyncio.ensure_future(classifier.classify(data)) for data in images]
        assert await asyncio.to_thread(first_batch.wait, 30)  # the swap comes while the photos are served
        assert await classifier.aswap(v2) == v2
        results = await asyncio.gather(*tasks)
        after = await classifier.classify(images[0])
    for i, result in enumerate(results):
        expected = vocab[by_v1[i]] if result.version == "v1" else list(reversed(vocab))[by_v1[i]]
        assert result.label == expected, (i, result)
    assert after.version == v2 and classifier.version == v2
    assert {version for _, version in classifier.batches} == {"v1", v2}
    assert not classifier.worker_alive  # closed on leaving the with block


async def test_cold_start_then_first_model(trained, home):
    registry = Registry(home.models)
    classifier = Classifier(registry, "current", EngineConfig(device="cpu"), allow_empty=True)
    with pytest.raises(NoModel):
        await classifier.classify(encode(draw(0)))
    shutil.copytree(trained.registry.path(trained.version), registry.root / "v1")
    registry.promote("v1")
    assert classifier.swap("current") == "v1"
    result = await classifier.classify(encode(draw(0, (160, 120))))
    classifier.close()
    assert result.version == "v1" and result.label == "배추김치"


@pytest.mark.parametrize("presize,size", [(460, 224), (301, 128), (200, 160)])
def test_the_fast_resample_is_fastais_within_float_rounding(presize, size):
    from models.preprocess import batch_resize, fast_batch_resize

    squares = torch.randint(0, 256, (2, presize, presize, 3), dtype=torch.uint8)
    for x in (squares.permute(0, 3, 1, 2).float() / 255, squares.permute(0, 3, 1, 2).contiguous().float() / 255):
        fast = fast_batch_resize(x, size)
        assert fast.shape == (2, 3, size, size)
        assert (fast - batch_resize(x, size)).abs().max() <= 3e-5


def test_a_lone_photos_two_thread_resize_is_bit_identical():
    """The bot resizes a photo that comes alone as two halves on two threads; the pixels must be the ones a
    single resize (and so fastai's Resize) gives, for every shape the split is taken for."""
    from models.preprocess import presize_array

    for i, size in enumerate([(1280, 960), (960, 1280), (1000, 1000), (2001, 1499), (921, 920)]):
        img = Image.open(io.BytesIO(encode(draw(i % 4, size, seed=i), "JPEG"))).convert("RGB")
        whole = presize_array(img, 460, split=False)
        assert whole.shape == (460, 460, 3)
        assert np.array_equal(presize_array(img, 460, split=True), whole), size
