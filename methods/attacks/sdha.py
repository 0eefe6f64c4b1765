"""SDHA: Smart Deep Hashing Attack (Lu, Chen, Sun, Wang, Wang, Yang, "A Smart Adversarial Attack on Deep
Hashing Based Image Retrieval", ICMR 2021). Untargeted by default; ``targeted = true`` for its targeted form.

The paper's body is not available here; this follows its abstract (a dimension-wise surrogate Hamming
distance, relevant images with an AP-oriented weight, untargeted and targeted forms) and the settings of the
only public code, SAAT's re-implementation (methods-spec 3.2). Over the image itself, from x, minimise

    L = MSE(x_adv, x) - (25 / K) * mean_{r in R} d(q, r) * w(q, r)         (untargeted)

with q = tanh(alpha * H(x_adv)) and R the codes of the training items sharing a label with the query (the
query's own clean code when there is none):
    d(q, r) = 1/2 sum_k |q_k - r_k| sigmoid(5 q_k r_k) + sum_k (1 - sigmoid(5 q_k r_k)),
a per-bit surrogate of the Hamming distance (about 1 per disagreeing bit, 0 per agreeing one), and
    w(q, r) = (Ham(sign q, r) + 1e-8)^(-z),  z = 0.5,
larger for the relevant codes ranked nearest, the ones that weigh most in AP. Targeted: R from the target
label, d_t(q, r) = 1/2 sum_k |q_k - r_k| sigmoid(-10 q_k r_k), z = -0.3, and the distance term is added
(minimised) instead; a target with no relevant training item leaves only the MSE term.
Adam (lr 0.01, betas 0.9, 0.999) for 1500 iterations, alpha from the ten-stage continuation 0.1 ... 1.0,
x_adv clipped to the epsilon ball and [0, 1] after every step.

Departures: the loss is summed over the batch of per-image losses (SAAT averages over the batch; Adam is
insensitive to that scale, but summing keeps images independent of their batch). The weights w get no
gradient (sign has none), as in SAAT. The result is the final image (SAAT reports the code of the last
forward pass, before the last step; Pitfall 13).
"""
from __future__ import annotations

import typing

import torch

from benchmark import Attack, Perturbed, Range, binarize, continuation_alpha, descend_images, snapshot_milestones


class SDHA(Attack):
    name = "sdha"
    paper = ("Lu, Chen, Sun, Wang, Wang, Yang. A Smart Adversarial Attack on Deep Hashing Based Image Retrieval. "
             "ICMR 2021")

    targeted: bool = False                                  # targeted form: relevance from the target label
    iterations: typing.Annotated[int, Range(1)] = 1500      # SAAT's attack.py
    learning_rate: typing.Annotated[float, Range(0, low_open=True)] = 0.01  # Adam, [0, 1] pixels
    distance_weight: float = 25.0                           # the distance term's weight is this / K
    sharpness: float = 5.0                                  # sigma_s of d (untargeted)
    weight_power: typing.Annotated[float, Range(None)] = 0.5            # z (untargeted)
    targeted_sharpness: float = 10.0                        # of d_t
    targeted_weight_power: typing.Annotated[float, Range(None)] = -0.3  # z (targeted)
    continuation: bool = True                               # tanh(alpha * H), alpha 0.1 ... 1.0; False: 1
    snapshot_every: int = 0                                 # keep the images every N iterations too; 0: final only

    @staticmethod
    def weighted_distance(relaxed: torch.Tensor, codes: torch.Tensor, relevant: torch.Tensor, sharpness: float,
                          power: float, targeted: bool = False) -> torch.Tensor:
        """mean over the relevant codes r of d(q, r) * w(q, r), per query: (B, K), (N, K) +-1, (B, N) -> (B,).

        As r_k = +-1, |q_k - r_k| = 1 - q_k r_k and q_k r_k = +-q_k: each bit's term is one of two (B, K)
        tables, and the sums over bits are matrix products instead of a (B, N, K) tensor.
        """
        def per_bit(u):                                                          # u = q_k r_k
            if targeted:
                return 0.5 * (1 - u) * torch.sigmoid(-sharpness * u)
            return 0.5 * (1 - u) * torch.sigmoid(sharpness * u) + 1 - torch.sigmoid(sharpness * u)

        positive, negative = (codes > 0).to(relaxed.dtype), (codes < 0).to(relaxed.dtype)
        distance = per_bit(relaxed) @ positive.t() + per_bit(-relaxed) @ negative.t()         # (B, N)
        hamming = (codes.shape[1] - binarize(relaxed.detach()) @ codes.t()) / 2                 # (B, N)
        weight = (hamming + 1e-8) ** (-power)
        relevant = relevant.to(relaxed.dtype)
        return (distance * weight * relevant).sum(1) / relevant.sum(1).clamp_min(1)

    def prepare(self, ctx):
        self.ctx = ctx
        self.train_codes, self.train_labels = ctx.train_codes()                # (N, K), (N, C)

    def perturb(self, x, labels, target_labels):
        model = self.ctx.model
        clean_codes = model.codes(x)                                           # (B, K)
        reference = target_labels if self.targeted else labels
        relevant = (reference.float() @ self.train_labels.float().t()) > 0     # (B, N)
        lonely = ~relevant.any(1)                                              # no relevant training item
        # read once, before the loop: a host read inside it would stall the GPU every iteration
        fall_back = not self.targeted and bool(lonely.any())
        own_code = torch.eye(len(x), device=x.device) if fall_back else None
        scale = self.distance_weight / clean_codes.shape[1]
        sharpness = self.targeted_sharpness if self.targeted else self.sharpness
        power = self.targeted_weight_power if self.targeted else self.weight_power

        def loss(x_adv, iteration):
            alpha = continuation_alpha(iteration, self.iterations) if self.continuation else 1.0
            relaxed = model(x_adv, alpha=alpha)                                # (B, K)
            surrogate = self.weighted_distance(relaxed, self.train_codes, relevant, sharpness, power,
                                               self.targeted)
            if fall_back:                                                      # on the own code
                own = self.weighted_distance(relaxed, clean_codes, own_code, sharpness, power)
                surrogate = torch.where(lonely, own, surrogate)
            mse = (x_adv - x).pow(2).flatten(1).mean(1)
            return (mse + scale * surrogate if self.targeted else mse - scale * surrogate).sum()

        images = descend_images(x, loss, self.epsilon, self.iterations, self.learning_rate, optimizer="adam",
                                milestones=snapshot_milestones(self.iterations, self.snapshot_every))
        return Perturbed(images) if isinstance(images, dict) else images
