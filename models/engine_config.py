"""How the engine runs: its configuration, and the thread plan (decode threads, ONNX Runtime's threads,
batches side by side) it derives from the CPUs this process may use."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from models.device import usable_cpus
from models.errors import KimchiError
from models.preprocess import ImageLimits
from models.types import CPU_RUNTIMES


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
    # Whether a version's open-set check (openset.safetensors, models/openset.py) judges each photo; off: the
    # head alone answers, as before the check existed (and as benchmarks compare).
    openset: bool = True


LANE_CHUNK = 8  # the largest batch when batches run side by side
MAX_LANES = 8  # the most batches side by side, whatever the core count


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
    nothing beside it, so its workers spin for the length of its run (see runtimes.ort_options); a single
    session with no lanes beside it shares the cores with the decoders, so its workers sleep between ops.
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
    memory unchanged, as batches side by side are capped at LANE_CHUNK images (see Runner.batch_cap).
    At most MAX_LANES: each lane's batch holds its own activations in ORT's arena.
    """
    cpus = cpus or usable_cpus()
    return config.batch_lanes or min(cpus, MAX_LANES)
