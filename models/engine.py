"""The batched classifier engine shared by the bot and the CLI.

Two ways in:

* `classify_batch(images)` / `classify_stream(loaders)`: synchronous, on the caller's thread, for
  the CLI and tests; decode of the next chunk overlaps inference of this one.
* `await classify(image_bytes)`: for the bot. Requests from concurrent callers are queued,
  micro-batched and run on one worker thread that owns the model (the "GPU worker executor");
  decoding starts in a small thread pool as soon as a request arrives. The event loop only
  enqueues and awaits. Past `queue_limit` waiting images, `classify` raises `Busy` at once.

`swap(version)` loads another version beside the serving one and switches between batches, so a
batch never mixes models and every result names the version that produced it.

On the CPU the network runs on ONNX Runtime when it can (`cpu_runtime`): the version's `model.onnx`,
exported from the same weights and checked against torch (models/onnx_export.py), made on first load
when a version lacks it. Everything before the network (decode, Resize, the batch resample) is the same
code either way, so the pixels the model sees do not depend on the runtime.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
import itertools
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from models.archs import fold_batchnorm
from models.device import resolve_device, usable_cpus
from models.artifact import ModelMeta, load_artifact, read_meta
from models.errors import ArtifactError, Busy, EngineCrashed, ImageRejected, KimchiError, NoModel
from models.preprocess import ImageLimits, crop_box, decode_rgb, exif_orientation, open_checked, presize_array, to_batch
from models.registry import Registry
from models.resample import pil_bilinear
from models.types import CPU_RUNTIMES, ImageError, Prediction, Result

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """How the engine runs. Defaults suit the bot on a small CPU box and a GPU server alike."""

    device: str = "auto"  # auto | cpu | cuda
    max_batch: int = 32
    max_wait_ms: float = 2.0  # how long a decoded request may wait for companions still decoding
    queue_limit: int = 256  # waiting images beyond which classify() raises Busy
    top_k: int = 3
    decode_threads: int = 0  # 0: chosen from the CPU count
    limits: ImageLimits = field(default_factory=ImageLimits)
    half: str = "auto"  # auto | on | off: bf16 autocast (auto: on CUDA only)
    channels_last: str = "auto"  # auto | on | off (auto: on; measured faster on CUDA and on this AVX2 CPU)
    # auto: nvJPEG (torchvision.io.decode_jpeg on the GPU) for JPEGs on CUDA, Pillow with DCT draft on the
    # CPU; "torchvision" forces the tensor path on any device (tests run the GPU path's logic on the CPU);
    # "pil" forces Pillow everywhere.
    jpeg_decoder: str = "auto"
    # Pillow's JPEG draft mode (DCT downscale before the resize) is faster, but feeds the model other
    # pixels than fastai's Resize does: measured up to 0.3 of probability on borderline images. Off by default.
    draft: bool = False
    # What runs the network on the CPU: "onnx" (ONNX Runtime on the version's model.onnx, made if missing;
    # an error if that cannot be done), "torch", or "auto" (onnx when it can, else torch, with the reason
    # logged). Ignored on CUDA.
    cpu_runtime: str = "auto"
    runtime_threads: int = 0  # ONNX Runtime's intra-op threads for a batch that runs alone; 0: see thread_plan()
    # Batches ONNX Runtime may run at once on the CPU, one thread each; 0: see batch_plan(). 1: one batch at
    # a time on runtime_threads threads (how torch and CUDA always run).
    batch_lanes: int = 0


LANE_CHUNK = 8  # the largest batch when batches run side by side
MAX_LANES = 8  # the most batches side by side, whatever the core count
STREAM_AHEAD = 2  # chunks per lane that classify_stream keeps reading and decoding ahead
# ORT's intra-op workers spin between ops by default; here they would burn the cores the decode threads
# need (measured: torch's spinning OpenMP threads cost 5 ms -> 79 ms of CPU for one resample on a busy host).
ORT_SPINNING = "0"


def cpu_runtime_from_env() -> str:
    """KIMCHI_CPU_RUNTIME for the processes that are not the bot: `kimchi-train predict`, and the holdout
    scoring and audit of a retrain (the bot reads it with its settings, .env included, and hands it to
    the trainer it starts). Unset is auto; a value that is not a runtime is one sentence."""
    value = os.environ.get("KIMCHI_CPU_RUNTIME", "").strip() or "auto"
    if value not in CPU_RUNTIMES:
        raise KimchiError(f"KIMCHI_CPU_RUNTIME must be one of {', '.join(CPU_RUNTIMES)}, not '{value}'.")
    return value


def thread_plan(config: EngineConfig, cpus: int | None = None) -> tuple[int, int]:
    """(decode pool threads, ONNX Runtime intra-op threads for a batch that runs alone) for this machine:
    by default half the cores decode and a lone batch may use all of them; on 2 cores, 1 + 2.

    Why, measured on 2 cores with resnet18 at 460/224 and 1280x960 JPEGs (bench/cpu_suite.py --thread-grid):
    an image costs ~20 ms of CPU to decode and resample and ~41 ms in the network on one ORT thread, so the
    network is 2/3 of the work. A lone photo's network time drops from 41 to 27 ms on two ORT threads, which
    is what a user waiting for one answer feels. Under load, see batch_plan(). A wide batch runs only with
    nothing beside it, so its workers spin for the length of its run (see ort_options); a single session
    with no lanes beside it shares the cores with the decoders, so its workers sleep between ops.
    """
    cpus = cpus or usable_cpus()
    decode = config.decode_threads or max(1, min(8, cpus // 2))
    runtime = config.runtime_threads or cpus
    return decode, runtime


def batch_plan(config: EngineConfig, cpus: int | None = None) -> int:
    """How many batches ONNX Runtime runs at once under load, each on one thread of its own: one per core.

    One batch on all the cores loses to barriers: each ORT op waits for its slowest thread, and on a
    2-core box one of the two is often descheduled for a decoder, so the engine peaked near 24 img/s with
    ~60 ms of CPU per image (2 x 1000/60 = 33 possible). Independent single-threaded batches have no
    barrier to wait at: with 1 decode thread and 2 batch threads the scheduler shares the cores 1/3 : 2/3,
    which is the decode : network split of the work. Measured in one run: 24.2 -> 30.4 img/s; resident
    memory unchanged, as batches side by side are capped at LANE_CHUNK images (see _Runner.batch_cap).
    At most MAX_LANES: each lane's batch holds its own activations in ORT's arena.
    """
    cpus = cpus or usable_cpus()
    return config.batch_lanes or min(cpus, MAX_LANES)


# ----------------------------------------------------------------------------------------------
# Preparation: what happens to one image before the batch step, in the decode pool.

@dataclass
class _Square:
    """A decoded image, already Resize(presize)d on the CPU: uint8 (P, P, 3)."""

    array: np.ndarray


@dataclass
class _Ready:
    """A CPU-engine image already resampled and normalised in the decode pool: float (3, S, S)."""

    tensor: torch.Tensor


@dataclass
class _Jpeg:
    """A JPEG whose header checked out, left for nvJPEG in the batch step."""

    data: bytes
    orientation: int
    size: tuple[int, int]


_Prepared = _Square | _Ready | _Jpeg | ImageError


def orient_chw(x: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation to a (C, H, W) tensor, as PIL's ImageOps.exif_transpose does."""
    if orientation == 2:
        return x.flip(-1)
    if orientation == 3:
        return x.flip(-1, -2)
    if orientation == 4:
        return x.flip(-2)
    if orientation == 5:
        return x.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(x, -1, dims=(-2, -1))
    if orientation == 7:
        return x.transpose(-2, -1).flip(-1, -2)
    if orientation == 8:
        return torch.rot90(x, 1, dims=(-2, -1))
    return x


class _Runner:
    """One loaded version on one device: turns prepared images into results."""

    def __init__(self, registry: Registry, version: str, config: EngineConfig) -> None:
        self.device = resolve_device(config.device)
        self.config = config
        self.version = version
        folder = registry.path(version)
        cuda = self.device.type == "cuda"
        self.half = config.half == "on" or (config.half == "auto" and cuda)
        self.channels_last = config.channels_last != "off"
        self.model: torch.nn.Module | None = None
        self.onnx: _OnnxModel | None = None
        meta = read_meta(folder)
        if self._onnx_possible():
            self.onnx = _open_onnx(folder, meta, thread_plan(config)[1], required=config.cpu_runtime == "onnx",
                                   narrow=batch_plan(config) > 1)
        if self.onnx is None:
            model, meta = load_artifact(folder, device=self.device)
            model = fold_batchnorm(model)
            if self.channels_last:
                model = model.to(memory_format=torch.channels_last)
            self.model = model
        self.meta: ModelMeta = meta
        self.pre = meta.preprocessing
        # Resize a lone photo's square as two halves on two threads: 8 -> 6.4 ms of latency, but 7.6 ->
        # 11.7 ms of CPU, so never under load (prepare's `alone`) nor in a stream.
        self.split_resize = usable_cpus() > 1
        self.gpu_decode = config.jpeg_decoder == "torchvision" or (config.jpeg_decoder == "auto" and cuda)
        self._warm_up()

    @property
    def runtime(self) -> str:
        return "onnx" if self.onnx is not None else "torch"

    @property
    def parallel_batches(self) -> int:
        """How many batches may run() at once: one per core on ONNX Runtime, else one."""
        return batch_plan(self.config) if self.onnx is not None and self.onnx.narrow is not None else 1

    def _onnx_possible(self) -> bool:
        """Whether this runner may serve from ONNX Runtime; with cpu_runtime=onnx, why not is an error."""
        if self.config.cpu_runtime == "torch" or self.device.type != "cpu":
            return False
        why_not = None
        if self.half:
            why_not = "bf16 (half=on) runs on torch only"
        elif type(self)._model is not _Runner._model:  # e.g. models.embed cuts the head: it needs the torch module
            why_not = f"{type(self).__name__} runs its own torch model"
        if why_not and self.config.cpu_runtime == "onnx":
            raise KimchiError(f"The CPU runtime is onnx, but {why_not}; use auto or torch.")
        return why_not is None

    @property
    def batch_cap(self) -> int:
        """The largest batch run() gets: max_batch, or LANE_CHUNK when batches run side by side (ORT's cost
        per image is flat from batch 1 to 16, and a lane's memory arena grows with its largest batch)."""
        return min(self.config.max_batch, LANE_CHUNK) if self.parallel_batches > 1 else self.config.max_batch

    def _warm_up(self) -> None:
        # ONNX Runtime is ready after one image (its arena grows with the first larger batch, at malloc's
        # cost); torch's kernels, and cuDNN's choices on CUDA, are made per batch shape.
        for n in sorted({1} if self.onnx is not None else {1, self.batch_cap}):
            squares = torch.zeros((n, self.pre.presize, self.pre.presize, 3), dtype=torch.uint8)
            self._forward(squares.to(self.device))
            if self.parallel_batches > 1:
                self._forward(squares, wide=False)

    # -- preparation, in the decode pool ------------------------------------------------------
    def prepare(self, data: bytes, alone: bool = False) -> _Prepared:
        """What the batch step needs of one image; `alone`: nothing else is in flight, so the latency of
        this photo matters more than the CPU it costs."""
        try:
            if self.gpu_decode:
                img = open_checked(data, self.config.limits)
                if img.format == "JPEG" and img.mode in ("RGB", "L"):  # CMYK and the rest: Pillow
                    return _Jpeg(data, exif_orientation(img), img.size)
            square = self._decode_and_presize(data, split=alone and self.split_resize)
            if self.device.type == "cpu":
                # On the CPU the whole per-image pipeline runs here, in parallel threads, leaving the
                # worker only the model.
                with torch.inference_mode():
                    return _Ready(to_batch(torch.from_numpy(square)[None], self.pre)[0])
            return _Square(square)
        except ImageRejected as err:
            return ImageError(err.reason, err.detail)

    def _decode_and_presize(self, data: bytes, split: bool = False) -> np.ndarray:
        img = decode_rgb(data, self.config.limits, draft_to=self.pre.presize if self.config.draft else None)
        return presize_array(img, self.pre.presize, split=split)

    # -- the batch step, on the worker or the caller's thread --------------------------------
    def run(self, prepared: Sequence[_Prepared], wide: bool = True) -> list[Result]:
        """Results for prepared images; `wide`: the batch runs alone, on every thread the runtime has."""
        results: list[Result | None] = [p if isinstance(p, ImageError) else None for p in prepared]
        squares: list[tuple[int, torch.Tensor]] = []
        jpegs = [(i, p) for i, p in enumerate(prepared) if isinstance(p, _Jpeg)]
        if jpegs:
            for i, out in zip((i for i, _ in jpegs), self._decode_tensors([p for _, p in jpegs])):
                if isinstance(out, ImageError):
                    results[i] = out
                else:
                    squares.append((i, out))
        cpu = [(i, p.array) for i, p in enumerate(prepared) if isinstance(p, _Square)]
        if cpu:
            host = torch.from_numpy(np.stack([a for _, a in cpu]))  # (B, P, P, 3) uint8
            if self.device.type == "cuda":
                host = host.pin_memory().to(self.device, non_blocking=True)
            squares.extend((i, t) for (i, _), t in zip(cpu, host.permute(0, 3, 1, 2).unbind(0)))
        if squares:
            order = [i for i, _ in squares]
            probs = self._forward(torch.stack([t for _, t in squares]), wide)
            for i, p in zip(order, self._top(probs)):
                results[i] = p
        ready = [(i, p.tensor) for i, p in enumerate(prepared) if isinstance(p, _Ready)]
        if ready:
            probs = self._model(torch.stack([t for _, t in ready]), wide)
            for (i, _), p in zip(ready, self._top(probs)):
                results[i] = p
        return results  # type: ignore[return-value]

    def _forward(self, squares: torch.Tensor, wide: bool = True) -> torch.Tensor:
        """uint8 presized squares (B, 3, P, P) or (B, P, P, 3) on the device to probabilities on the CPU."""
        with torch.inference_mode():
            return self._model(to_batch(squares, self.pre), wide)

    def _model(self, x: torch.Tensor, wide: bool = True) -> torch.Tensor:
        """A normalised float batch to probabilities on the CPU."""
        with torch.inference_mode():
            if self.onnx is not None:
                return torch.softmax(self.onnx(x, wide), dim=1)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if self.half:
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    logits = self.model(x)
            else:
                logits = self.model(x)
            return torch.softmax(logits.float(), dim=1).cpu()

    def _top(self, probs: torch.Tensor) -> list[Prediction]:
        k = min(self.config.top_k, probs.shape[1])
        values, indices = probs.topk(k, dim=1)
        vocab = self.meta.vocab
        out = []
        for vals, idx in zip(values.tolist(), indices.tolist()):
            top = tuple((vocab[j], float(v)) for v, j in zip(vals, idx))
            out.append(Prediction(top[0][0], top[0][1], top, self.version))
        return out

    def _decode_tensors(self, jpegs: list[_Jpeg]) -> list[torch.Tensor | ImageError]:
        """torchvision's decode_jpeg on the engine's device (nvJPEG on CUDA), in one batch; an image it
        rejects goes through Pillow instead. Returns presized uint8 (3, P, P) tensors."""
        from torchvision.io import ImageReadMode, decode_jpeg

        raw = [torch.frombuffer(bytearray(j.data), dtype=torch.uint8) for j in jpegs]
        try:
            decoded: list[torch.Tensor | None] = list(decode_jpeg(raw, mode=ImageReadMode.RGB, device=self.device))
        except Exception:
            decoded = []
            for r in raw:
                try:
                    decoded.append(decode_jpeg(r, mode=ImageReadMode.RGB, device=self.device))
                except Exception:
                    decoded.append(None)
        upright = {i: orient_chw(img, j.orientation) for i, (j, img) in enumerate(zip(jpegs, decoded)) if img is not None}
        out: list[torch.Tensor | ImageError | None] = [None] * len(jpegs)
        for i, square in self._presize_tensors(upright).items():
            out[i] = square
        for i, img in enumerate(decoded):
            if img is None:
                fallback = self.prepare_on_cpu(jpegs[i].data)
                out[i] = fallback if isinstance(fallback, ImageError) else \
                    torch.from_numpy(fallback).to(self.device).permute(2, 0, 1)
        return out  # type: ignore[return-value]

    def prepare_on_cpu(self, data: bytes) -> np.ndarray | ImageError:
        try:
            return self._decode_and_presize(data)
        except ImageRejected as err:
            return ImageError(err.reason, err.detail)

    def _presize_tensors(self, images: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Resize(presize) on tensors: fastai's crop, then Pillow's bilinear resize bit for bit.
        Images of one size (Telegram's are mostly 1280x960) are resized together, in chunks."""
        p = self.pre.presize
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in images.items():
            groups.setdefault(tuple(img.shape[-2:]), []).append(i)
        out = {}
        for (h, w), members in groups.items():
            left, top, right, bottom = crop_box(w, h, p)
            for start in range(0, len(members), 32):  # bounds the int32 working set
                chunk = members[start:start + 32]
                crops = torch.stack([images[i][:, top:bottom, left:right] for i in chunk])
                for i, square in zip(chunk, pil_bilinear(crops, p, p)):
                    out[i] = square
        return out


# ----------------------------------------------------------------------------------------------

@dataclass
class _Job:
    data: bytes
    runner: "_Runner"  # the version whose preprocessing `prepared` follows
    prepared: cf.Future
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


_STOP = object()


class Classifier:
    """Loads a registry version (or `current`) from the safe artifact and classifies image bytes."""

    def __init__(self, registry: Registry | Path | str, version: str | None = "current",
                 config: EngineConfig = EngineConfig(), allow_empty: bool = False) -> None:
        self.registry = registry if isinstance(registry, Registry) else Registry(Path(registry))
        self.config = config
        resolve_device(config.device)  # fail early, with a sentence, on a bad device
        if config.cpu_runtime not in CPU_RUNTIMES:
            raise KimchiError(f"Unknown CPU runtime '{config.cpu_runtime}'; use {', '.join(CPU_RUNTIMES)}.")
        threads = thread_plan(config)[0]
        self._pool = cf.ThreadPoolExecutor(threads, thread_name_prefix="kimchi-decode")
        self._runner: _Runner | None = None
        try:
            self._runner = _Runner(self.registry, self.registry.resolve(version), config)
        except NoModel:
            if not allow_empty:
                raise
            log.warning("no model yet: the classifier will answer NoModel until one is promoted")
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._worker_lock = threading.Lock()
        self._lanes: cf.ThreadPoolExecutor | None = None  # threads that run batches side by side (batch_plan)
        self._lanes_busy = 0
        self._lanes_free = threading.Condition()
        self._closed = False
        self.crashes = 0
        self.batches: list[tuple[int, str]] = []  # (size, version) of recent worker batches, for stats
        # Called on the worker thread with each batch's size, after its results are delivered (bot metrics).
        self.on_batch: Callable[[int], None] | None = None

    # -- what it serves ------------------------------------------------------------------------
    @property
    def version(self) -> str | None:
        runner = self._runner
        return runner.version if runner else None

    @property
    def meta(self) -> ModelMeta | None:
        runner = self._runner
        return runner.meta if runner else None

    @property
    def runtime(self) -> str | None:
        """What runs the network: "onnx" (ONNX Runtime) or "torch"; None without a model."""
        runner = self._runner
        return runner.runtime if runner else None

    @property
    def device(self) -> str:
        runner = self._runner
        return str(runner.device) if runner else str(resolve_device(self.config.device))

    def _require(self) -> _Runner:
        runner = self._runner
        if runner is None:
            raise NoModel()
        return runner

    # -- synchronous API -------------------------------------------------------------------------
    def classify_batch(self, images: Sequence[bytes]) -> list[Result]:
        """One result per image, in order: a Prediction, or an ImageError for that image alone."""
        return list(self.classify_stream([(lambda data=data: data) for data in images]))

    def classify_stream(self, loaders: Iterable[Callable[[], bytes]], batch_size: int | None = None) -> Iterator[Result]:
        """Results in order for a long stream of image loaders (e.g. file reads), chunk after chunk.

        The next chunks are read and decoded in the pool while earlier ones run through the model; on
        ONNX Runtime with several cores, several chunks run through it at once, one core each.
        """
        runner = self._require()
        lanes = runner.parallel_batches
        size = batch_size or self.config.max_batch
        if lanes > 1:  # side by side: batch_cap, and small chunks also get every lane busy sooner
            size = min(size, runner.batch_cap)
        chunks = _chunks(loaders, size)
        in_flight: collections.deque[tuple[list[cf.Future], cf.Future | None]] = collections.deque()

        def submit() -> None:
            chunk = next(chunks, None)
            if chunk is None:
                return
            prepared = [self._pool.submit(_load_and_prepare, runner, load) for load in chunk]
            run = None
            if lanes > 1:
                run = self._lane_pool(lanes).submit(lambda: runner.run([f.result() for f in prepared], wide=False))
            in_flight.append((prepared, run))

        for _ in range(STREAM_AHEAD * lanes + 1 if lanes > 1 else 2):
            submit()
        while in_flight:
            prepared, run = in_flight.popleft()
            if run is None:  # one batch at a time: the next chunk decodes while this one runs
                ready = [f.result() for f in prepared]
                submit()
                results = runner.run(ready)
            else:
                results = run.result()
                submit()
            yield from results

    # -- asynchronous API ------------------------------------------------------------------------
    async def classify(self, data: bytes) -> Prediction:
        """The prediction for one image; raises ImageRejected, Busy, NoModel or EngineCrashed."""
        runner = self._require()
        if self._closed:
            raise KimchiError("The classifier is shut down.")
        with self._pending_lock:
            if self._pending >= self.config.queue_limit:
                raise Busy(self._pending)
            self._pending += 1
        loop = asyncio.get_running_loop()
        job = _Job(data, runner, self._submit_prepare(runner, data), loop.create_future(), loop)
        self._ensure_worker()
        self._queue.put(job)
        self._wake.set()
        result = await job.future
        if isinstance(result, ImageError):
            raise ImageRejected(result.reason, result.message)
        return result

    def _submit_prepare(self, runner: "_Runner", data: bytes) -> cf.Future:
        future = self._pool.submit(runner.prepare, data, self._pending <= 1)
        future.add_done_callback(lambda _: self._wake.set())
        return future

    @property
    def worker_alive(self) -> bool:
        """False once closed, or while the worker thread is dead (the next classify() starts a new one)."""
        worker = self._worker
        return not self._closed and (worker is None or worker.is_alive())

    def _report_batch(self, size: int) -> None:
        hook = self.on_batch
        if hook is None:
            return
        try:
            hook(size)
        except Exception:  # a metrics hook must never take the worker down
            log.exception("on_batch hook failed")

    @property
    def queued(self) -> int:
        return self._pending

    def _ensure_worker(self) -> None:
        with self._worker_lock:
            if self._worker is None or not self._worker.is_alive():
                if self._worker is not None:
                    self.crashes += 1
                    log.error("classifier worker was found dead; starting a new one")
                self._worker = threading.Thread(target=self._work, name="kimchi-engine", daemon=True)
                self._worker.start()

    def _work(self) -> None:
        """The worker loop: run the images that are decoded, in batches, while the pool decodes the rest.
        On ONNX Runtime with several cores, a batch runs on a lane thread and the worker gathers the next
        one: up to parallel_batches at once, narrow, and a batch with nothing beside it or behind it wide."""
        pending: list[_Job] = []
        stopping = False
        while True:
            batch, stopping = self._next_batch(pending, stopping)
            if not batch:
                self._wait_lanes(lambda n: n == 0)
                return
            runner = self._runner  # read once: the whole batch runs on one version
            if runner is not None and len(batch) > runner.batch_cap:  # swapped to a version with a smaller cap
                pending[:0], batch = batch[runner.batch_cap:], batch[:runner.batch_cap]
            lanes = runner.parallel_batches if runner is not None else 1
            if lanes == 1:
                self._run_batch(runner, batch, wide=True)
                continue
            self._wait_lanes(lambda n: n < lanes)
            with self._lanes_free:
                wide = self._lanes_busy == 0 and not pending
                self._lanes_busy += 1
            try:
                self._lane_pool(lanes).submit(self._run_lane, runner, batch, wide)
            except RuntimeError:  # the pool was shut down under us (close() timed out): run it here
                self._run_lane(runner, batch, wide)

    def _run_lane(self, runner: "_Runner | None", batch: list[_Job], wide: bool) -> None:
        try:
            self._run_batch(runner, batch, wide)
        finally:
            with self._lanes_free:
                self._lanes_busy -= 1
                self._lanes_free.notify_all()

    def _wait_lanes(self, ok: Callable[[int], bool]) -> None:
        with self._lanes_free:
            self._lanes_free.wait_for(lambda: ok(self._lanes_busy))

    def _lane_pool(self, lanes: int) -> cf.ThreadPoolExecutor:
        with self._worker_lock:
            if self._lanes is None:
                if self._closed:  # close() has shut the lanes down: a late batch runs on its caller
                    raise RuntimeError("the classifier is closed")
                self._lanes = cf.ThreadPoolExecutor(lanes, thread_name_prefix="kimchi-batch")
            return self._lanes

    def _run_batch(self, runner: "_Runner | None", batch: list[_Job], wide: bool) -> None:
        try:
            if runner is None:
                raise NoModel()
            results: list = runner.run([self._prepared(j) for j in batch], wide=wide)
            self.batches.append((len(batch), runner.version))
            del self.batches[:-1000]
        except Exception as err:  # the worker survives anything one batch does
            self.crashes += 1
            log.exception("classifier worker failed on a batch of %d; restarting it", len(batch))
            failure = err if isinstance(err, NoModel) else EngineCrashed(
                "The classifier failed on this batch and was restarted; please send the photo again.")
            results = [failure] * len(batch)
        for job, result in zip(batch, results):
            self._deliver(job, result)
        self._report_batch(len(batch))

    def _next_batch(self, pending: list[_Job], stopping: bool) -> tuple[list[_Job], bool]:
        """Up to batch_cap decoded jobs, oldest first: once one is ready, wait at most max_wait for
        companions. Undecoded jobs stay pending, so the model never idles on a slow decode.
        Returns ([], True) when stopped and nothing is left."""
        first_ready: float | None = None
        while True:
            self._wake.clear()
            stopping = self._drain(pending) or stopping
            if not pending:
                if stopping:
                    return [], True
                self._wake.wait()
                continue
            runner = self._runner
            cap = runner.batch_cap if runner is not None else self.config.max_batch
            for job in pending:  # prepared for a version swapped out since: prepare again
                if runner is not None and job.runner is not runner:
                    job.runner, job.prepared = runner, self._submit_prepare(runner, job.data)
            ready = [j for j in pending if j.prepared.done()]
            now = time.monotonic()
            if ready and first_ready is None:
                first_ready = now
            waited = first_ready is not None and now - first_ready >= self.config.max_wait_ms / 1000
            # Nothing else is decoding: a companion could only be a photo not sent yet, so waiting for
            # one would only delay this one (2 ms of a single photo's latency). Under a burst, photos
            # that arrive while this batch runs make the next one.
            alone = len(ready) == len(pending)
            if len(ready) >= cap or (ready and (waited or stopping or alone)):
                batch = ready[:cap]
                taken = set(map(id, batch))
                pending[:] = [j for j in pending if id(j) not in taken]
                return batch, stopping
            timeout = None if first_ready is None else max(0.0, first_ready + self.config.max_wait_ms / 1000 - now)
            self._wake.wait(timeout)

    def _drain(self, pending: list[_Job]) -> bool:
        """Move everything queued into `pending`; True once the stop marker was seen."""
        stop = False
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return stop
            if job is _STOP:
                stop = True
            else:
                pending.append(job)

    @staticmethod
    def _prepared(job: _Job) -> _Prepared:
        try:
            return job.prepared.result()
        except Exception as err:  # prepare() turns known failures into ImageError; this is the rest
            log.exception("image preparation failed")
            return ImageError("truncated", f"The image could not be decoded ({err.__class__.__name__}).")

    def _deliver(self, job: _Job, result: object) -> None:
        with self._pending_lock:
            self._pending -= 1

        def settle() -> None:
            if job.future.done():
                return
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)

        try:
            job.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the caller's loop is closed; nobody is waiting any more
            pass

    # -- model swap ------------------------------------------------------------------------------
    def swap(self, version: str = "current") -> str:
        """Load `version` beside the serving model, then switch between batches. Returns its name."""
        name = self.registry.resolve(version)
        current = self._runner
        if current is not None and current.version == name:
            return name
        runner = _Runner(self.registry, name, self.config)
        self._runner = runner
        log.info("classifier now serves %s (was %s)", name, current.version if current else "nothing")
        return name

    async def aswap(self, version: str = "current") -> str:
        """swap() off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, self.swap, version)

    def close(self) -> None:
        """Finish queued work, stop the worker, its batch lanes and the decode pool."""
        if self._closed:
            return
        self._closed = True
        worker = self._worker
        if worker is not None and worker.is_alive():
            self._queue.put(_STOP)
            self._wake.set()
            worker.join(timeout=30)
        with self._worker_lock:
            lanes, self._lanes = self._lanes, None
        if lanes is not None:
            lanes.shutdown(wait=True)
        self._pool.shutdown(wait=True)


# ----------------------------------------------------------------------------------------------
# ONNX Runtime on the CPU

class _OnnxModel:
    """A version's model.onnx in ONNX Runtime: a normalised float batch to logits. `wide` runs a batch
    on every intra-op thread (a lone batch); `narrow`, when there, on the calling thread alone, so that
    several batches can run at once (see batch_plan)."""

    def __init__(self, wide, narrow=None) -> None:
        self.wide = wide
        self.narrow = narrow

    def __call__(self, x: torch.Tensor, wide: bool = True) -> torch.Tensor:
        from models.onnx_export import INPUT, OUTPUT

        session = self.wide if wide or self.narrow is None else self.narrow
        return torch.from_numpy(session.run([OUTPUT], {INPUT: x.contiguous().numpy()})[0])


def _open_onnx(folder: Path, meta: ModelMeta, threads: int, required: bool, narrow: bool = False) -> _OnnxModel | None:
    """The version's ONNX model, exported now if missing or unusable; None (reason logged) when it cannot
    be had and it is not `required`. With `narrow`, also a one-thread session for parallel batches."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        if required:
            raise KimchiError("The CPU runtime is onnx, but onnxruntime is not installed; "
                              "pip install onnxruntime, or use auto or torch.") from None
        log.info("onnxruntime is not installed: %s runs on torch", folder.name)
        return None
    try:
        if narrow and threads > 1:
            return _OnnxModel(*_onnx_sessions(folder, meta, [ort_options(threads, alone=True), ort_options(1)]))
        return _OnnxModel(*_onnx_sessions(folder, meta, [ort_options(threads)]))
    except Exception as err:
        if required:
            detail = str(err) if isinstance(err, KimchiError) else f"{err.__class__.__name__}: {err}"
            raise ArtifactError(f"{folder.name} cannot run on ONNX Runtime ({detail.rstrip('.')}); "
                                f"use the CPU runtime auto or torch.") from err
        log.error("ONNX Runtime cannot serve %s; serving it with torch", folder.name, exc_info=True)
        return None


def ort_options(threads: int, alone: bool = False):
    """ONNX Runtime's session options as the engine plans them: `threads` intra-op threads, sequential,
    quiet. Idle threads sleep rather than spin, as they share the cores with the decoders; but a session
    that only runs batches with nothing beside them (`alone`: the wide one when lanes exist) spins
    during a run and stops when it returns. Measured for one photo with resnet18 on 2 threads: 47 ms
    sleeping between ops, 27 ms spinning; and 0.1 ms of CPU in the 100 ms after the run, where spinning
    without the stop burns 41 ms."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if alone else ORT_SPINNING)
    if alone:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


def _onnx_session(folder: Path, meta: ModelMeta, threads: int):
    return _onnx_sessions(folder, meta, [ort_options(threads)])[0]


def _onnx_sessions(folder: Path, meta: ModelMeta, options: Sequence) -> list:
    """One session per entry of `options` (see ort_options) on the version's checked model.onnx,
    exported first when it is missing or does not match the version."""
    import onnxruntime as ort

    from models.onnx_export import ONNX, export_onnx, onnx_problem

    path = folder / ONNX
    source: str | bytes | None = None
    if path.is_file():
        try:
            session = ort.InferenceSession(str(path), options[0], providers=["CPUExecutionProvider"])
            problem = onnx_problem(folder, session.get_modelmeta().custom_metadata_map, len(meta.vocab),
                                   meta.preprocessing.size)
        except Exception as err:  # a damaged file: onnxruntime's error types vary by version
            problem = f"it cannot be loaded ({err.__class__.__name__})"
        if problem is None:
            source = str(path)
        else:
            log.warning("%s is not usable: %s; exporting it again", path, problem)
    else:
        log.info("%s has no %s yet; exporting it", folder.name, ONNX)
    if source is None:
        source = export_onnx(folder).data
        session = ort.InferenceSession(source, options[0], providers=["CPUExecutionProvider"])
    return [session] + [ort.InferenceSession(source, o, providers=["CPUExecutionProvider"]) for o in options[1:]]


def _load_and_prepare(runner: _Runner, load: Callable[[], bytes]) -> _Prepared:
    try:
        data = load()
    except OSError as err:
        return ImageError("unreadable", f"The file could not be read ({err.strerror or err}).")
    return runner.prepare(data)


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk
