"""A 2-d convolution whose derivatives of every order are grouped convolutions.

PyTorch's double backward of a convolution (``_convolution_double_backward``, torch 2.14)
computes the weight part of a grouped convolution's second derivative one group at a time: a
Python-free but serial loop of ``groups`` small convolutions and a concatenation. MAML's
task-batched inner loop (:mod:`learners.taskbatch`) runs convolutions with ``groups = T`` (one
per task), so second-order meta-gradients pay ``T`` small convolutions per layer there.

:func:`conv2d` computes the same convolution with an autograd function whose backward is built
from three ops, each one oneDNN call for all groups:

* ``conv(x, w)``, the forward;
* ``conv_t(g, w)``: the gradient with respect to the input (a transposed convolution);
* ``wgrad(x, g)``: the gradient with respect to the weight.

The three are closed under differentiation (each is bilinear, and the derivative of each with
respect to either argument is another of the three), so derivatives of any order stay grouped.
Without ``create_graph`` the backward is the single ``aten.convolution_backward`` that PyTorch
itself calls. Values and first and second derivatives equal ``F.conv2d``'s (float64 tests in
``tests/test_speed.py``).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

_backward = torch.ops.aten.convolution_backward.default


class Geometry(NamedTuple):
    """Stride, padding, dilation (pairs) and groups of a convolution."""
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int


def _conv(x: Tensor, w: Tensor, geo: Geometry) -> Tensor:
    return F.conv2d(x, w, None, geo.stride, geo.padding, geo.dilation, geo.groups)


def _input_grad(g: Tensor, x: Tensor, w: Tensor, geo: Geometry) -> Tensor:
    """Gradient of ``<conv(x, w), g>`` with respect to ``x`` (``x`` gives only the shape)."""
    return _backward(g, x, w, None, geo.stride, geo.padding, geo.dilation, False, [0, 0], geo.groups,
                     [True, False, False])[0]


def _weight_grad(g: Tensor, x: Tensor, w: Tensor, geo: Geometry) -> Tensor:
    """Gradient of ``<conv(x, w), g>`` with respect to ``w`` (``w`` gives only the shape)."""
    return _backward(g, x, w, None, geo.stride, geo.padding, geo.dilation, False, [0, 0], geo.groups,
                     [False, True, False])[1]


class _Conv(torch.autograd.Function):
    """``conv(x, w) + b``."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None, geo: Geometry) -> Tensor:
        ctx.save_for_backward(x, w)
        ctx.geo, ctx.has_bias = geo, b is not None
        return F.conv2d(x, w, b, geo.stride, geo.padding, geo.dilation, geo.groups)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, ...]:
        x, w = ctx.saved_tensors
        geo, (need_x, need_w, need_b, _) = ctx.geo, ctx.needs_input_grad
        if not torch.is_grad_enabled():  # first order: PyTorch's own single backward call
            gx, gw, gb = _backward(g, x, w, [w.shape[0]] if ctx.has_bias else None, geo.stride, geo.padding,
                                   geo.dilation, False, [0, 0], geo.groups, [need_x, need_w, need_b and ctx.has_bias])
            return gx, gw, gb, None
        gx = _ConvT.apply(g, w, x.detach(), geo) if need_x else None
        gw = _WGrad.apply(x, g, w.detach(), geo) if need_w else None
        gb = g.sum((0, 2, 3)) if need_b and ctx.has_bias else None
        return gx, gw, gb, None


class _ConvT(torch.autograd.Function):
    """``conv_t(g, w)``: the input gradient of a convolution, shaped like ``like``."""

    @staticmethod
    def forward(ctx, g: Tensor, w: Tensor, like: Tensor, geo: Geometry) -> Tensor:
        ctx.save_for_backward(g, w, like)
        ctx.geo = geo
        return _input_grad(g, like, w, geo)

    @staticmethod
    def backward(ctx, h: Tensor) -> tuple[Tensor | None, ...]:
        g, w, like = ctx.saved_tensors
        geo, (need_g, need_w, _, _) = ctx.geo, ctx.needs_input_grad
        # <conv_t(g, w), h> = <g, conv(h, w)>
        if not torch.is_grad_enabled():
            return (_conv(h, w, geo) if need_g else None, _weight_grad(g, h, w, geo) if need_w else None, None, None)
        return (_Conv.apply(h, w, None, geo) if need_g else None, _WGrad.apply(h, g, w.detach(), geo) if need_w else None,
                None, None)


class _WGrad(torch.autograd.Function):
    """``wgrad(x, g)``: the weight gradient of a convolution, shaped like ``like``."""

    @staticmethod
    def forward(ctx, x: Tensor, g: Tensor, like: Tensor, geo: Geometry) -> Tensor:
        ctx.save_for_backward(x, g, like)
        ctx.geo = geo
        return _weight_grad(g, x, like, geo)

    @staticmethod
    def backward(ctx, v: Tensor) -> tuple[Tensor | None, ...]:
        x, g, _ = ctx.saved_tensors
        geo, (need_x, need_g, _, _) = ctx.geo, ctx.needs_input_grad
        # <wgrad(x, g), v> = <conv(x, v), g> = <x, conv_t(g, v)>
        if not torch.is_grad_enabled():
            return (_input_grad(g, x, v, geo) if need_x else None, _conv(x, v, geo) if need_g else None, None, None)
        return (_ConvT.apply(g, v, x.detach(), geo) if need_x else None, _Conv.apply(x, v, None, geo) if need_g else None,
                None, None)


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int], padding: tuple[int, int],
           dilation: tuple[int, int], groups: int) -> Tensor:
    """``F.conv2d`` (same arguments, padding as a pair) with grouped derivatives of every order."""
    return _Conv.apply(x, weight, bias, Geometry(tuple(stride), tuple(padding), tuple(dilation), groups))
