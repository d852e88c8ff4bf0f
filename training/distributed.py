"""`kimchi-train train --gpus N`: the same recipe in N processes, under `accelerate launch`, with fastai's
`learn.distrib_ctx()`.

The `kimchi-train` the user started re-runs its own command line under `accelerate launch` (torch's
elastic launcher, N processes on this machine) and waits for it. Each process builds the same
DataLoaders (same seed, so the same split); fastai's DistributedTrainer wraps the model in
DistributedDataParallel and hands each process its share of every batch, and gathers the validation
predictions, so every process computes the same metrics and keeps the same epoch. Rank 0 alone writes:
the progress lines, the report, the registry version and the final path.

On CUDA each process drives the GPU of its local rank (NCCL); with `--device cpu` the processes use gloo,
which is how the test suite runs two of them on a machine without GPUs.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
from typing import Iterator, Sequence

import torch

from models.errors import KimchiError

log = logging.getLogger(__name__)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def launched() -> bool:
    """True inside a process that accelerate launch started (it sets WORLD_SIZE, and RANK)."""
    return "WORLD_SIZE" in os.environ


def is_main() -> bool:
    return rank() == 0


def check_gpus(gpus: int, device: str) -> None:
    """A sentence, before anything starts, when N processes cannot each have a GPU."""
    if gpus < 1:
        raise KimchiError(f"--gpus must be at least 1, not {gpus}.")
    if device == "cpu" or gpus == 1:
        return
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found < gpus:
        raise KimchiError(f"--gpus {gpus} needs {gpus} CUDA GPUs, and this machine has {found}; pass --gpus {found or 1}"
                          f"{'' if found else ', or --device cpu to run the processes on the CPU'}.")


def launch(argv: Sequence[str], gpus: int) -> int:
    """Run `kimchi-train <argv>` in `gpus` processes under accelerate launch; their exit status."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(gpus),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), "--module", "training.cli", *argv]
    log.info("launching %d training processes: %s", gpus, " ".join(command))
    # stdout is inherited: rank 0's progress lines reach the caller (the bot's /retrain) unchanged.
    # SIGTERM, not SIGKILL, when this process dies: the launcher then stops its workers itself.
    return subprocess.run(command, check=False, preexec_fn=lambda: die_with_parent(signal.SIGTERM)).returncode


def setup_process(device: str) -> None:
    """In a launched process: die with the launcher, and on CUDA make `cuda` mean this rank's own GPU."""
    if not launched():
        return
    die_with_parent(signal.SIGKILL)
    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def die_with_parent(sig: int) -> None:
    """prctl(PR_SET_PDEATHSIG): a trainer never outlives the process that started it (Linux; elsewhere
    nothing). The bot starts `kimchi-train` the same way."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(sig), 0, 0, 0)
    except (AttributeError, OSError):
        pass


@contextlib.contextmanager
def context(learn, device: torch.device) -> Iterator[None]:
    """fastai's distrib_ctx when launched with more than one process, else nothing.

    sync_bn is off: SyncBatchNorm needs CUDA (gloo runs on the CPU), and DDP broadcasts rank 0's
    BatchNorm buffers at every step, so the processes normalise alike anyway.
    """
    if world_size() <= 1:
        yield
        return
    from fastai.distributed import DistributedDL  # importing it adds Learner.distrib_ctx

    DistributedDL._broadcast = _broadcast_any_backend
    with learn.distrib_ctx(sync_bn=False, cpu=device.type == "cpu"):
        yield
    _leave_group()


def _leave_group() -> None:
    """Training is done: evaluating, exporting and publishing are rank 0's alone. Leave the process group
    and say so in WORLD_SIZE, which fastai reads to decide whether to gather across processes."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    os.environ["WORLD_SIZE"] = "1"


def _broadcast_any_backend(self, t: list[int], rank: int) -> list[int]:
    """DistributedDL._broadcast, which shares rank 0's batch order, for gloo too: fastai's moves the
    tensor to CUDA because NCCL needs it there, and gloo (the CPU backend) cannot take it there."""
    tensor = torch.tensor(t, dtype=torch.long)
    if torch.distributed.get_backend() == "nccl":
        tensor = tensor.cuda()
    torch.distributed.broadcast(tensor, rank)
    return tensor.cpu().tolist()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
