"""Image backbones."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from learners.registry import BACKBONES


def _block(c_in: int, c_out: int, strided: bool) -> nn.Sequential:
    if strided:  # Finn et al. 2017: stride-2 convolutions instead of max-pooling
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2))


@BACKBONES.register("conv4")
class Conv4(nn.Module):
    """The Conv-4 backbone of Vinyals et al. (2016) / Snell et al. (2017).

    Four blocks of 3x3 convolution, batch norm, ReLU and 2x2 max-pooling
    (or stride-2 convolutions with ``strided=True``, as in Finn et al. 2017).

    Args:
        image_shape: ``(C, H, W)`` of the input.
        hidden: channels per block (64 for Conv-4-64, 32 for Conv-4-32).
        strided: use stride-2 convolutions instead of max-pooling.

    Input ``[B, C, H, W]`` -> output ``[B, out_dim]`` (flattened feature map).
    """

    def __init__(self, image_shape: tuple[int, int, int], hidden: int = 64, strided: bool = False) -> None:
        super().__init__()
        c = image_shape[0]
        self.blocks = nn.Sequential(*[_block(c if i == 0 else hidden, hidden, strided) for i in range(4)])
        with torch.no_grad():
            self.out_dim = int(self.blocks(torch.zeros(2, *image_shape)).flatten(1).shape[1])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x).flatten(1)
