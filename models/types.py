"""Small values that cross rooms: what the engine answers for one image, and the names of what may run
the model on the CPU (the bot's settings, `kimchi-train predict` and the engine check against them)."""
from __future__ import annotations

from dataclasses import dataclass

from models.labels import NOT_KIMCHI

CPU_RUNTIMES = ("auto", "torch", "onnx")


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one image: best label, its probability, the top K, and who answered.

    `label`, `confidence` and `top` are the classifier head's (what `learn.predict` gives). The open-set
    verdict is extra: `openset` is the image's score (larger is farther from the version's kimchi, see
    models/openset.py) and `threshold` the version's calibrated limit; both None for a version that has
    no calibration. `not_kimchi` and `answer` say what the bot tells the user.
    """

    label: str
    confidence: float
    top: tuple[tuple[str, float], ...]
    version: str
    ok: bool = True
    openset: float | None = None
    threshold: float | None = None

    @property
    def far(self) -> bool:
        """The open-set score says the photo is none of the version's kimchi."""
        return self.openset is not None and self.threshold is not None and self.openset > self.threshold

    @property
    def not_kimchi(self) -> bool:
        """Not kimchi: the head's best class is not_kimchi, or the open-set score says so. Either one can."""
        return self.label == NOT_KIMCHI or self.far

    @property
    def answer(self) -> str:
        """What the bot answers: the head's class, or not_kimchi."""
        return NOT_KIMCHI if self.not_kimchi else self.label

    @property
    def closest(self) -> tuple[str, float] | None:
        """The most probable kimchi class and its probability (not_kimchi left out); None if top has none."""
        return next(((label, p) for label, p in self.top if label != NOT_KIMCHI), None)


@dataclass(frozen=True)
class ImageError:
    """Why one image of a batch got no prediction; the rest of the batch is unaffected."""

    reason: str
    message: str
    ok: bool = False


Result = Prediction | ImageError
