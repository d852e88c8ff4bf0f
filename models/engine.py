"""The batched classifier engine shared by the bot and the CLI: a facade over the public runner.

Two ways in:

* `classify_batch(images)` / `classify_stream(loaders)`: synchronous, on the caller's thread, for
  the CLI and tests; decode of the next chunk overlaps inference of this one (models.runner.stream).
* `await classify(image_bytes)`: for the bot. Requests from concurrent callers are queued,
  micro-batched and run on one worker thread that owns the model (models.batcher); decoding starts
  in a small thread pool as soon as a request arrives. Past `queue_limit` waiting images, `classify`
  raises `Busy` at once.

`swap(version)` loads another version beside the serving one and switches between batches, so a
batch never mixes models and every result names the version that produced it.

The parts, one job each: models.engine_config (configuration, thread plan), models.prepare (what one
image becomes before the batch), models.runtimes (torch or ONNX Runtime), models.runner (one loaded
version), models.batcher (the micro-batching worker).
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from models.artifact import ModelMeta
from models.batcher import Batcher
from models.device import resolve_device
from models.engine_config import EngineConfig, batch_plan, cpu_runtime_from_env, thread_plan
from models.errors import ImageRejected, KimchiError, NoModel
from models.prepare import orient_chw
from models.registry import Registry
from models.runner import Runner, stream
from models.runtimes import Output
from models.types import CPU_RUNTIMES, ImageError, Prediction, Result

__all__ = ["Classifier", "EngineConfig", "Output", "Runner", "batch_plan", "cpu_runtime_from_env", "orient_chw",
           "stream", "thread_plan"]

log = logging.getLogger(__name__)


class _OfBatcher:
    """A Classifier attribute that is its batcher's."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, classifier: Classifier | None, owner: type | None = None):
        return self if classifier is None else getattr(classifier.batcher, self.name)

    def __set__(self, classifier: Classifier, value) -> None:
        setattr(classifier.batcher, self.name, value)


class Classifier:
    """Loads a registry version (or `current`) from the safe artifact and classifies image bytes.
    A context manager: `with Classifier(...) as classifier:` closes it on the way out."""

    def __init__(self, registry: Registry | Path | str, version: str | None = "current",
                 config: EngineConfig = EngineConfig(), allow_empty: bool = False) -> None:
        self.registry = registry if isinstance(registry, Registry) else Registry(Path(registry))
        self.config = config
        resolve_device(config.device)  # fail early, with a sentence, on a bad device
        if config.cpu_runtime not in CPU_RUNTIMES:
            raise KimchiError(f"Unknown CPU runtime '{config.cpu_runtime}'; use {', '.join(CPU_RUNTIMES)}.")
        self._decode = cf.ThreadPoolExecutor(thread_plan(config)[0], thread_name_prefix="kimchi-decode")
        runner = None
        try:
            runner = Runner(self.registry, self.registry.resolve(version), config)
        except NoModel:
            if not allow_empty:
                raise
            log.warning("no model yet: the classifier will answer NoModel until one is promoted")
        self.batcher = Batcher(runner, self._decode, max_batch=config.max_batch, max_wait_ms=config.max_wait_ms,
                               queue_limit=config.queue_limit)

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- what it serves ------------------------------------------------------------------------
    @property
    def runner(self) -> Runner | None:
        """The version serving now, or None without a model."""
        return self.batcher.runner

    @property
    def version(self) -> str | None:
        runner = self.runner
        return runner.version if runner else None

    @property
    def meta(self) -> ModelMeta | None:
        runner = self.runner
        return runner.meta if runner else None

    @property
    def runtime(self) -> str | None:
        """What runs the network: "onnx" (ONNX Runtime) or "torch"; None without a model."""
        runner = self.runner
        return runner.runtime if runner else None

    @property
    def device(self) -> str:
        runner = self.runner
        return str(runner.device) if runner else str(resolve_device(self.config.device))

    # -- the batcher's figures and hook, for the bot's metrics and health: see models.batcher.Batcher ----
    queued, worker_alive, crashes, batches, on_batch = (_OfBatcher() for _ in range(5))

    # -- synchronous API -------------------------------------------------------------------------
    def classify_batch(self, images: Sequence[bytes]) -> list[Result]:
        """One result per image, in order: a Prediction, or an ImageError for that image alone."""
        return list(self.classify_stream([(lambda data=data: data) for data in images]))

    def classify_stream(self, loaders: Iterable[Callable[[], bytes]], batch_size: int | None = None) -> Iterator[Result]:
        """Results in order for a long stream of image loaders (e.g. file reads), chunk after chunk.

        The next chunks are read and decoded in the pool while earlier ones run through the model; on
        ONNX Runtime with several cores, several chunks run through it at once, one core each.
        """
        runner = self.runner
        if runner is None:
            raise NoModel()
        lanes = self.batcher.lane_pool(runner.parallel_batches) if runner.parallel_batches > 1 else None
        yield from stream(runner, loaders, self._decode, lanes, batch_size)

    # -- asynchronous API ------------------------------------------------------------------------
    async def classify(self, data: bytes) -> Prediction:
        """The prediction for one image; raises ImageRejected, Busy, NoModel or EngineCrashed."""
        result = await self.batcher.submit(data)
        if isinstance(result, ImageError):
            raise ImageRejected(result.reason, result.message)
        return result

    # -- model swap ------------------------------------------------------------------------------
    def swap(self, version: str = "current") -> str:
        """Load `version` beside the serving model, then switch between batches. Returns its name."""
        name = self.registry.resolve(version)
        current = self.runner
        if current is not None and current.version == name:
            return name
        self.batcher.runner = Runner(self.registry, name, self.config)
        log.info("classifier now serves %s (was %s)", name, current.version if current else "nothing")
        return name

    async def aswap(self, version: str = "current") -> str:
        """swap() off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, self.swap, version)

    def close(self) -> None:
        """Finish queued work, stop the worker, its batch lanes and the decode pool."""
        if self.batcher.closed:
            return
        self.batcher.close()
        self._decode.shutdown(wait=True)
