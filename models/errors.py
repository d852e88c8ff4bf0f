"""Domain exceptions. Each carries what a user needs; the caller turns it into one sentence."""
from __future__ import annotations


class KimchiError(Exception):
    """Base of every error this project raises on purpose. `str(err)` is one clear sentence."""


class ImageRejected(KimchiError):
    """An image that cannot be classified. `reason` is a short code the bot maps to its own text."""

    REASONS = ("empty", "not_image", "format", "truncated", "animated", "too_large", "too_small")

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class UnknownLabel(KimchiError):
    """Text that names none of the classes; `suggestion` is a near miss, if there is one."""

    def __init__(self, text: str, suggestion: str | None) -> None:
        hint = f" Did you mean {suggestion}?" if suggestion else ""
        super().__init__(f"'{text}' is not one of the kimchi classes.{hint}")
        self.text = text
        self.suggestion = suggestion


class NotAClass(UnknownLabel):
    """A real kimchi that is not one of the classes (e.g. 동치미); `name` is its canonical Korean name.

    Never carries a suggestion: mapping it to a class would teach the model a wrong label.
    """

    def __init__(self, text: str, name: str) -> None:
        KimchiError.__init__(self, f"{name} is a kimchi, but not one of the classes I know yet.")
        self.text = text
        self.name = name
        self.suggestion = None


class LabelTooLong(UnknownLabel):
    """Label text longer than `limit` characters; refused before any matching, and never echoed."""

    def __init__(self, length: int, limit: int) -> None:
        KimchiError.__init__(self, f"A kimchi name has at most {limit} characters; this text has {length}.")
        self.text = ""  # the text itself is not kept: whoever formats this error cannot echo it
        self.length = length
        self.limit = limit
        self.suggestion = None


class Busy(KimchiError):
    """The engine's queue is full; the caller should try again shortly."""

    def __init__(self, queued: int) -> None:
        super().__init__(f"The classifier is busy ({queued} images queued); try again in a moment.")
        self.queued = queued


class NoModel(KimchiError):
    """No model version is current yet (cold start)."""

    def __init__(self, detail: str = "No model has been trained or promoted yet.") -> None:
        super().__init__(detail)


class EngineCrashed(KimchiError):
    """The worker failed while this request was in its batch; the worker has been restarted."""


class ArtifactError(KimchiError):
    """A model directory that is missing, incomplete or inconsistent."""


class UnknownVersion(KimchiError):
    """A version name the registry does not hold."""

    def __init__(self, version: str, known: list[str]) -> None:
        listed = ", ".join(known[-5:]) if known else "none"
        super().__init__(f"There is no complete model version '{version}' (known: {listed}).")
        self.version = version


class WeightsUnavailable(KimchiError):
    """Pretrained weights that could not be found or downloaded."""
