"""Pillow's BILINEAR resize on uint8 tensors, bit for bit, so the GPU path feeds the model exactly
what fastai's `Resize` (which runs Pillow) would.

Pillow resamples with a triangle filter widened by the scale factor, its coefficients normalised and
rounded to 22-bit fixed point, a horizontal pass rounded to uint8, then a vertical pass
(libImaging/Resample.c). The same integer arithmetic runs here as gathers over the few taps that
each output pixel uses. torch's own antialiased bilinear differs by one level here and there, which
a trained model can turn into a few percent of probability.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

_PRECISION_BITS = 32 - 8 - 2


@lru_cache(maxsize=64)
def _pil_coeffs(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, weight) of shape (out_size, taps): Pillow's precompute_coeffs + normalize_coeffs_8bpc."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    taps = int(math.ceil(support)) * 2 + 1
    index = torch.zeros((out_size, taps), dtype=torch.int64)
    weight = torch.zeros((out_size, taps), dtype=torch.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        ss = 1.0 / filterscale
        ws = [max(0.0, 1.0 - abs((x + xmin - center + 0.5) * ss)) for x in range(xmax)]
        total = sum(ws)
        for x, w in enumerate(ws):
            w = w / total if total != 0.0 else w
            fixed = int(-0.5 + w * (1 << _PRECISION_BITS)) if w < 0 else int(0.5 + w * (1 << _PRECISION_BITS))
            index[xx, x] = xmin + x
            weight[xx, x] = fixed
    return index, weight


def _pass(x: torch.Tensor, out_size: int, dim: int) -> torch.Tensor:
    """One Pillow pass along `dim` (-1 horizontal, -2 vertical) of an integer tensor, rounded to uint8 range."""
    in_size = x.shape[dim]
    index, weight = _pil_coeffs(in_size, out_size)
    index, weight = index.to(x.device), weight.to(device=x.device, dtype=torch.int32)
    acc = torch.full((*x.shape[:dim], out_size, *x.shape[dim + 1:]) if dim != -1 else (*x.shape[:-1], out_size),
                     1 << (_PRECISION_BITS - 1), dtype=torch.int32, device=x.device)
    for t in range(index.shape[1]):
        w = weight[:, t]
        if not bool(w.any()):
            continue
        taken = x.index_select(dim, index[:, t])
        shape = [1] * x.dim()
        shape[dim] = out_size
        acc += taken * w.view(shape)
    return (acc >> _PRECISION_BITS).clamp_(0, 255)


def pil_bilinear(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pillow's `Image.resize((width, height), BILINEAR)` of uint8 (..., H, W) images, exactly."""
    if x.shape[-2:] == (height, width):
        return x.clone()
    y = x.to(torch.int32)
    if x.shape[-1] != width:
        y = _pass(y, width, -1)
    if x.shape[-2] != height:
        y = _pass(y, height, -2)
    return y.to(torch.uint8)
