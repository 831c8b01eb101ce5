"""A convolution whose backward pass exploits a sparse output gradient.

L_hard back-propagates only through the elements of (T - S_st)^2 at or above the 0.999
quantile: 0.1% of the student's first 384 output channels. The dense backward of that
half of the last student conv (weight and input gradients, 2 x 9.9 GFLOP at 256 px)
is then ~99.9% multiplications by zero. `sparse_grad_conv2d` computes the same
gradients from the non-zero entries only (gathering the input patches they touch and
scattering the weight rows back), and falls back to the dense backward when the
gradient is not sparse (above `max_density` non-zeros, e.g. a lowered hard_quantile).
The forward pass is an ordinary `F.conv2d` (stride 1, no padding, as in PDN-S).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: above this fraction of non-zero output-gradient entries the dense backward is cheaper
MAX_DENSITY = 0.02


class _SparseGradConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, max_density: float):
        out = F.conv2d(x, weight, bias)  # under autocast: bf16 inputs, like any conv
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.max_density = max_density
        ctx.compute_dtype = out.dtype
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        density = float(torch.count_nonzero(grad)) / grad.numel()
        if density > ctx.max_density:
            return (*_dense_backward(grad, x, weight, ctx.has_bias, ctx.compute_dtype, (need_x, need_w, need_b)),
                    None)
        b, c, i, j = grad.nonzero(as_tuple=True)
        values = grad[b, c, i, j].float()  # n
        out_channels, in_channels, kh, kw = weight.shape
        grad_x = grad_w = grad_b = None
        if need_w:
            patches = x.unfold(2, kh, 1).unfold(3, kw, 1)[b, :, i, j]  # n x C x kh x kw
            rows = values[:, None] * patches.reshape(len(values), -1).float()
            grad_w = torch.zeros(out_channels, in_channels * kh * kw, device=x.device, dtype=torch.float32)
            grad_w.index_add_(0, c, rows)
            grad_w = grad_w.view_as(weight).to(weight.dtype)
        if need_b and ctx.has_bias:
            grad_b = torch.zeros(out_channels, device=x.device, dtype=torch.float32).index_add_(0, c, values)
            grad_b = grad_b.to(weight.dtype)
        if need_x:
            w = weight.to(ctx.compute_dtype).float()
            contrib = values[:, None, None, None] * w[c]  # n x C x kh x kw
            grad_x = torch.zeros(x.shape[0], x.shape[2], x.shape[3], x.shape[1], device=x.device,
                                 dtype=torch.float32)  # B x H x W x C
            for di in range(kh):
                for dj in range(kw):
                    grad_x.index_put_((b, i + di, j + dj), contrib[:, :, di, dj], accumulate=True)
            grad_x = grad_x.permute(0, 3, 1, 2).to(x.dtype)  # channels-last strides, like the activations
        return grad_x, grad_w, grad_b, None


def _dense_backward(grad, x, weight, has_bias, compute_dtype, mask):
    w = weight.to(compute_dtype)
    grad = grad.to(compute_dtype)
    grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
        grad, x.to(compute_dtype), w, [weight.shape[0]] if has_bias else None,
        [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [mask[0], mask[1], mask[2] and has_bias],
    )
    return (grad_x.to(x.dtype) if grad_x is not None else None,
            grad_w.to(weight.dtype) if grad_w is not None else None,
            grad_b.to(weight.dtype) if grad_b is not None else None)


def sparse_grad_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                       max_density: float = MAX_DENSITY) -> torch.Tensor:
    """`F.conv2d(x, weight, bias)` (stride 1, no padding) with a sparse-aware backward."""
    return _SparseGradConv2d.apply(x, weight, bias, max_density)
