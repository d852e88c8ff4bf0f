"""`model.onnx` beside a version's safe weights: the same model for ONNX Runtime, checked against torch.

On a small CPU box ONNX Runtime runs the network faster than torch eager (see bench/cpu_suite.py), so
each version also carries an ONNX export of its own weights. The export is:

* made from `model.safetensors` with BatchNorm folded into the convolutions (as the torch engine
  runs it), with a dynamic batch axis, by torch's TorchScript exporter (`dynamo=False`): it needs no
  onnxscript, works offline, and exported resnet18 in ~1 s and efficientnet_lite0 in ~2 s here,
  where the dynamo exporter took 8 and 14 s;
* checked at export against the unfolded torch model on a sample of images (the version's own
  validation images when publishing, its dataset or synthetic images otherwise), at batch n and 1:
  max |Δp| must be <= PARITY_TOLERANCE, or ArtifactError and no file;
* tagged with the sha256 of the weights it came from, so a stale or foreign model.onnx is never
  served for other weights; written atomically (temp file, fsync, rename).

Nothing here unpickles; the file is read by onnxruntime only.
"""
from __future__ import annotations

import hashlib
import io
import logging
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from models.archs import fold_batchnorm
from models.artifact import WEIGHTS, ModelMeta, Preprocessing, load_artifact
from models.atomic import atomic_write
from models.errors import ArtifactError, ImageRejected
from models.preprocess import decode_rgb, presize_array, to_batch

log = logging.getLogger(__name__)
# Tracing warns when a model computes shapes in Python (efficientnet_lite0's "same" padding). The input size
# of a version is fixed, so those values are rightly constants; the warning would only alarm the operator.
warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)

ONNX = "model.onnx"
# The bar for "the same model": probabilities within 1e-4 of torch's (measured: ~1e-6).
PARITY_TOLERANCE = 1e-4
SAMPLE_IMAGES = 8  # enough to see a wrong export; each costs a torch and an ORT forward
OPSET = 17
INPUT, OUTPUT = "input", "logits"
# Keys of the model's metadata_props; onnxruntime returns them in custom_metadata_map.
TAG_WEIGHTS = "kimchi.weights_sha256"
TAG_MAX_DP = "kimchi.max_dp"
TAG_CLASSES = "kimchi.classes"
TAG_SIZE = "kimchi.size"

# One export at a time in this process: the bot's swap and a lazy load may race, and the export
# changes torch's (process-wide) thread count while it traces.
_export_lock = threading.Lock()


@dataclass(frozen=True)
class OnnxExport:
    """What an export did: the bytes that were checked, their parity and where the sample came from."""

    data: bytes
    max_dp: float
    images: int
    source: str  # "given images", "dataset images" or "synthetic images"
    seconds: float
    written: bool


def weights_digest(folder: Path) -> str:
    """sha256 of the version's model.safetensors (~0.06 s for resnet18's 45 MB)."""
    h = hashlib.sha256()
    with open(Path(folder) / WEIGHTS, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def export_bytes(model: nn.Module, pre: Preprocessing) -> bytes:
    """`model` as ONNX bytes with a dynamic batch axis, BatchNorm folded first (in place: a deep copy of
    efficientnet_lite0 cost more than loading the weights again)."""
    folded = fold_batchnorm(model.float().cpu().eval())
    buf = io.BytesIO()
    dummy = torch.zeros((1, 3, pre.size, pre.size), dtype=torch.float32)
    # The trace runs every op once on one image, where torch's intra-op threads only add synchronisation:
    # measured on 2 busy cores, one thread exports 2-3x faster (efficientnet_lite0 2.3 -> 1.2 s of CPU,
    # resnet18 1.1 -> 0.4 s). Callers hold _export_lock, so two exports never interleave set/restore.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _trace_export(folded, dummy, buf)
    finally:
        torch.set_num_threads(threads)
    return buf.getvalue()


def _trace_export(folded: nn.Module, dummy: torch.Tensor, buf: io.BytesIO) -> None:
    torch.onnx.export(folded, (dummy,), buf, dynamo=False, input_names=[INPUT], output_names=[OUTPUT],
                      dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=OPSET,
                      do_constant_folding=True)


def with_tags(data: bytes, tags: dict[str, str]) -> bytes:
    """`data` with `tags` as the model's metadata_props (the graph is untouched)."""
    import onnx

    proto = onnx.load_from_string(data)
    onnx.helper.set_model_props(proto, tags)
    return proto.SerializeToString()


def sample_batch(images: Sequence[bytes | Path] | None, meta: ModelMeta, n: int = SAMPLE_IMAGES) -> tuple[torch.Tensor, str]:
    """The normalised batch the engine would feed for up to `n` images, and where they came from.

    Without usable `images`: the version's dataset folder (meta.dataset['path']) if it is still there,
    else synthetic smooth images, so that a version imported from elsewhere can be exported too.
    """
    pre = meta.preprocessing
    source = "given images"
    squares = _squares(images or [], pre, n)
    if not squares:
        source = "dataset images"
        squares = _squares(_dataset_sample(meta, n), pre, n)
    if not squares:
        source = "synthetic images"
        squares = _synthetic(pre, min(n, 8))
    with torch.inference_mode():
        return to_batch(torch.from_numpy(np.stack(squares)), pre).clone(), source


def _squares(images: Sequence[bytes | Path], pre: Preprocessing, n: int) -> list[np.ndarray]:
    out = []
    for item in _spread(list(images), n * 2):  # some may be unreadable; try a few more than needed
        try:
            data = item if isinstance(item, (bytes, bytearray)) else Path(item).read_bytes()
            out.append(presize_array(decode_rgb(bytes(data)), pre.presize))
        except (ImageRejected, OSError):
            continue
        if len(out) == n:
            break
    return out


def _spread(items: list, n: int) -> list:
    """Up to `n` items evenly spread over the list (the classes are usually in folder order)."""
    if len(items) <= n:
        return items
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def _dataset_sample(meta: ModelMeta, n: int) -> list[Path]:
    from models.datafiles import image_files

    path = (meta.dataset or {}).get("path")
    if not path or not Path(path).is_dir():
        return []
    try:
        return _spread(image_files(Path(path)), n * 2)
    except OSError:
        return []


def _synthetic(pre: Preprocessing, n: int) -> list[np.ndarray]:
    """Smooth colour fields with noise: photo-like statistics, deterministic."""
    rng = np.random.default_rng(1234)
    out = []
    for _ in range(n):
        coarse = torch.from_numpy(rng.uniform(0, 255, (1, 3, 6, 6)).astype(np.float32))
        smooth = torch.nn.functional.interpolate(coarse, size=(pre.presize, pre.presize), mode="bilinear",
                                                 align_corners=False)[0].permute(1, 2, 0).numpy()
        noisy = smooth + rng.normal(0, 12, smooth.shape)
        out.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return out


def torch_probabilities(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.softmax(model.float().cpu().eval()(batch).float(), dim=1)


def max_prob_difference(onnx_data: bytes, batch: torch.Tensor, reference: torch.Tensor) -> float:
    """max |Δp| between ONNX Runtime on `onnx_data` and torch's `reference` probabilities for `batch`,
    run at batch len(batch) and at 1 (the batch axis must really be dynamic)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1  # a few images once: threads would only spin
    session = ort.InferenceSession(onnx_data, options, providers=["CPUExecutionProvider"])
    x = batch.numpy()
    ours = torch.softmax(torch.from_numpy(session.run([OUTPUT], {INPUT: x})[0]), dim=1)
    single = torch.softmax(torch.from_numpy(session.run([OUTPUT], {INPUT: x[:1]})[0]), dim=1)
    delta = max(float((ours - reference).abs().max()), float((single - reference[:1]).abs().max()))
    return delta if np.isfinite(delta) else float("inf")


def export_onnx(folder: Path, images: Sequence[bytes | Path] | None = None, tolerance: float | None = None,
                write: bool = True) -> OnnxExport:
    """Export the version in `folder` (a published version or a staging folder) to ONNX, check it, write it.

    Raises ArtifactError, leaving any existing model.onnx as it was, when the export differs from torch
    by more than `tolerance` (default PARITY_TOLERANCE) in probability. A failure to *write* the
    checked file is logged and reported as `written=False`: the caller may still serve the bytes.
    """
    folder = Path(folder)
    tolerance = PARITY_TOLERANCE if tolerance is None else tolerance
    with _export_lock:
        started = time.perf_counter()
        model, meta = load_artifact(folder, device="cpu")
        batch, source = sample_batch(images, meta)
        reference = torch_probabilities(model, batch)  # the model as published, before folding
        try:
            data = export_bytes(model, meta.preprocessing)
            delta = max_prob_difference(data, batch, reference)
        except Exception as err:  # the exporter and the runtime fail in many ways; one sentence for the caller
            log.exception("ONNX export of %s failed", folder)
            raise ArtifactError(f"{folder.name} could not be exported to ONNX ({err.__class__.__name__}: {err}).") from err
        if not delta <= tolerance:
            raise ArtifactError(f"The ONNX export of {folder.name} differs from the torch model by {delta:.2g} in "
                                f"probability on {len(batch)} {source} (allowed {tolerance:g}); {ONNX} was not written.")
        data = with_tags(data, {TAG_WEIGHTS: weights_digest(folder), TAG_CLASSES: str(len(meta.vocab)),
                                TAG_SIZE: str(meta.preprocessing.size), TAG_MAX_DP: f"{delta:.3g}"})
        written = False
        if write:
            try:
                atomic_write(folder / ONNX, data)
                written = True
            except OSError as err:
                log.warning("could not write %s (%s); it will be exported again next time", folder / ONNX, err)
        seconds = time.perf_counter() - started
        log.info("exported %s to ONNX in %.1f s: max |dp| %.2g on %d %s", folder.name, seconds, delta, len(batch), source)
        return OnnxExport(data, delta, len(batch), source, seconds, written)


def onnx_problem(folder: Path, tags: dict[str, str], n_classes: int, size: int) -> str | None:
    """Why the model.onnx whose metadata is `tags` must not serve the version in `folder`, or None."""
    if tags.get(TAG_WEIGHTS) != weights_digest(folder):
        return "it was exported from other weights"
    if tags.get(TAG_CLASSES) != str(n_classes) or tags.get(TAG_SIZE) != str(size):
        return "its classes or input size do not match meta.json"
    return None
