"""The engine's scheduling contract (models/batcher.py) on a fake runner, with no model: a lone photo runs at
once and wide, a burst runs narrow on at most the lanes, every caller gets its own answer in order, a swap
falls between batches, a crashed batch or a dead worker is recovered from, and Busy comes at the limit."""
import asyncio
import concurrent.futures as cf
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest

from models.batcher import Batcher
from models.errors import Busy, EngineCrashed, KimchiError, NoModel

WAIT = 5  # seconds a gate or an event waits at most, so that a failing test fails instead of hanging


class FakeRunner:
    """What the batcher sees of a runner. prepare() tags the bytes with this version; run() answers each
    image with (version, bytes, wide), after its gates: `prepare_gate` holds every preparation, `run_gate`
    every run, and with `hold` a narrow run waits for a second one beside it (so overlap is not left to
    timing), then stays 20 ms, time for a third to come in if the batcher let it. It records the runs,
    the `alone` hints, and the most runs that were inside at once."""

    def __init__(self, version: str = "v1", cap: int = 4, lanes: int = 1, hold: bool = False) -> None:
        self.version, self.batch_cap, self.parallel_batches, self.hold = version, cap, lanes, hold
        self.prepare_gate, self.run_gate = threading.Event(), threading.Event()
        self.prepare_gate.set()
        self.run_gate.set()
        self.started, self.both = threading.Event(), threading.Event()
        self.fail_next = False
        self.prepared: list[tuple[bytes, bool]] = []  # (data, alone)
        self.runs: list[tuple[list[bytes], bool]] = []  # (the batch's bytes, wide)
        self.inside = self.most = 0
        self.lock = threading.Lock()

    def prepare(self, data: bytes, alone: bool = False) -> tuple[str, bytes]:
        assert self.prepare_gate.wait(WAIT)
        self.prepared.append((data, alone))
        return self.version, data

    def run(self, prepared: list, wide: bool = True) -> list:
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
            if self.inside >= 2:
                self.both.set()
        self.started.set()
        try:
            assert self.run_gate.wait(WAIT)
            if self.hold and not wide:
                self.both.wait(WAIT)
                time.sleep(0.02)
            if self.fail_next:
                self.fail_next = False
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            assert {version for version, _ in prepared} == {self.version}  # prepared for this version only
            self.runs.append(([data for _, data in prepared], wide))
            return [(self.version, data, wide) for _, data in prepared]
        finally:
            with self.lock:
                self.inside -= 1

    def open(self) -> None:
        self.prepare_gate.set()
        self.run_gate.set()


@contextmanager
def serving(*runners: FakeRunner, **settings):
    """A batcher on the first runner with a one-thread decode pool (preparations finish in order)."""
    pool = cf.ThreadPoolExecutor(1)
    batcher = Batcher(runners[0], pool, **settings)
    try:
        yield batcher
    finally:
        for runner in runners:
            runner.open()
        batcher.close()
        pool.shutdown()


def images(n: int) -> list[bytes]:
    return [f"photo {i}".encode() for i in range(n)]


async def test_a_lone_photo_runs_at_once_on_every_thread():
    runner = FakeRunner(cap=8, lanes=2)
    with serving(runner, max_wait_ms=5000) as batcher:  # a wait for companions would show
        batcher.on_batch = lambda size: time.sleep(0.02)  # a slow metrics hook, after the answers go out
        started = time.monotonic()
        answer = await asyncio.wait_for(batcher.submit(b"alone"), WAIT)
        elapsed = time.monotonic() - started
        # photos sent one after another, each on receiving the last one's answer, are alone too
        after = [await asyncio.wait_for(batcher.submit(data), WAIT) for data in images(3)]
    assert answer == ("v1", b"alone", True) and elapsed < 1, elapsed
    assert after == [("v1", data, True) for data in images(3)]
    assert runner.runs == [([data], True) for data in [b"alone", *images(3)]]
    assert runner.prepared == [(data, True) for data in [b"alone", *images(3)]]


async def test_a_burst_runs_narrow_on_at_most_the_lanes_and_each_caller_gets_its_answer():
    runner = FakeRunner(cap=2, lanes=2, hold=True)
    runner.prepare_gate.clear()
    burst = images(12)
    with serving(runner) as batcher:
        tasks = [asyncio.ensure_future(batcher.submit(data)) for data in burst]
        await asyncio.sleep(0)  # every request is queued, none prepared yet
        runner.prepare_gate.set()
        answers = await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
    assert [data for _, data, _ in answers] == burst
    assert all(len(batch) <= 2 for batch, _ in runner.runs) and sum(len(b) for b, _ in runner.runs) == 12
    assert runner.most == 2  # side by side, and never more than the lanes
    assert sum(wide for _, wide in runner.runs) <= 1, runner.runs  # only a last batch may find itself alone
    assert sum(alone for _, alone in runner.prepared) <= 1  # the two-thread resize is for a lone photo only


async def test_batches_are_taken_oldest_first_up_to_the_cap():
    runner = FakeRunner(cap=4)
    runner.prepare_gate.clear()
    photos = images(10)
    with serving(runner, max_wait_ms=500) as batcher:
        tasks = [asyncio.ensure_future(batcher.submit(data)) for data in photos]
        await asyncio.sleep(0)
        runner.prepare_gate.set()
        answers = await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
        assert batcher.batches == [(4, "v1"), (4, "v1"), (2, "v1")]
    assert [data for _, data, _ in answers] == photos
    assert [batch for batch, _ in runner.runs] == [photos[:4], photos[4:8], photos[8:]]
    assert all(wide for _, wide in runner.runs)  # one lane: every batch on every thread


async def test_a_swap_takes_effect_between_batches():
    old, new = FakeRunner("v1", cap=2), FakeRunner("v2", cap=2)
    old.run_gate.clear()
    photos = images(6)
    with serving(old, new) as batcher:
        tasks = [asyncio.ensure_future(batcher.submit(data)) for data in photos]
        assert await asyncio.to_thread(old.started.wait, WAIT)  # v1's first batch is running
        batcher.runner = new
        old.run_gate.set()
        answers = await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
        assert {version for _, version in batcher.batches} == {"v1", "v2"}
    (first, _), = old.runs  # v1 ran the one batch it had begun, and no other
    assert [data for version, data, _ in answers if version == "v1"] == first
    assert [data for version, data, _ in answers if version == "v2"] == photos[len(first):]
    assert [data for data, _ in new.prepared] == photos[len(first):]  # prepared again for v2


async def test_a_crashed_batch_answers_engine_crashed_and_a_dead_worker_is_started_again():
    runner = FakeRunner()
    runner.fail_next = True
    with serving(runner) as batcher:
        with pytest.raises(EngineCrashed, match="send the photo again"):
            await asyncio.wait_for(batcher.submit(b"first"), WAIT)
        assert await asyncio.wait_for(batcher.submit(b"second"), WAIT) == ("v1", b"second", True)
        assert batcher.crashes == 1 and batcher.worker_alive
        await asyncio.to_thread(batcher.stop_worker, WAIT)  # the worker thread ends, as if it had died
        assert not batcher.worker_alive
        assert await asyncio.wait_for(batcher.submit(b"third"), WAIT) == ("v1", b"third", True)
        assert batcher.crashes == 2 and batcher.worker_alive and batcher.queued == 0


async def test_past_the_queue_limit_busy_comes_at_once():
    runner = FakeRunner()
    runner.run_gate.clear()
    with serving(runner, queue_limit=4) as batcher:
        tasks = [asyncio.ensure_future(batcher.submit(data)) for data in images(30)]
        await asyncio.sleep(0)
        refused = [t for t in tasks if t.done()]  # answered before anything ran
        assert len(refused) == 26 and all(isinstance(t.exception(), Busy) for t in refused)
        assert "try again" in str(refused[0].exception()) and batcher.queued == 4
        runner.run_gate.set()
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), WAIT)
        assert [o for o in outcomes if not isinstance(o, Busy)] == [("v1", d, True) for d in images(4)]
        assert batcher.queued == 0


async def test_no_model_and_a_closed_batcher_refuse_in_one_sentence():
    pool = cf.ThreadPoolExecutor(1)
    empty = Batcher(None, pool)
    with pytest.raises(NoModel):
        await empty.submit(b"photo")
    empty.runner = FakeRunner()
    empty.close()
    with pytest.raises(KimchiError, match="shut down"):
        await empty.submit(b"photo")
    with pytest.raises(RuntimeError):
        empty.lane_pool(2)
    pool.shutdown()


def test_the_batcher_does_not_import_torch():
    probe = "import sys, models.batcher; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "False\n"
