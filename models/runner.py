"""One loaded version, public: image bytes to prepared images (`prepare`, in a decode pool), prepared images
to one answer each (`run`, the batch step), and `stream()`, the synchronous chunk-ahead loop over many images.

The classifier engine (models/engine.py) serves a Runner through its micro-batching worker
(models/batcher.py); the embeddings (models/embed.py) stream one with pooled output.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import itertools
import logging
from typing import Callable, Iterable, Iterator, Sequence

import torch

from models.artifact import ModelMeta, read_meta
from models.device import resolve_device
from models.engine_config import LANE_CHUNK, EngineConfig, batch_plan, thread_plan
from models.errors import ArtifactError, KimchiError
from models.openset import OpenSet
from models.prepare import Prepared, Preparation
from models.registry import Registry
from models.runtimes import OnnxNet, Output, TorchNet, open_onnx
from models.types import ImageError, Prediction

log = logging.getLogger(__name__)

STREAM_AHEAD = 2  # chunks per lane that stream() keeps reading and decoding ahead

# What run() gives per image: a Prediction (Output.PROBABILITIES), a float feature row (Output.POOLED), a pair
# of probability row and feature row (Output.BOTH), or the ImageError of an image that could not be read.
Answer = Prediction | torch.Tensor | tuple[torch.Tensor, torch.Tensor] | ImageError


class Runner:
    """One loaded version on one device. On the CPU the network runs on ONNX Runtime when it can
    (`config.cpu_runtime`), else on torch; either answers `output` for each image.

    Predictions carry the version's open-set verdict when it has a check (models/openset.py) and
    `config.openset` is on: the network then also answers the pooled features, from the same forward pass.
    """

    def __init__(self, registry: Registry, version: str, config: EngineConfig = EngineConfig(),
                 output: Output = Output.PROBABILITIES) -> None:
        self.device = resolve_device(config.device)
        self.config, self.version, self.output = config, version, output
        folder = registry.path(version)
        self.half = config.half == "on" or (config.half == "auto" and self.device.type == "cuda")
        channels_last = config.channels_last != "off"
        meta = read_meta(folder)
        self.openset: OpenSet | None = None
        if output is Output.PROBABILITIES and config.openset:
            try:
                self.openset = OpenSet.load(folder)
            except ArtifactError as err:  # the version still answers, as one published before the check
                log.error("%s; %s serves without its open-set check", err, version)
        computes = Output.BOTH if self.openset is not None else output
        net: TorchNet | OnnxNet | None = None
        if self._onnx_possible():
            net = open_onnx(folder, meta, computes, thread_plan(config)[1], required=config.cpu_runtime == "onnx",
                            narrow=batch_plan(config) > 1, channels_last=channels_last)
        if net is None:
            net, meta = TorchNet.load(folder, self.device, computes, self.half, channels_last)
        self.net: TorchNet | OnnxNet = net
        self.meta: ModelMeta = meta
        self.pre = meta.preprocessing
        self.preparation = Preparation(self.pre, self.device, config)
        self._warm_up()

    @property
    def runtime(self) -> str:
        """What runs the network: "onnx" (ONNX Runtime) or "torch"."""
        return self.net.runtime

    @property
    def parallel_batches(self) -> int:
        """How many batches may run() at once: one per core on ONNX Runtime, else one."""
        return batch_plan(self.config) if self.net.side_by_side else 1

    @property
    def batch_cap(self) -> int:
        """The largest batch run() gets: max_batch, or LANE_CHUNK when batches run side by side (ORT's cost
        per image is flat from batch 1 to 16, and a lane's memory arena grows with its largest batch)."""
        return min(self.config.max_batch, LANE_CHUNK) if self.parallel_batches > 1 else self.config.max_batch

    def _onnx_possible(self) -> bool:
        """Whether this runner may run on ONNX Runtime; with cpu_runtime=onnx, why not is an error."""
        if self.config.cpu_runtime == "torch" or self.device.type != "cpu":
            return False
        if self.half and self.config.cpu_runtime == "onnx":
            raise KimchiError("The CPU runtime is onnx, but bf16 (half=on) runs on torch only; use auto or torch.")
        return not self.half

    def _warm_up(self) -> None:
        # ONNX Runtime is ready after one image (its arena grows with the first larger batch, at malloc's
        # cost); torch's kernels, and cuDNN's choices on CUDA, are made per batch shape.
        for n in sorted({1} if self.runtime == "onnx" else {1, self.batch_cap}):
            squares = torch.zeros((n, self.pre.presize, self.pre.presize, 3), dtype=torch.uint8)
            x = self.preparation.normalise(squares.to(self.device))
            self.net(x, wide=True)
            if self.parallel_batches > 1:
                self.net(x, wide=False)

    # -- preparation, in the decode pool ------------------------------------------------------------
    def prepare(self, data: bytes, alone: bool = False) -> Prepared:
        """What the batch step needs of one image; `alone`: nothing else is in flight, so the latency of
        this photo matters more than the CPU it costs."""
        return self.preparation.prepare(data, alone)

    def load_and_prepare(self, load: Callable[[], bytes]) -> Prepared:
        """prepare() on what `load` reads; a read that fails is this image's ImageError."""
        return self.preparation.load_and_prepare(load)

    # -- the batch step --------------------------------------------------------------------------------
    def run(self, prepared: Sequence[Prepared], wide: bool = True) -> list[Answer]:
        """One answer per prepared image, in order; `wide`: the batch runs alone, on every thread the
        runtime has."""
        answers: list = [p if isinstance(p, ImageError) else None for p in prepared]
        batches, failed = self.preparation.batches(prepared)
        for i, error in failed.items():
            answers[i] = error
        for positions, x in batches:
            for i, answer in zip(positions, self._answers(self.net(x, wide))):
                answers[i] = answer
        return answers

    def _answers(self, out) -> list[Answer]:
        if self.output is Output.POOLED:
            return list(out.unbind(0))
        if self.output is Output.BOTH:
            return list(zip(out[0].unbind(0), out[1].unbind(0)))
        if self.openset is None:
            scores, threshold = [None] * len(out), None
        else:  # the network answered (probabilities, pooled features) from one pass
            out, pooled = out
            scores, threshold = self.openset.scores(pooled).tolist(), self.openset.threshold
        k = min(self.config.top_k, out.shape[1])
        values, indices = out.topk(k, dim=1)
        vocab = self.meta.vocab
        predictions = []
        for vals, idx, score in zip(values.tolist(), indices.tolist(), scores):
            top = tuple((vocab[j], float(v)) for v, j in zip(vals, idx))
            predictions.append(Prediction(top[0][0], top[0][1], top, self.version, openset=score, threshold=threshold))
        return predictions


def stream(runner: Runner, loaders: Iterable[Callable[[], bytes]], decode: cf.Executor,
           lanes: cf.Executor | None = None, batch_size: int | None = None) -> Iterator[Answer]:
    """One answer per image loader (e.g. a file read), in order, chunk after chunk.

    The next chunks are read and prepared on `decode` while earlier ones run through the model. Given
    `lanes` (an executor with a thread per lane) and a runner that runs batches side by side, several
    chunks run at once, narrow, one core each; else one at a time, wide, on the caller's thread.
    """
    parallel = runner.parallel_batches if lanes is not None else 1
    size = batch_size or runner.config.max_batch
    if parallel > 1:  # side by side: batch_cap, and small chunks also get every lane busy sooner
        size = min(size, runner.batch_cap)
    chunks = _chunks(loaders, size)
    in_flight: collections.deque[tuple[list[cf.Future], cf.Future | None]] = collections.deque()

    def submit() -> None:
        chunk = next(chunks, None)
        if chunk is None:
            return
        prepared = [decode.submit(runner.load_and_prepare, load) for load in chunk]
        run = None
        if parallel > 1:
            run = lanes.submit(lambda: runner.run([f.result() for f in prepared], wide=False))
        in_flight.append((prepared, run))

    for _ in range(STREAM_AHEAD * parallel + 1 if parallel > 1 else 2):
        submit()
    while in_flight:
        prepared, run = in_flight.popleft()
        if run is None:  # one batch at a time: the next chunk decodes while this one runs
            ready = [f.result() for f in prepared]
            submit()
            answers = runner.run(ready)
        else:
            answers = run.result()
            submit()
        yield from answers


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk
