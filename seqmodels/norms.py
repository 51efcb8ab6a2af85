"""RMSNorm (Zhang & Sennrich 2019) with a hand-written backward.

torch's `nn.RMSNorm` runs on CPU as a chain of elementwise ops, each saved for autograd,
so forward + backward costs 4-7x `nn.LayerNorm` (which has fused kernels both ways).
torch has no fused RMSNorm kernel on CPU (`aten._fused_rms_norm` is the same chain of
ops, and has no backward), so this module writes forward and the closed-form backward in
as few passes over the data as torch's ops allow, saving only x and 1/rms. Same maths, same parameter name (`weight`) and the same
default eps as `nn.RMSNorm`, so checkpoints load either way.

    y = x * r * w,  r = 1 / sqrt(mean(x^2) + eps)
    dx = r * (g*w - x_hat * mean(g*w * x_hat)),  x_hat = x * r
    dw = sum over rows of g * x_hat
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable


def _eps(eps: float | None, dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps if eps is None else eps


def _wide(t: torch.Tensor) -> torch.Tensor:
    """t in fp32, or as it is when it is already fp32 / fp64."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _rstd(xf: torch.Tensor, eps: float) -> torch.Tensor:
    """1 / sqrt(mean(x^2) + eps) per row, (..., 1): one read of x (a dot product per row)."""
    return torch.linalg.vecdot(xf, xf).div_(xf.shape[-1]).add_(eps).rsqrt_().unsqueeze(-1)


class _RMSNormFn(torch.autograd.Function):
    """Forward and backward in as few passes over x as torch's ops allow: the dot products
    and the weight gradient (a (1, N) @ (N, D) matrix product) read x without writing a
    temporary, where autograd's graph of nn.RMSNorm writes one per op."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        # Autocast would run the dot products (matmul-like ops) in bf16: a norm's statistics
        # stay in the input's precision, or fp32 for low-precision inputs, as torch does.
        with torch.autocast(x.device.type, enabled=False):
            xf = _wide(x)
            rstd = _rstd(xf, eps)
            ctx.save_for_backward(x, weight, rstd)
            return (xf * rstd).mul_(weight).to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        with torch.autocast(x.device.type, enabled=False):
            # In fp32 whatever the input dtype: bf16 sums would lose the gradient.
            xf, gf = _wide(x), _wide(g)
            gw = gf * _wide(weight)
            # dx = r * gw - x * r^3 * mean(gw * x)  (the module docstring's dx, expanded)
            coef = torch.linalg.vecdot(gw, xf).unsqueeze(-1).mul_(rstd.pow(3)).div_(x.shape[-1])
            dx = torch.addcmul(gw.mul_(rstd), xf, coef, value=-1)
            dw = None
            if ctx.needs_input_grad[1]:
                dw = (rstd.reshape(1, -1) @ (gf * xf).reshape(-1, x.shape[-1])).view(-1)
                dw = dw.to(weight.dtype)
            return dx.to(x.dtype), dw, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """RMSNorm over the last dimension of x; weight (D,), in x's dtype."""
    eps = _eps(eps, x.dtype)
    if weight.dtype != x.dtype:
        weight = weight.to(x.dtype)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _RMSNormFn.apply(x, weight, eps)
    # No graph to record (decoding): torch's own op, one call from Python per norm.
    return torch.rms_norm(x, [x.shape[-1]], weight, eps)


class RMSNorm(nn.Module):
    """Drop-in for `nn.RMSNorm(d, eps)` over the last dimension (see the module docstring)."""

    def __init__(self, d: int, eps: float | None = None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
