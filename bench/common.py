"""Shared pieces of the benchmark scripts: synthetic photos, a quickly trained model, timing helpers.

Benchmarks print figures; they assert nothing. Compare ratios within one run (the machines are noisy)
and quote medians.
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

from tests.imagegen import draw, encode, make_dataset  # noqa: E402


def photos(n: int, size: tuple[int, int] = (1280, 960), classes: int = 4, quality: int = 87) -> list[bytes]:
    """`n` distinct JPEGs of Telegram's photo size."""
    return [encode(draw(i % classes, size, seed=10_000 + i), "JPEG", quality=quality) for i in range(n)]


def write_photos(folder: Path, blobs: list[bytes]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, data in enumerate(blobs):
        path = folder / f"photo_{i:05d}.jpg"
        path.write_bytes(data)
        paths.append(path)
    return paths


def trained_model(home: Path, arch: str = "resnet18", classes: int = 4, per_class: int = 16, size: int = 224,
                  presize: int = 460, device: str = "auto", epochs: int = 1, freeze_epochs: int = 1,
                  pretrained: bool = False):
    """A registry under `home` with one version trained on synthetic photos (reused if already there)."""
    from models.registry import Registry
    from training.recipe import Recipe
    from training.progress import Progress
    from training.train import train

    registry = Registry(home / "models")
    if registry.current():
        return registry, registry.current()
    data = home / "data"
    make_dataset(data, classes=classes, per_class=per_class, size=(640, 480))
    recipe = Recipe(arch=arch, pretrained=pretrained, size=size, presize=presize, bs=16, epochs=epochs,
                    freeze_epochs=freeze_epochs, workers=0, device=device)
    outcome = train(data, recipe, registry, Progress("quiet"), report=False)
    return registry, outcome.version


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def timed(fn: Callable[[], Any], repeat: int = 1) -> float:
    """Median wall time of `fn` over `repeat` runs, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _status_mb(field: str, pid: int | str = "self") -> float:
    """A memory figure of /proc/PID/status (Linux), in MB; NaN when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def rss_mb() -> float:
    """Resident set size of this process."""
    return _status_mb("VmRSS")


def machine() -> dict[str, Any]:
    import torch

    info = {"cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def report(results: dict[str, Any], out: Path | None) -> None:
    text = json.dumps(results, indent=2, ensure_ascii=False, default=str)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def checkout(rev: str):
    """The project as of git revision `rev`, in a temporary worktree: a benchmark's "before"."""
    import subprocess
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="kimchi-before-")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), rev], check=True,
                   capture_output=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)], capture_output=True)


def peak_rss_mb(pid: int) -> float:
    """The peak resident set size of process `pid` so far (VmHWM)."""
    return _status_mb("VmHWM", pid)


def write_cycled(folder: Path, blobs: list[bytes], n: int) -> list[Path]:
    """`n` files in `folder` whose contents cycle through `blobs` (a large set without generating it)."""
    return write_photos(folder, [blobs[i % len(blobs)] for i in range(n)])


def loadavg() -> str:
    """The 1/5/15-minute load average: on a shared host, what the figures were measured under."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def whole_process(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Wall time of `cmd` as a whole process, start-up included, and its stdout; raises if it fails."""
    import subprocess

    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}… exited {done.returncode}: {done.stderr[-2000:]}")
    return elapsed, done.stdout


@contextlib.asynccontextmanager
async def bot_process(home, fake, ready_timeout: float = 180, root: Path = ROOT, **extra: str):
    """`python -m bot.app` from the source tree `root` against `fake` (tests.botkit.spawn_bot), yielded once
    it has set its command menu; terminated, and the fake stopped, on the way out."""
    from tests.botkit import spawn_bot, stop_bot

    process = spawn_bot(home, fake, home.root, root=root, **extra)
    try:
        await fake.wait_for(lambda c: c.method == "setMyCommands", timeout=ready_timeout)
        yield process
    finally:
        await stop_bot(process, 120)
        await fake.stop()
