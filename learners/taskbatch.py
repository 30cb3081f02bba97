"""Task-batched forward passes: all tasks of a meta-batch in one grouped convolution per layer.

MAML's inner loop gives every task its own copy of the weights. Instead of a Python loop
over tasks, the tasks' activations are laid side by side along the channel axis,
``[B, T*C, H, W]`` (the "grouped layout"), and each layer runs once for all ``T`` tasks:

* ``Conv2d``: one grouped convolution with ``groups = T * conv.groups`` and the tasks'
  weights stacked to ``[T*O, I, kh, kw]``; a convolution that reads few inputs per output (a
  first layer on 1 or 3 channels) runs instead as one batched matmul over its kernel taps;
* ``BatchNorm2d`` without running statistics (MAML's transductive batch norm): one
  ``F.batch_norm`` over ``T*C`` channels, so each task gets its own batch statistics;
* activations and pooling: applied as they are (they act on each channel alone).

The gradient of the summed task losses with respect to the per-task weights ``[T, ...]`` is
each task's own gradient, so an inner SGD step taken on them is exactly the per-task loop's
(``tests/test_maml.py`` compares the two, second order included). Only modules listed here
are supported; :func:`supports` says whether a module can run this way.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: modules without parameters that act on each channel on its own
PER_CHANNEL = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.MaxPool2d, nn.AvgPool2d, nn.Identity)


def supports(module: nn.Module) -> bool:
    """Whether :func:`forward` can run ``module`` (and everything inside it) task-batched."""
    from learners.backbones import Conv4

    if isinstance(module, Conv4):
        return supports(module.blocks)
    if isinstance(module, nn.Sequential):
        return all(supports(m) for m in module)
    if isinstance(module, nn.Conv2d):
        return module.padding_mode == "zeros" and isinstance(module.padding, tuple)
    if isinstance(module, nn.BatchNorm2d):
        return module.running_mean is None  # transductive: batch statistics only
    return isinstance(module, PER_CHANNEL)


def to_grouped(x: Tensor) -> Tensor:
    """``[T, B, C, H, W]`` -> grouped layout ``[B, T*C, H, W]``."""
    t, b, c, h, w = x.shape
    return x.transpose(0, 1).reshape(b, t * c, h, w)


def flatten_grouped(h: Tensor, n_tasks: int) -> Tensor:
    """Grouped layout ``[B, T*C, H, W]`` -> per-task flattened features ``[T, B, C*H*W]``."""
    b = h.shape[0]
    return h.reshape(b, n_tasks, -1).transpose(0, 1)


def forward(module: nn.Module, params: Mapping[str, Tensor], h: Tensor, n_tasks: int, prefix: str = "",
            channels_last: bool = False) -> Tensor:
    """Run ``module`` on grouped-layout input ``h [B, T*C, H, W]`` with per-task parameters.

    Args:
        params: parameter name (as in ``module.named_parameters()``, after ``prefix``) ->
            per-task values ``[T, *shape]``.
        n_tasks: ``T``.
        channels_last: run the activations channels-last (the weights stay NCHW).

    Returns the grouped-layout output, or ``[T, B, D]`` features for a :class:`~learners.backbones.Conv4`.
    """
    from learners.backbones import Conv4

    def p(name: str) -> Tensor:
        return params[prefix + name]

    if isinstance(module, Conv4):
        return flatten_grouped(forward(module.blocks, params, h, n_tasks, prefix + "blocks.", channels_last), n_tasks)
    if isinstance(module, nn.Sequential):
        for name, child in module.named_children():
            h = forward(child, params, h, n_tasks, f"{prefix}{name}.", channels_last)
        return h
    if isinstance(module, nn.Conv2d):
        if _few_inputs_per_output(module):
            return _conv_by_taps(module, p("weight"), p("bias") if module.bias is not None else None, h, n_tasks,
                                 channels_last)
        # NCHW weights on purpose (.contiguous()): with channels-last weights oneDNN's grouped
        # convolutions (torch 2.14, CPU) gave meta-gradients up to 0.6% off the per-task loop's
        weight = p("weight").reshape(-1, *p("weight").shape[2:]).contiguous()
        bias = p("bias").reshape(-1) if module.bias is not None else None
        layout = torch.channels_last if channels_last else torch.contiguous_format
        return F.conv2d(h.contiguous(memory_format=layout), weight, bias, module.stride, module.padding, module.dilation,
                        n_tasks * module.groups)
    if isinstance(module, nn.BatchNorm2d):
        weight = p("weight").reshape(-1) if module.weight is not None else None  # None: no scale
        bias = p("bias").reshape(-1) if module.bias is not None else None
        return F.batch_norm(h, None, None, weight, bias, training=True, eps=module.eps)
    if isinstance(module, PER_CHANNEL):
        return module(h)
    raise TypeError(f"{type(module).__name__} cannot run task-batched; check taskbatch.supports() first")


#: largest ``in_channels / groups * kh * kw`` for which :func:`_conv_by_taps` replaces the grouped convolution
MAX_TAPS = 27


def _few_inputs_per_output(conv: nn.Conv2d) -> bool:
    """A convolution whose outputs each read few inputs (a first layer on 1 or 3 channels)."""
    kh, kw = conv.kernel_size
    return conv.groups == 1 and conv.in_channels * kh * kw <= MAX_TAPS


def _conv_by_taps(conv: nn.Conv2d, weight: Tensor, bias: Tensor | None, h: Tensor, n_tasks: int,
                  channels_last: bool = False) -> Tensor:
    """The grouped convolution of :func:`forward` as one batched matmul over its kernel taps.

    With one input channel per task, oneDNN's grouped convolution (torch 2.14, CPU) is slow;
    gathering the ``C*kh*kw`` shifted copies of the input and multiplying them by each task's
    ``[O, C*kh*kw]`` weights is faster, forward and backward (docs/speed.md, "Design choices").

    ``weight [T, O, C, kh, kw]``, ``bias [T, O]``, ``h [B, T*C, H, W]`` -> ``[B, T*O, Ho, Wo]``
    (NCHW, or channels-last memory with ``channels_last``).
    """
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = conv.kernel_size, conv.stride, conv.dilation, conv.padding
    b, _, height, width = h.shape
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    padded = F.pad(h, (pw, pw, ph, ph)).unflatten(1, (n_tasks, -1))  # [B, T, C, H + 2ph, W + 2pw]
    taps = [padded[..., y * dh:y * dh + sh * (out_h - 1) + 1:sh, x * dw:x * dw + sw * (out_w - 1) + 1:sw]
            for y in range(kh) for x in range(kw)]  # each [B, T, C, Ho, Wo]
    out_channels = weight.shape[1]
    weights = weight.reshape(n_tasks, out_channels, -1)  # [T, O, C*kh*kw]
    if channels_last:  # per task: [B*Ho*Wo, C*kh*kw] @ [C*kh*kw, O], then tasks side by side per pixel
        columns = torch.stack(taps, -1).permute(1, 0, 3, 4, 2, 5).reshape(n_tasks, b * out_h * out_w, -1)
        out = (torch.bmm(columns, weights.transpose(1, 2)) if bias is None else
               torch.baddbmm(bias.unsqueeze(1), columns, weights.transpose(1, 2)))  # [T, B*Ho*Wo, O]
        out = out.unflatten(1, (b, out_h, out_w)).permute(1, 2, 3, 0, 4).reshape(b, out_h, out_w, -1)
        return out.permute(0, 3, 1, 2)
    # per (image, task): [O, C*kh*kw] @ [C*kh*kw, Ho*Wo], which is the grouped layout
    columns = torch.stack(taps, 3).reshape(b * n_tasks, -1, out_h * out_w)  # from [B, T, C, kh*kw, Ho, Wo]
    weights = weights.expand(b, -1, -1, -1).reshape(b * n_tasks, out_channels, -1)
    if bias is None:
        out = torch.bmm(weights, columns)
    else:
        out = torch.baddbmm(bias.reshape(1, n_tasks, out_channels, 1).expand(b, -1, -1, -1).reshape(
            b * n_tasks, out_channels, 1), weights, columns)
    return out.view(b, n_tasks * out_channels, out_h, out_w)


def linear(features: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Per-task linear layer: ``features [T, B, D]``, ``weight [T, N, D]``, ``bias [T, N]`` -> ``[T, B, N]``."""
    return torch.baddbmm(bias.unsqueeze(1), features, weight.transpose(1, 2))
