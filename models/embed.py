"""Image embeddings from a model version's body, and near-duplicate groups over them.

The vectors are what the trained head sees first: the body's feature map through the head's own
pooling (fastai's concat pool, max then average), L2-normalised. They come from the public runner
(models.runner) with pooled output, so images go through the engine's exact preprocessing path (decode,
EXIF, Resize(presize), area-then-bilinear to size, normalise) and a photo embeds as the bot would see it;
on the CPU the body runs on ONNX Runtime, as the engine's does, when it can. One pass over the images
(models.runner.stream); the next chunk decodes while this one runs.
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
from models.engine_config import EngineConfig, cpu_runtime_from_env, thread_plan
from models.errors import ImageRejected
from models.registry import Registry
from models.runner import Runner, stream
from models.runtimes import Output
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


def _loader(item: ImageSource) -> Callable[[], bytes]:
    if callable(item):
        return item
    if isinstance(item, (bytes, bytearray)):
        data = bytes(item)
        return lambda: data
    path = Path(item)
    return path.read_bytes


def _open_runner(source: Registry | Path | str, version: str | None, config: EngineConfig) -> Runner:
    """A pooled-output runner for `version` of a registry, or for a model folder (one holding meta.json)."""
    if not isinstance(source, Registry):
        folder = Path(source).expanduser()
        if (folder / "meta.json").is_file():
            return Runner(Registry(folder.parent), folder.name, config, Output.POOLED)
        source = Registry(folder)
    return Runner(source, source.resolve(version), config, Output.POOLED)


class Embedder:
    """A loaded version that embeds images, as many times as asked: load once, embed base and corrections."""

    def __init__(self, source: Registry | Path | str, version: str | None = "current", device: str = "cpu",
                 batch_size: int = 32) -> None:
        # batch_lanes=1: one batch at a time on all of ONNX Runtime's threads, as this pass has always run
        self.config = EngineConfig(device=device, max_batch=batch_size, cpu_runtime=cpu_runtime_from_env(),
                                   batch_lanes=1)
        self.runner = _open_runner(source, version, self.config)

    @property
    def version(self) -> str:
        return self.runner.version

    @property
    def runtime(self) -> str:
        """What runs the body: "onnx" (ONNX Runtime, the CPU's default) or "torch"."""
        return self.runner.runtime

    def embed(self, images: Sequence[ImageSource] | Iterable[ImageSource]) -> Embedded:
        """Embed every image once; unreadable ones are listed in `errors`, not raised."""
        runner = self.runner
        rows: list[torch.Tensor] = []
        index: list[int] = []
        errors: dict[int, ImageError] = {}
        with cf.ThreadPoolExecutor(thread_plan(self.config)[0], thread_name_prefix="kimchi-embed") as pool:
            for i, out in enumerate(stream(runner, (_loader(item) for item in images), pool)):
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
