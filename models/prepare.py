"""What one image becomes before the batch: decoded, upright and Resize(presize)d in the decode pool (on the
CPU also resampled and normalised there, leaving the batch step only the network); then, in the batch step,
normalised float batches on the device.

This is the same code whatever runs the network, so the pixels the model sees do not depend on the runtime.
The pixel arithmetic itself is models/preprocess.py and models/resample.py (parity with fastai).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from models.artifact import Preprocessing
from models.device import usable_cpus
from models.engine_config import EngineConfig
from models.errors import ImageRejected
from models.preprocess import crop_box, decode_rgb, exif_orientation, open_checked, presize_array, to_batch
from models.resample import pil_bilinear
from models.types import ImageError


@dataclass
class Square:
    """A decoded image, already Resize(presize)d on the CPU: uint8 (P, P, 3)."""

    array: np.ndarray


@dataclass
class Ready:
    """A CPU-engine image already resampled and normalised in the decode pool: float (3, S, S)."""

    tensor: torch.Tensor


@dataclass
class Jpeg:
    """A JPEG whose header checked out, left for nvJPEG in the batch step."""

    data: bytes
    orientation: int
    size: tuple[int, int]


Prepared = Square | Ready | Jpeg | ImageError
Batches = list[tuple[list[int], torch.Tensor]]  # normalised float batches, each with the positions it answers


def orient_chw(x: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation to a (C, H, W) tensor, as PIL's ImageOps.exif_transpose does."""
    if orientation == 2:
        return x.flip(-1)
    if orientation == 3:
        return x.flip(-1, -2)
    if orientation == 4:
        return x.flip(-2)
    if orientation == 5:
        return x.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(x, -1, dims=(-2, -1))
    if orientation == 7:
        return x.transpose(-2, -1).flip(-1, -2)
    if orientation == 8:
        return torch.rot90(x, 1, dims=(-2, -1))
    return x


class Preparation:
    """One version's preprocessing for one device, as the engine's configuration asks for it."""

    def __init__(self, pre: Preprocessing, device: torch.device, config: EngineConfig) -> None:
        self.pre, self.device, self.config = pre, device, config
        # Resize a lone photo's square as two halves on two threads: 8 -> 6.4 ms of latency, but 7.6 ->
        # 11.7 ms of CPU, so never under load (prepare's `alone`) nor in a stream.
        self.split_resize = usable_cpus() > 1
        cuda = device.type == "cuda"
        self.gpu_decode = config.jpeg_decoder == "torchvision" or (config.jpeg_decoder == "auto" and cuda)

    # -- in the decode pool -------------------------------------------------------------------------
    def prepare(self, data: bytes, alone: bool = False) -> Prepared:
        """What the batch step needs of one image; `alone`: nothing else is in flight, so the latency of
        this photo matters more than the CPU it costs."""
        try:
            if self.gpu_decode:
                img = open_checked(data, self.config.limits)
                if img.format == "JPEG" and img.mode in ("RGB", "L"):  # CMYK and the rest: Pillow
                    return Jpeg(data, exif_orientation(img), img.size)
            square = self._decode_and_presize(data, split=alone and self.split_resize)
            if self.device.type == "cpu":
                # On the CPU the whole per-image pipeline runs here, in parallel threads, leaving the
                # batch step only the model.
                with torch.inference_mode():
                    return Ready(to_batch(torch.from_numpy(square)[None], self.pre)[0])
            return Square(square)
        except ImageRejected as err:
            return ImageError(err.reason, err.detail)

    def load_and_prepare(self, load: Callable[[], bytes]) -> Prepared:
        """prepare() on what `load` reads (a file, say); a read that fails is this image's error."""
        try:
            data = load()
        except OSError as err:
            return ImageError("unreadable", f"The file could not be read ({err.strerror or err}).")
        return self.prepare(data)

    def _decode_and_presize(self, data: bytes, split: bool = False) -> np.ndarray:
        img = decode_rgb(data, self.config.limits, draft_to=self.pre.presize if self.config.draft else None)
        return presize_array(img, self.pre.presize, split=split)

    # -- in the batch step --------------------------------------------------------------------------
    def batches(self, prepared: Sequence[Prepared]) -> tuple[Batches, dict[int, ImageError]]:
        """The prepared images as normalised float batches on the device, each with the positions it
        answers, and the images that failed only now (a JPEG neither nvJPEG nor Pillow could read)."""
        out: Batches = []
        failed: dict[int, ImageError] = {}
        squares: list[tuple[int, torch.Tensor]] = []
        jpegs = [(i, p) for i, p in enumerate(prepared) if isinstance(p, Jpeg)]
        if jpegs:
            for i, image in zip((i for i, _ in jpegs), self._decode_tensors([p for _, p in jpegs])):
                if isinstance(image, ImageError):
                    failed[i] = image
                else:
                    squares.append((i, image))
        cpu = [(i, p.array) for i, p in enumerate(prepared) if isinstance(p, Square)]
        if cpu:
            host = torch.from_numpy(np.stack([a for _, a in cpu]))  # (B, P, P, 3) uint8
            if self.device.type == "cuda":
                host = host.pin_memory().to(self.device, non_blocking=True)
            squares.extend((i, t) for (i, _), t in zip(cpu, host.permute(0, 3, 1, 2).unbind(0)))
        if squares:
            out.append(([i for i, _ in squares], self.normalise(torch.stack([t for _, t in squares]))))
        ready = [(i, p.tensor) for i, p in enumerate(prepared) if isinstance(p, Ready)]
        if ready:
            out.append(([i for i, _ in ready], torch.stack([t for _, t in ready])))
        return out, failed

    def normalise(self, squares: torch.Tensor) -> torch.Tensor:
        """uint8 presized squares (B, 3, P, P) or (B, P, P, 3) on the device to the model's float batch."""
        with torch.inference_mode():
            return to_batch(squares, self.pre)

    def _decode_tensors(self, jpegs: list[Jpeg]) -> list[torch.Tensor | ImageError]:
        """torchvision's decode_jpeg on the engine's device (nvJPEG on CUDA), in one batch; an image it
        rejects goes through Pillow instead. Returns presized uint8 (3, P, P) tensors."""
        from torchvision.io import ImageReadMode, decode_jpeg

        raw = [torch.frombuffer(bytearray(j.data), dtype=torch.uint8) for j in jpegs]
        try:
            decoded: list[torch.Tensor | None] = list(decode_jpeg(raw, mode=ImageReadMode.RGB, device=self.device))
        except Exception:
            decoded = []
            for r in raw:
                try:
                    decoded.append(decode_jpeg(r, mode=ImageReadMode.RGB, device=self.device))
                except Exception:
                    decoded.append(None)
        upright = {i: orient_chw(img, j.orientation) for i, (j, img) in enumerate(zip(jpegs, decoded)) if img is not None}
        out: list[torch.Tensor | ImageError | None] = [None] * len(jpegs)
        for i, square in self._presize_tensors(upright).items():
            out[i] = square
        for i, img in enumerate(decoded):
            if img is None:
                fallback = self._prepare_on_cpu(jpegs[i].data)
                out[i] = fallback if isinstance(fallback, ImageError) else \
                    torch.from_numpy(fallback).to(self.device).permute(2, 0, 1)
        return out  # type: ignore[return-value]

    def _prepare_on_cpu(self, data: bytes) -> np.ndarray | ImageError:
        try:
            return self._decode_and_presize(data)
        except ImageRejected as err:
            return ImageError(err.reason, err.detail)

    def _presize_tensors(self, images: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Resize(presize) on tensors: fastai's crop, then Pillow's bilinear resize bit for bit.
        Images of one size (Telegram's are mostly 1280x960) are resized together, in chunks."""
        p = self.pre.presize
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in images.items():
            groups.setdefault(tuple(img.shape[-2:]), []).append(i)
        out = {}
        for (h, w), members in groups.items():
            left, top, right, bottom = crop_box(w, h, p)
            for start in range(0, len(members), 32):  # bounds the int32 working set
                chunk = members[start:start + 32]
                crops = torch.stack([images[i][:, top:bottom, left:right] for i in chunk])
                for i, square in zip(chunk, pil_bilinear(crops, p, p)):
                    out[i] = square
        return out
