"""DSDH's alternating optimisation, shared by the DSDH and DSDH-C plugins (a plugin cannot import another)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmark.victim.hashing import logistic_pair_loss, pairwise_similarity
from benchmark.victim.model import binarize


@dataclass
class DSDHState:
    """DSDH's alternating optimisation (Li et al., NeurIPS 2017), shared by the DSDH and DSDH-C plugins.

    U (N, K) is a bank of the training outputs, filled by ``observe``; Y (N, C) the labels; B (N, K)
    the discrete codes and W (K, C) the classifier, set by ``discrete_step`` after each epoch (before the
    first, b = sign(u) and W = 0). The equations are in methods/hashing/dsdh.py.
    """

    U: torch.Tensor
    Y: torch.Tensor
    B: torch.Tensor
    W: torch.Tensor
    have_codes: bool = False

    @classmethod
    def start(cls, labels: torch.Tensor, bits: int, device: torch.device) -> "DSDHState":
        n, classes = labels.shape
        return cls(U=torch.zeros(n, bits, device=device), Y=labels.to(device),
                   B=torch.zeros(n, bits, device=device), W=torch.zeros(bits, classes, device=device))

    def warm_start(self, u: torch.Tensor, mu: float, nu: float, eta: float, rounds: int) -> None:
        """State after training: the bank holds the relaxed outputs u (N, K) of the whole training set, and
        B, W come from a discrete step on it (the reference code's ``preinstall`` then ``update_band_W``)."""
        self.U = u.detach().clone()
        self.discrete_step(mu, nu, eta, rounds)

    def observe(self, u: torch.Tensor, index: torch.Tensor) -> None:
        """Record the relaxed clean outputs u (B, K) of training items ``index`` in the bank U."""
        self.U[index] = u.detach()

    def network_loss(self, u: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, pairs: str, mu: float,
                     nu: float, eta: float) -> torch.Tensor:
        """The network step's loss on relaxed outputs u (B, K); reads the bank, never writes it."""
        others, other_labels = (self.U, self.Y) if pairs == "memory" else (u, labels)
        theta = 0.5 * u @ others.t()
        likelihood = logistic_pair_loss(theta, pairwise_similarity(labels, other_labels)).mean()
        b = self.B[index] if self.have_codes else binarize(u.detach())  # (B, K)
        quantisation = (b - u).pow(2).sum() / (len(u) * len(self.U))
        classification = (labels - b @ self.W).pow(2).mean()
        return likelihood + eta * quantisation + mu * classification + nu * self.W.pow(2).mean()

    @torch.no_grad()
    def discrete_step(self, mu: float, nu: float, eta: float, rounds: int) -> None:
        if not self.have_codes:
            self.B, self.have_codes = binarize(self.U), True
        self.B, self.W = dsdh_discrete_update(self.B, self.U, self.Y, mu, nu, eta, rounds)


def dsdh_discrete_update(B: torch.Tensor, U: torch.Tensor, Y: torch.Tensor, mu: float, nu: float, eta: float,
                         rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DSDH's discrete cyclic coordinate descent on codes B (N, K) and classifier W (K, C); rows are items.

    Li et al., NeurIPS 2017, Sec. 3.2: W by ridge regression, then each bit column of B in closed form
    given the others.
    """
    bits = B.shape[1]
    B = B.clone()
    eye = torch.eye(bits, dtype=U.dtype, device=U.device)
    for _ in range(rounds):
        W = torch.linalg.solve(B.t() @ B + nu / mu * eye, B.t() @ Y)  # (K, C) ridge regression
        P = Y @ W.t() + eta / mu * U                                   # (N, K)
        for k in range(bits):
            rest = [j for j in range(bits) if j != k]
            B[:, k] = binarize(P[:, k] - B[:, rest] @ (W[rest] @ W[k]))
    return B, W
