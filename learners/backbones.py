"""Image backbones."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from learners.registry import BACKBONES


def _block(c_in: int, c_out: int, strided: bool) -> nn.Sequential:
    if strided:  # Finn et al. 2017: stride-2 convolutions instead of max-pooling
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())
    # pooling before the ReLU: max-pooling and ReLU commute exactly (ReLU is monotone), and the
    # ReLU then runs on a quarter of the values, which matters where memory bandwidth is the limit
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.MaxPool2d(2), nn.ReLU())


@BACKBONES.register("conv4")
class Conv4(nn.Module):
    """The Conv-4 backbone of Vinyals et al. (2016) / Snell et al. (2017).

    Four blocks of 3x3 convolution, batch norm, ReLU and 2x2 max-pooling
    (or stride-2 convolutions with ``strided=True``, as in Finn et al. 2017). The pooling
    runs before the ReLU, which gives the same values and gradients with less memory traffic.

    Args:
        image_shape: ``(C, H, W)`` of the input.
        hidden: channels per block (64 for Conv-4-64, 32 for Conv-4-32).
        strided: use stride-2 convolutions instead of max-pooling.
        channels_last: run in channels-last memory format (faster oneDNN convolutions on CPU;
            the same results to floating-point tolerance).

    Input ``[B, C, H, W]`` -> output ``[B, out_dim]`` (flattened feature map).
    """

    def __init__(self, image_shape: tuple[int, int, int], hidden: int = 64, strided: bool = False,
                 channels_last: bool = True) -> None:
        super().__init__()
        self.channels_last = channels_last
        c = image_shape[0]
        if not strided and min(image_shape[1:]) < 16:
            from tasks.errors import BenchmarkError

            raise BenchmarkError(f"backbone conv4 pools four times and needs images of at least 16x16, got "
                                 f"{image_shape[1]}x{image_shape[2]}; use larger images (e.g. --set "
                                 "dataset_options.image_size=28) or backbone_options.strided=true")
        self.blocks = nn.Sequential(*[_block(c if i == 0 else hidden, hidden, strided) for i in range(4)])
        if channels_last:  # weights too: a one-channel input alone is ambiguous, and convolutions then pick NCHW
            self.blocks.to(memory_format=torch.channels_last)
        with torch.no_grad():
            self.out_dim = int(self.blocks(torch.zeros(2, *image_shape)).flatten(1).shape[1])

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.blocks(x).flatten(1)


@BACKBONES.register("resnet18")
class ResNet18(nn.Module):
    """torchvision's ResNet-18 (He et al. 2016) with the final fc removed: 512-d pooled features.

    With ``pretrained=True`` it loads torchvision's ImageNet weights
    (``ResNet18_Weights.IMAGENET1K_V1``, downloaded once into the torch hub cache)
    and is frozen by default: no gradients, batch norm always in eval mode.
    Inputs are the dataset's normalised images (per-channel standardised with
    the dataset's own statistics, not ImageNet's); one-channel images are
    repeated to three.

    Args:
        image_shape: ``(C, H, W)`` of the input.
        pretrained: load the ImageNet weights (tests use ``False``: random init, no download).
        frozen: freeze the weights; defaults to ``pretrained``.
        input_size: resize inputs to this square size first (e.g. 224); 0 keeps them as they are.

    Input ``[B, C, H, W]`` -> output ``[B, 512]``.
    """

    def __init__(self, image_shape: tuple[int, int, int], pretrained: bool = False, frozen: bool | None = None,
                 input_size: int = 0) -> None:
        super().__init__()
        from torchvision.models import ResNet18_Weights, resnet18

        from tasks.errors import BenchmarkError

        if image_shape[0] not in (1, 3):
            raise BenchmarkError(f"backbone resnet18 takes 1- or 3-channel images, got shape {image_shape}")
        try:
            model = resnet18(weights=ResNet18_Weights.IMAGENET1K_V1 if pretrained else None)
        except (OSError, RuntimeError) as err:
            raise BenchmarkError(
                f"could not load the pretrained resnet18 weights ({err}); put resnet18-f37072fd.pth into "
                "$TORCH_HOME/hub/checkpoints or set backbone_options.pretrained=false"
            ) from None
        model.fc = nn.Identity()
        self.model = model
        self.frozen = pretrained if frozen is None else frozen
        self.input_size = input_size
        if self.frozen:
            self.model.requires_grad_(False)
            self.model.eval()
        self.out_dim = 512

    def train(self, mode: bool = True) -> "ResNet18":
        """A frozen network stays in eval mode (its batch-norm statistics never change)."""
        return super().train(mode and not self.frozen)

    def preprocessing(self, mean, std) -> str:
        """What turns the dataset's uint8 images into this network's input (part of the feature-cache key)."""
        return (f"normalise(mean={tuple(mean)},std={tuple(std)});gray->rgb repeat;"
                f"resize={self.input_size or 'none'}(bilinear);fc=identity")

    @torch.no_grad()
    def precompute(self, dataset, device: torch.device | str = "cpu", batch_size: int = 256) -> Tensor:
        """Features of every item of ``dataset``, ``[n_items, 512]``, cached on disk (frozen weights only).

        Computed once per (weights, preprocessing, dataset contents) and reused across runs; see
        :mod:`tasks.features`. The harness feeds these rows as the ``"image"`` input, which
        :meth:`forward` passes through.
        """
        from tasks.errors import BenchmarkError
        from tasks.features import frozen_image_features, weights_hash

        if not self.frozen:
            raise BenchmarkError("only a frozen resnet18 has fixed per-item features to cache")
        return frozen_image_features(self, "resnet18", weights_hash(self.model), dataset, device, batch_size)

    def forward(self, x: Tensor) -> Tensor:
        if self.frozen and x.dim() == 2 and x.shape[1] == self.out_dim:
            return x  # features precomputed by precompute()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.input_size and x.shape[-1] != self.input_size:
            x = nn.functional.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                                          align_corners=False)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.model(x)
