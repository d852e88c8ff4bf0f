"""Choosing the torch device from the one word the settings and flags use (auto, cpu or cuda), and how many
CPUs this process may use."""
from __future__ import annotations

import os

import torch

from models.errors import KimchiError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> torch.device:
    """`auto` is the GPU when there is one; `cuda` without a GPU is one clear sentence, not a crash later."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise KimchiError("The device is cuda (KIMCHI_DEVICE or --device), but no CUDA GPU is available; "
                          "use auto or cpu.")
    if device not in DEVICES:
        raise KimchiError(f"Unknown device '{device}'; use auto, cpu or cuda.")
    return torch.device(device)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, e.g. `taskset` or a cpuset), else the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
