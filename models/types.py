"""Small values that cross rooms: what the engine answers for one image, and the names of what may run
the model on the CPU (the bot's settings, `kimchi-train predict` and the engine check against them)."""
from __future__ import annotations

from dataclasses import dataclass

CPU_RUNTIMES = ("auto", "torch", "onnx")


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one image: best label, its probability, the top K, and who answered."""

    label: str
    confidence: float
    top: tuple[tuple[str, float], ...]
    version: str
    ok: bool = True


@dataclass(frozen=True)
class ImageError:
    """Why one image of a batch got no prediction; the rest of the batch is unaffected."""

    reason: str
    message: str
    ok: bool = False


Result = Prediction | ImageError
