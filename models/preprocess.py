"""From image bytes to the tensor the model was validated on, exactly as fastai's validation path.

fastai's recipe (`item_tfms=Resize(460)`, `batch_tfms=[*aug_transforms(size=224, min_scale=0.75),
Normalize]`) does this to a validation image, read from fastai/vision/augment.py:

1. `Resize(460)`, crop method, on the PIL image: a centred crop of the largest square
   (`m = min(w, h)/460`, crop side `int(m*460)`, top-left `int(0.5*(w-side))`), then PIL BILINEAR
   resize to 460x460, giving uint8.
2. `IntToFloatTensor`: /255.
3. The affine transforms of `aug_transforms` run with an identity matrix: no change.
4. `RandomResizedCropGPU(224, min_scale=0.75)` takes the whole square and resamples it to 224 with
   fastai's `_grid_sample`, which first area-downsamples by `d = 460/224/2` when `d > 1`, then
   samples bilinearly with `align_corners=True`.
5. `Normalize`: (x - mean) / std.

Decoding adds what fastai leaves out and the import does too: EXIF orientation, alpha composited on
white, 16-bit and CMYK to 8-bit RGB, and limits on pixels and formats.
"""
from __future__ import annotations

import concurrent.futures as cf
import io
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.nn import functional as F

from models.artifact import Preprocessing
from models.errors import ImageRejected

# Formats a phone, a browser or a camera sends. MPO is the multi-picture JPEG some phones write.
ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF"})
# 12-MP phone photos are 4032x3024; 40 MP leaves room for 24-MP cameras and stops 100-MP pastes.
DEFAULT_MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class ImageLimits:
    """What an image may be. Pillow's own decompression-bomb guard stays on beneath this cap."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    formats: frozenset[str] = field(default=ALLOWED_FORMATS)
    min_side: int = 8


def open_checked(data: bytes, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Open `data` lazily (header only) and check format, frames and pixel count before any decode."""
    if not data:
        raise ImageRejected("empty", "The file is empty.")
    bomb = ImageRejected("too_large", "The image has too many pixels to be decoded safely.")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise bomb from None
    except UnidentifiedImageError:
        raise ImageRejected("not_image", "The file is not an image I can read.") from None
    except Exception as err:  # Pillow raises many types on broken headers
        raise ImageRejected("not_image", f"The file is not a readable image ({err.__class__.__name__}).") from err
    if img.format not in limits.formats:
        raise ImageRejected("format", f"{img.format or 'This'} images are not supported; send a JPEG, PNG or WEBP.")
    w, h = img.size
    # Pillow only warns between MAX_IMAGE_PIXELS and twice that; treat its warning zone as an error
    # here rather than with warnings.catch_warnings, which is process-global and this runs in threads.
    if Image.MAX_IMAGE_PIXELS and w * h > Image.MAX_IMAGE_PIXELS:
        raise bomb
    if w * h > limits.max_pixels or decoded_bytes(img) > 3 * limits.max_pixels:
        raise ImageRejected("too_large", f"The image is {w}x{h}, more than the {limits.max_pixels / 1e6:.0f}-megapixel limit"
                                         f"{' (counted as RGB: alpha and 16-bit cost more)' if w * h <= limits.max_pixels else ''}.")
    if min(w, h) < limits.min_side:
        raise ImageRejected("too_small", f"The image is only {w}x{h} pixels.")
    if getattr(img, "n_frames", 1) > 1 and img.format != "MPO":
        raise ImageRejected("animated", "Animated images are not supported; send a single photo.")
    return img


# Bytes per pixel that Pillow holds for a decoded image of each mode (the decode's own buffer).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "La": 2, "PA": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3,
               "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4, "I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2,
               "I;16N": 2}


def decoded_bytes(img: Image.Image) -> int:
    """What decoding `img` costs in memory, channels and alpha counted: the pixel limit is stated for RGB
    (3 bytes a pixel), so a 40-MP RGBA or 16-bit image costs more than a 40-MP JPEG and is held to that.
    A palette image with transparency becomes RGBA on its way to RGB."""
    per_pixel = _MODE_BYTES.get(img.mode, 4)
    if img.mode == "P" and "transparency" in img.info:
        per_pixel = 4
    return img.width * img.height * max(per_pixel, 3)


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB: alpha composited on white, palette expanded, 16-bit scaled, CMYK converted."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        arr = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")  # convert() to the same mode copies
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img if img.mode == "RGB" else img.convert("RGB")


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright) from an opened, not yet decoded image."""
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # a broken EXIF block must not lose the photo
        return 1


def decode_rgb(data: bytes, limits: ImageLimits = ImageLimits(), draft_to: int | None = None) -> Image.Image:
    """Fully decoded, upright, 8-bit RGB image from `data`, or ImageRejected with the reason.

    `draft_to` lets the JPEG decoder scale down by 1/2, 1/4 or 1/8 in the DCT while keeping both
    sides at least that many pixels; the later resize to the model's presize then has less to do.
    """
    img = open_checked(data, limits)
    try:
        if draft_to and img.format in ("JPEG", "MPO"):
            img.draft("RGB", (draft_to, draft_to))
        orientation = exif_orientation(img)
        img.load()
        if orientation != 1:  # exif_transpose copies even when there is nothing to do
            img = ImageOps.exif_transpose(img) or img
        return to_rgb(img)
    except ImageRejected:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageRejected("truncated", f"The image is damaged or truncated ({err}).") from err
    except Exception as err:  # a decoder bug for one file must not take the batch down
        raise ImageRejected("truncated", f"The image could not be decoded ({err.__class__.__name__}).") from err


def crop_box(width: int, height: int, presize: int) -> tuple[int, int, int, int]:
    """The centred crop of fastai's Resize(presize) on a validation image, with its float arithmetic."""
    m = width / presize if width / presize < height / presize else height / presize
    side_w, side_h = int(m * presize), int(m * presize)
    left, top = int(0.5 * (width - side_w)), int(0.5 * (height - side_h))
    return left, top, min(left + side_w, width), min(top + side_h, height)


_helper: cf.ThreadPoolExecutor | None = None


def _second_thread() -> cf.ThreadPoolExecutor:
    global _helper
    if _helper is None:
        _helper = cf.ThreadPoolExecutor(1, thread_name_prefix="kimchi-resize")
    return _helper


def presize_array(img: Image.Image, presize: int, split: bool = False) -> np.ndarray:
    """Resize(presize) as fastai applies it to a validation image: HxWx3 uint8, presize square.

    With `split`, a large square is resized as two halves on two threads (Pillow releases the GIL):
    each half's rows come out bit-identical to the whole resize when the downscale is 2x or more, as
    the box then only moves the filter centres, not the pixels they read.
    """
    box = crop_box(img.width, img.height, presize)
    # crop-then-resize, not resize(box=...): the latter reads past the crop at the borders.
    square = img.crop(box)
    side = square.height
    if not split or side < 2 * presize or square.width != side:
        return np.array(square.resize((presize, presize), Image.Resampling.BILINEAR))
    half = presize // 2
    cut = half * side / presize
    top = _second_thread().submit(square.resize, (presize, half), Image.Resampling.BILINEAR, (0, 0, side, cut))
    bottom = square.resize((presize, presize - half), Image.Resampling.BILINEAR, box=(0, cut, side, side))
    return np.concatenate([np.asarray(top.result()), np.asarray(bottom)])


def batch_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """fastai's validation resample of a float batch (B,3,P,P) to (B,3,size,size): area, then bilinear.

    This is the reference, as fastai's `_grid_sample` computes it; `fast_batch_resize` is the same
    linear map applied as a few gathers per axis.
    """
    d = min(x.shape[-2] / size, x.shape[-1] / size) / 2
    if d > 1:
        x = F.interpolate(x, scale_factor=1 / d, mode="area", recompute_scale_factor=True)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)


@lru_cache(maxsize=16)
def _resize_taps(presize: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, weight), each (size, taps): the rows of the 1-D map that `batch_resize` applies per axis.

    Area-then-bilinear is linear and separable, so pushing the identity through it gives its matrix;
    each output pixel reads only a handful of inputs, kept here as taps.
    """
    eye = torch.eye(presize, dtype=torch.float64).view(presize, 1, presize, 1)
    d = presize / size / 2
    if d > 1:
        eye = F.interpolate(eye, scale_factor=(1 / d, 1), mode="area", recompute_scale_factor=True)
    matrix = F.interpolate(eye, size=(size, 1), mode="bilinear", align_corners=True).view(presize, size).T
    taps = int((matrix != 0).sum(1).max())
    weight, index = matrix.abs().topk(taps, dim=1)
    weight = matrix.gather(1, index)
    return index, weight.float()


def fast_batch_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """`batch_resize` as the same separable map, in two passes that only gather whole rows: the rows of
    the (B, H, W, 3) view, then, transposed, its columns. Equal to the reference within ~2e-5; on one
    CPU thread 1.6 ms for a 460 square where F.interpolate takes 4-11 ms and rows-then-matmul 4."""
    index, weight = _resize_taps(x.shape[-1], size)
    index, weight = index.to(x.device), weight.to(x.device, x.dtype)

    def taps(t: torch.Tensor, dim: int, trailing: int) -> torch.Tensor:
        """Output row i along `dim` = sum over taps k of weight[i, k] * input row index[i, k]."""
        w = weight.view(*weight.shape, *([1] * trailing))
        out = t.index_select(dim, index[:, 0]) * w[:, 0]
        for k in range(1, index.shape[1]):
            out += t.index_select(dim, index[:, k]) * w[:, k]
        return out

    rows = taps(x.permute(0, 2, 3, 1), 1, 2)  # (B, H', W, 3); the permute is free for HWC-born squares
    cols = taps(rows.permute(0, 3, 2, 1).contiguous(), 2, 1)  # (B, 3, W', H')
    return cols.transpose(-1, -2)


def normalize(x: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    if not pre.normalize:
        return x
    mean = torch.tensor(pre.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def to_batch(squares: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """uint8 (B,P,P,3) or (B,3,P,P) squares to the normalised float batch the model takes."""
    if squares.shape[-1] == 3 and squares.shape[1] != 3:
        squares = squares.permute(0, 3, 1, 2)
    x = squares.float().div_(255.0)
    # Measured on a 2-core CPU: gathers win for one image (1.8 vs 3.9 ms), F.interpolate for 32.
    if x.shape[0] <= 2 and x.shape[-1] == x.shape[-2]:
        return normalize(fast_batch_resize(x, pre.size), pre)
    return normalize(batch_resize(x, pre.size), pre)
