"""The micro-batching worker: concurrent callers' images, queued, micro-batched and run on one worker thread
that owns the model, while a decode pool prepares the images (preparation starts as soon as a request
arrives). The event loop only enqueues and awaits. Torch-free: it schedules whatever runner it is given,
models.runner.Runner in the engine, a fake one in tests/test_batcher.py.

The scheduling contract:

* a photo with nothing else in flight runs at once (it waits for no companion), wide: on every thread the
  runtime has, and prepared with `alone`;
* a burst runs in batches of at most the runner's batch_cap; a runner that can run batches side by side
  (`parallel_batches`, on ONNX Runtime one per core) gets up to that many at once, narrow, on lane threads;
* every caller gets its own image's answer; batches are taken oldest first;
* a swap (setting `runner`) takes effect between batches: a batch never mixes versions, and an image
  prepared for the version swapped out is prepared again;
* a batch that raises answers EngineCrashed to its images and the worker carries on; a worker found dead
  is started again by the next request;
* past `queue_limit` images waiting or running, `submit` raises Busy at once.
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from models.errors import Busy, EngineCrashed, KimchiError, NoModel
from models.types import ImageError

log = logging.getLogger(__name__)


class Runs(Protocol):
    """What the batcher needs of a runner (models.runner.Runner has it)."""

    version: str

    @property
    def batch_cap(self) -> int: ...

    @property
    def parallel_batches(self) -> int: ...

    def prepare(self, data: bytes, alone: bool = False) -> object: ...

    def run(self, prepared: Sequence, wide: bool = True) -> list: ...


@dataclass
class _Job:
    data: bytes
    runner: Runs  # the version whose preparation `prepared` follows
    prepared: cf.Future
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


_STOP = object()


class Batcher:
    """Runs `runner` on batches of concurrent requests; see the module's scheduling contract."""

    def __init__(self, runner: Runs | None, decode: cf.Executor, *, max_batch: int = 32, max_wait_ms: float = 2.0,
                 queue_limit: int = 256) -> None:
        self.runner = runner  # what serves; set it to swap, between batches
        self.max_batch, self.max_wait_ms, self.queue_limit = max_batch, max_wait_ms, queue_limit
        self._decode = decode
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._worker_lock = threading.Lock()
        self._lanes: cf.ThreadPoolExecutor | None = None  # threads that run batches side by side
        self._lanes_busy = 0
        self._lanes_free = threading.Condition()
        self.closed = False
        self.crashes = 0
        self.batches: list[tuple[int, str]] = []  # (size, version) of recent batches, for stats
        # Called on the worker thread with each batch's size, after its results are delivered (bot metrics).
        self.on_batch: Callable[[int], None] | None = None

    # -- the callers' side ---------------------------------------------------------------------------
    async def submit(self, data: bytes) -> object:
        """The runner's answer for one image; raises Busy, NoModel, EngineCrashed, or KimchiError once closed."""
        runner = self.runner
        if runner is None:
            raise NoModel()
        if self.closed:
            raise KimchiError("The classifier is shut down.")
        with self._pending_lock:
            if self._pending >= self.queue_limit:
                raise Busy(self._pending)
            self._pending += 1
        loop = asyncio.get_running_loop()
        job = _Job(data, runner, self._submit_prepare(runner, data), loop.create_future(), loop)
        self._ensure_worker()
        self._queue.put(job)
        self._wake.set()
        return await job.future

    @property
    def queued(self) -> int:
        """Images waiting in, or running through, the batcher."""
        return self._pending

    @property
    def worker_alive(self) -> bool:
        """False once closed, or while the worker thread is dead (the next submit() starts a new one)."""
        worker = self._worker
        return not self.closed and (worker is None or worker.is_alive())

    def lane_pool(self, lanes: int) -> cf.ThreadPoolExecutor:
        """The threads that run batches side by side (made on first use); RuntimeError once closed."""
        with self._worker_lock:
            if self._lanes is None:
                if self.closed:  # close() has shut the lanes down
                    raise RuntimeError("the classifier is closed")
                self._lanes = cf.ThreadPoolExecutor(lanes, thread_name_prefix="kimchi-batch")
            return self._lanes

    def stop_worker(self, timeout: float = 30) -> None:
        """End the worker thread once the work queued before this call is done, as close() does; the next
        submit() finds it dead and starts a new one."""
        worker = self._worker
        if worker is not None and worker.is_alive():
            self._queue.put(_STOP)
            self._wake.set()
            worker.join(timeout=timeout)

    def close(self) -> None:
        """Finish queued work, stop the worker and its batch lanes (the decode pool is its owner's)."""
        if self.closed:
            return
        self.closed = True
        self.stop_worker()
        with self._worker_lock:
            lanes, self._lanes = self._lanes, None
        if lanes is not None:
            lanes.shutdown(wait=True)

    def _submit_prepare(self, runner: Runs, data: bytes) -> cf.Future:
        future = self._decode.submit(runner.prepare, data, self._pending <= 1)
        future.add_done_callback(lambda _: self._wake.set())
        return future

    def _ensure_worker(self) -> None:
        with self._worker_lock:
            if self._worker is None or not self._worker.is_alive():
                if self._worker is not None:
                    self.crashes += 1
                    log.error("classifier worker was found dead; starting a new one")
                self._worker = threading.Thread(target=self._work, name="kimchi-engine", daemon=True)
                self._worker.start()

    # -- the worker ------------------------------------------------------------------------------------
    def _work(self) -> None:
        """The worker loop: run the images that are prepared, in batches, while the pool prepares the rest.
        With a runner that runs batches side by side, a batch runs on a lane thread and the worker gathers
        the next one: up to parallel_batches at once, narrow, and a batch with nothing beside it or behind
        it wide."""
        pending: list[_Job] = []
        stopping = False
        while True:
            batch, runner, stopping = self._next_batch(pending, stopping)
            if not batch:
                self._wait_lanes(lambda n: n == 0)
                return
            lanes = runner.parallel_batches if runner is not None else 1
            if lanes == 1:
                self._run_batch(runner, batch, wide=True)
                continue
            self._wait_lanes(lambda n: n < lanes)
            with self._lanes_free:
                wide = self._lanes_busy == 0 and not pending
                self._lanes_busy += 1
            try:
                self.lane_pool(lanes).submit(self._run_lane, runner, batch, wide)
            except RuntimeError:  # the pool was shut down under us (close() timed out): run it here
                self._run_lane(runner, batch, wide)

    def _run_lane(self, runner: Runs | None, batch: list[_Job], wide: bool) -> None:
        self._run_batch(runner, batch, wide, lane=True)

    def _wait_lanes(self, ok: Callable[[int], bool]) -> None:
        with self._lanes_free:
            self._lanes_free.wait_for(lambda: ok(self._lanes_busy))

    def _run_batch(self, runner: Runs | None, batch: list[_Job], wide: bool, lane: bool = False) -> None:
        """Run one batch and answer its callers. Its lane is free before the answers go out, so that a
        photo sent on receiving an answer finds nothing beside it, and runs wide."""
        try:
            results = self._results(runner, batch, wide)
        finally:
            if lane:
                with self._lanes_free:
                    self._lanes_busy -= 1
                    self._lanes_free.notify_all()
        for job, result in zip(batch, results):
            self._deliver(job, result)
        self._report_batch(len(batch))

    def _results(self, runner: Runs | None, batch: list[_Job], wide: bool) -> list:
        try:
            if runner is None:
                raise NoModel()
            results: list = runner.run([self._prepared(j) for j in batch], wide=wide)
            self.batches.append((len(batch), runner.version))
            del self.batches[:-1000]
            return results
        except Exception as err:  # the worker survives anything one batch does
            self.crashes += 1
            log.exception("classifier worker failed on a batch of %d; restarting it", len(batch))
            failure = err if isinstance(err, NoModel) else EngineCrashed(
                "The classifier failed on this batch and was restarted; please send the photo again.")
            return [failure] * len(batch)

    def _next_batch(self, pending: list[_Job], stopping: bool) -> tuple[list[_Job], Runs | None, bool]:
        """Up to batch_cap prepared jobs, oldest first, and the runner they were prepared for: once one is
        ready, wait at most max_wait for companions. Unprepared jobs stay pending, so the model never idles
        on a slow decode. Returns ([], None, True) when stopped and nothing is left."""
        first_ready: float | None = None
        while True:
            self._wake.clear()
            stopping = self._drain(pending) or stopping
            if not pending:
                if stopping:
                    return [], None, True
                self._wake.wait()
                continue
            runner = self.runner  # read once: the whole batch runs on one version
            cap = runner.batch_cap if runner is not None else self.max_batch
            for job in pending:  # prepared for a version swapped out since: prepare again
                if runner is not None and job.runner is not runner:
                    job.runner, job.prepared = runner, self._submit_prepare(runner, job.data)
            ready = [j for j in pending if j.prepared.done()]
            now = time.monotonic()
            if ready and first_ready is None:
                first_ready = now
            waited = first_ready is not None and now - first_ready >= self.max_wait_ms / 1000
            # Nothing else is decoding: a companion could only be a photo not sent yet, so waiting for
            # one would only delay this one (2 ms of a single photo's latency). Under a burst, photos
            # that arrive while this batch runs make the next one.
            alone = len(ready) == len(pending)
            if len(ready) >= cap or (ready and (waited or stopping or alone)):
                batch = ready[:cap]
                taken = set(map(id, batch))
                pending[:] = [j for j in pending if id(j) not in taken]
                return batch, runner, stopping
            timeout = None if first_ready is None else max(0.0, first_ready + self.max_wait_ms / 1000 - now)
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
    def _prepared(job: _Job) -> object:
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

    def _report_batch(self, size: int) -> None:
        hook = self.on_batch
        if hook is None:
            return
        try:
            hook(size)
        except Exception:  # a metrics hook must never take the worker down
            log.exception("on_batch hook failed")
