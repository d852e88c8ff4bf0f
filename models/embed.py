"""Image embeddings from a model version's body, and near-duplicate groups over them.

The vectors are what the trained head sees first: the body's feature map through the head's own
pooling (fastai's concat pool, max then average), L2-normalised. Images go through the engine's exact
preprocessing path (decode, EXIF, Resize(presize), area-then-bilinear to size, normalise) by reusing the
engine's runner, so a photo embeds as the bot would see it; only the last step differs: pooled features
instead of class probabilities. One pass over the images; the next chunk decodes while this one runs.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence, Union

import numpy as np
import torch

from models.archs import get_spec
from models.engine import EngineConfig, _chunks, _load_and_prepare, _Runner, cpu_runtime_from_env, thread_plan
from models.errors import ImageRejected
from models.registry import Registry
from models.types import ImageError

log = logging.getLogger(__name__)

ImageSource = Union[Path, str, bytes, Callable[[], bytes]]

# Cosine similarity at or above which two images are one near-duplicate group. Measured with
# `python bench/audit_bench.py --measure-threshold`: 4 classes x 40 pictures, each against itself resized
# to 90% and re-encoded at JPEG quality 70 ("copy"), and all distinct pairs of one class ("pair"):
#
#   model (features)                      pictures           copy min / p1 / median   pair max / p99.9 / median
#   test session's lite0, 160/64 px       photo-like 320x240   0.941 / 0.957 / 0.988    0.924 / 0.900 / 0.680
#                                         photo-like 640x480   0.972 / 0.980 / 0.994    0.916 / 0.898 / 0.677
#                                         imagegen 200x150     0.701 / 0.767 / 0.978    0.989 / 0.980 / 0.900
#   lite0 ImageNet body, 160/64 px        photo-like 320x240   0.945 / 0.961 / 0.990    0.947 / 0.941 / 0.774
#   lite0 ImageNet body, 460/224 px       photo-like 320x240   0.901 / 0.943 / 0.976    0.931 / 0.919 / 0.801
#                                         photo-like 640x480   0.828 / 0.895 / 0.966    0.935 / 0.925 / 0.808
#
# At 0.94 the session model misses no copy and joins no pair of photo-like pictures (tests/test_audit.py's
# `photo`: a shape on an uneven background among other objects); the ImageNet body joins 0.1% of pairs at
# 64 px and misses 0.6-9% of copies at 224 px. imagegen's own pictures cannot be separated by any threshold:
# they differ mainly in where the one shape sits, which global pooling ignores, while re-encoding changes
# their per-pixel noise. A pair joined wrongly costs more than a copy missed: groups chain (union-find), so
# at 5,500 images 0.4% of joined pairs (0.93 on the ImageNet body) would already weld classes together.
DEFAULT_DUPLICATE_THRESHOLD = 0.94

# Rows of the similarity matrix computed at once: 1024 x 5,500 float32 is 22 MB.
_BLOCK = 1024


@dataclass
class Embedded:
    """Embeddings of the images that could be read, and why the others could not."""

    vectors: np.ndarray  # (n_ok, dim) float32, rows of unit length
    index: np.ndarray  # position in the input of each row of `vectors`
    errors: dict[int, ImageError] = field(default_factory=dict)  # input position -> why it failed
    version: str = ""
    runtime: str = "torch"  # what ran the body: "onnx" (ONNX Runtime) or "torch"


class _EmbeddingRunner(_Runner):
    """The engine's runner with the head cut after its pooling: `run` yields feature vectors.

    Everything before the model (decode, presize, the batch resample, device moves, nvJPEG on CUDA)
    is the engine's own code, so the embedding sees the same pixels a classification would. On the CPU
    the body runs on ONNX Runtime, as the engine's does, when it can: the version's model.onnx with the
    pooled features as its output (torch eager made this pass 0.81x the engine's throughput, resnet18
    at 460/224 on a 2-core CPU; bench/audit_bench.py).
    """

    features_onnx: "_PooledOnnx | None" = None

    def __init__(self, registry: Registry, version: str, config: EngineConfig) -> None:
        super().__init__(registry, version, config)  # the engine loads torch for a runner with its own _model
        if self.device.type == "cpu" and config.cpu_runtime != "torch" and not self.half:
            self.features_onnx = _PooledOnnx.open(registry.path(version), self, config)

    def _torch_features(self, x: torch.Tensor) -> torch.Tensor:
        body, head = self.model[0], self.model[1]
        with torch.inference_mode():
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if self.half:
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    features = body(x)
            else:
                features = body(x)
            # head[0] is AdaptiveConcatPool2d and head[1] Flatten: what the classifier layers read.
            return head[1](head[0](features.float())).cpu()

    def _model(self, x: torch.Tensor, wide: bool = True) -> torch.Tensor:
        if self.features_onnx is not None:
            return self.features_onnx(x)
        return self._torch_features(x)

    def _top(self, probs: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        return list(probs.unbind(0))


class _PooledOnnx:
    """The version's model.onnx in ONNX Runtime, answering with the head's flattened pool, not logits."""

    # Largest difference from torch's features, relative to the largest feature: ONNX Runtime adds in
    # other orders (measured ~1e-6; the engine's export check allows 1e-4 on probabilities).
    TOLERANCE = 1e-3

    def __init__(self, session, output: str) -> None:
        self.session = session
        self.output = output

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from models.onnx_export import INPUT

        return torch.from_numpy(self.session.run([self.output], {INPUT: x.contiguous().numpy()})[0])

    @classmethod
    def open(cls, folder: Path, runner: "_EmbeddingRunner", config: EngineConfig) -> "_PooledOnnx | None":
        """The session, or None (the reason logged) when ONNX Runtime cannot give the same features."""
        try:
            import onnx
            import onnxruntime as ort

            from models.engine import _onnx_session, ort_options
            from models.onnx_export import ONNX
        except ImportError as err:
            log.info("embeddings run on torch (%s)", err)
            return None
        try:
            threads = thread_plan(config)[1]
            _onnx_session(folder, runner.meta, threads)  # exports model.onnx if missing or stale
            graph = onnx.load(str(folder / ONNX))
            flat = [node for node in graph.graph.node if node.op_type == "Flatten"][-1]  # the head's; bodies have none
            del graph.graph.output[:]
            graph.graph.output.append(onnx.helper.make_tensor_value_info(flat.output[0], onnx.TensorProto.FLOAT, None))
            pooled = cls(ort.InferenceSession(graph.SerializeToString(), ort_options(threads),
                                              providers=["CPUExecutionProvider"]),
                         flat.output[0])
            x = torch.randn(2, 3, runner.pre.size, runner.pre.size, generator=torch.Generator().manual_seed(0))
            reference = runner._torch_features(x)
            gap = float((pooled(x) - reference).abs().max() / reference.abs().max().clamp(min=1.0))
        except Exception:  # any failure here only costs speed
            log.warning("ONNX Runtime cannot give %s's pooled features; embedding with torch", folder.name, exc_info=True)
            return None
        if gap > cls.TOLERANCE:
            log.warning("%s's ONNX features differ from torch's by %.1e; embedding with torch", folder.name, gap)
            return None
        return pooled


def _loader(item: ImageSource) -> Callable[[], bytes]:
    if callable(item):
        return item
    if isinstance(item, (bytes, bytearray)):
        data = bytes(item)
        return lambda: data
    path = Path(item)
    return path.read_bytes


def _open_runner(source: Registry | Path | str, version: str | None, config: EngineConfig) -> _EmbeddingRunner:
    """A runner for `version` of a registry, or for a model folder (one holding meta.json) itself."""
    if not isinstance(source, Registry):
        folder = Path(source).expanduser()
        if (folder / "meta.json").is_file():
            return _EmbeddingRunner(Registry(folder.parent), folder.name, config)
        source = Registry(folder)
    return _EmbeddingRunner(source, source.resolve(version), config)


class Embedder:
    """A loaded version that embeds images, as many times as asked: load once, embed base and corrections."""

    def __init__(self, source: Registry | Path | str, version: str | None = "current", device: str = "cpu",
                 batch_size: int = 32) -> None:
        self.config = EngineConfig(device=device, max_batch=batch_size, cpu_runtime=cpu_runtime_from_env())
        self.runner = _open_runner(source, version, self.config)

    @property
    def version(self) -> str:
        return self.runner.version

    @property
    def runtime(self) -> str:
        """What runs the body: "onnx" (ONNX Runtime, the CPU's default) or "torch"."""
        return "onnx" if self.runner.features_onnx is not None else "torch"

    def embed(self, images: Sequence[ImageSource] | Iterable[ImageSource]) -> Embedded:
        """Embed every image once; unreadable ones are listed in `errors`, not raised."""
        runner, size = self.runner, self.config.max_batch
        rows: list[torch.Tensor] = []
        index: list[int] = []
        errors: dict[int, ImageError] = {}
        with cf.ThreadPoolExecutor(thread_plan(self.config)[0], thread_name_prefix="kimchi-embed") as pool:
            chunks = _chunks(enumerate(_loader(item) for item in images), size)

            def submit(chunk: list) -> list:
                return [(i, pool.submit(_load_and_prepare, runner, load)) for i, load in chunk]

            in_flight = [submit(chunk) for chunk in (next(chunks, None), next(chunks, None)) if chunk]
            while in_flight:  # the next chunk decodes while this one runs through the model
                batch = in_flight.pop(0)
                chunk = next(chunks, None)
                if chunk:
                    in_flight.append(submit(chunk))
                for (i, _), out in zip(batch, runner.run([f.result() for _, f in batch])):
                    if isinstance(out, ImageError):
                        errors[i] = out
                    else:
                        rows.append(out)
                        index.append(i)
        dim = 2 * get_spec(runner.meta.arch).n_features
        vectors = torch.stack(rows).numpy() if rows else np.zeros((0, dim), np.float32)
        vectors = (vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)).astype(np.float32)
        log.info("embedded %d images with %s on %s (%d failed)", len(rows), runner.version, self.runtime, len(errors))
        return Embedded(vectors, np.asarray(index, dtype=np.int64), errors, runner.version, self.runtime)


def embed(source: Registry | Path | str, version: str | None, images: Sequence[ImageSource] | Iterable[ImageSource],
          device: str = "cpu", batch_size: int = 32) -> Embedded:
    """Load `version` and embed every image once; unreadable ones are listed in `errors`, not raised."""
    return Embedder(source, version, device, batch_size).embed(images)


def embeddings(source: Registry | Path | str, version: str | None, images: Sequence[ImageSource],
               device: str = "cpu", batch_size: int = 32) -> np.ndarray:
    """(n, dim) float32 unit vectors, one per image in order; ImageRejected names the first bad image."""
    result = embed(source, version, images, device=device, batch_size=batch_size)
    if result.errors:
        i, err = min(result.errors.items())
        raise ImageRejected(err.reason, f"Image {i + 1} could not be embedded: {err.message}")
    return result.vectors


def similar_pairs(vectors: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) whose cosine similarity is >= threshold, in row blocks of the Gram matrix.

    Exact and O(n^2 d), which is fine at this project's size: see bench/audit_bench.py for 5,500 images.
    """
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    firsts, seconds = [np.zeros(0, np.int32)], [np.zeros(0, np.int32)]
    for start in range(0, len(v), _BLOCK):
        sims = v[start:start + _BLOCK] @ v.T
        rows, cols = np.nonzero(sims >= threshold)
        rows = rows.astype(np.int32) + start
        keep = cols > rows
        firsts.append(rows[keep])
        seconds.append(cols[keep].astype(np.int32))
    return np.concatenate(firsts), np.concatenate(seconds)


def near_duplicate_groups(vectors: np.ndarray, threshold: float = DEFAULT_DUPLICATE_THRESHOLD) -> list[int]:
    """A group id per image: images joined by any chain of pairs with cosine similarity >= threshold.

    Ids count from 0 in order of each group's first image; an image without near-duplicates has a
    group of its own. `vectors` must be unit rows (as `embeddings` returns them). The union of the
    pairs is scipy's connected components, in C: a Python union-find took 32 s on a set where every
    pair was similar.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(vectors)
    if n == 0:
        return []
    first, second = similar_pairs(vectors, threshold)
    graph = coo_matrix((np.ones(len(first), np.int8), (first, second)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    _, first_seen, renumbered = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first_seen))  # component -> its rank by first image
    return order[renumbered].tolist()
