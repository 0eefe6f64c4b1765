"""Pieces shared by learned defenses and attacks: the gradient reversal layer and SMMD.

    z = reverse_gradient(x, scale=1.0)    # identity forward; backward multiplies the gradient by -scale
    d = smmd(h_clean, h_protected, s)      # PPL's similarity-aware MMD between two domains' codes
"""
from __future__ import annotations

from typing import Sequence

import torch


class _GradientReversal(torch.autograd.Function):
    """Re(x) = x; dRe/dx = -lambda I (Ganin and Lempitsky, ICML 2015; PPL Eq. 13)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """The gradient reversal layer: ``x`` unchanged, its gradient multiplied by ``-scale`` on the way back."""
    return _GradientReversal.apply(x, scale)


def gaussian_kernel(a: torch.Tensor, b: torch.Tensor, bandwidths: Sequence[float]) -> torch.Tensor:
    """Mean over bandwidths s of exp(-||a_i - b_j||^2 / s), (A, B); a multi-kernel as in CDD (Kang et al. 2019)."""
    distances = torch.cdist(a, b).pow(2)  # (A, B)
    return torch.stack([torch.exp(-distances / s) for s in bandwidths]).mean(0)


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (values * weights).sum() / weights.sum().clamp(min=1)


def smmd(clean: torch.Tensor, protected: torch.Tensor, similar: torch.Tensor,
         bandwidths: Sequence[float]) -> torch.Tensor:
    """Similarity-aware MMD, PPL Eq. 7-8: D_s = D_s^+ - D_s^-, a scalar.

    ``clean`` h(x) and ``protected`` h(z) are (n, K) codes of the same n items in the two domains;
    ``similar`` (n, n) is true where items i and j are semantically similar (S_ij > 0). For * in {+, -},
    with S* the indicator of similar (+) or dissimilar (-) pairs,

        D_s^* = E_S*[k(h(x_i), h(x_j))] + E_S*[k(h(z_i), h(z_j))] - 2 E_S*[k(h(x_i), h(z_j))],

    each E_S* a mean over the pairs (i, j) that S* selects (PPL's sum weighted by S*_ij / sum S*_ij).
    It is zero when the domains coincide; it grows as similar items drift apart across the domains,
    and shrinks as dissimilar ones move together.
    """
    weights = {+1: similar.float(), -1: (~similar.bool()).float()}
    k_cc = gaussian_kernel(clean, clean, bandwidths)          # (n, n)
    k_pp = gaussian_kernel(protected, protected, bandwidths)  # (n, n)
    k_cp = gaussian_kernel(clean, protected, bandwidths)      # (n, n)
    discrepancy = {sign: _weighted_mean(k_cc, w) + _weighted_mean(k_pp, w) - 2 * _weighted_mean(k_cp, w)
                   for sign, w in weights.items()}
    return discrepancy[+1] - discrepancy[-1]
