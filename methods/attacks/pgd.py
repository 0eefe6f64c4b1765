"""PGD against hashing (Madry et al., ICLR 2018), non-targeted.

Projected signed-gradient descent on L = -mean(f(x') * (-b)) with b = sign(f(x)) the clean query's
code, from a uniform random start in the epsilon ball: it pushes the code away from the query's own.
The relaxed code is tanh(alpha * y) with DHTA's ten-stage continuation of alpha (0.1 ... 1.0), as in the
PGD of the hashing-attack reference code (SAAT's, which CgAT's authors share): a small alpha keeps the
gradient alive on a well-quantised victim's saturated outputs, the late stages sharpen it towards the
bits that can still flip. ``continuation = false`` runs at the fixed ``alpha`` instead (on our 32-bit
FashionMNIST DPSH victim at 16/255 that leaves mAP about 0.03 higher).
This is the plain untargeted baseline; HAG and SDHA are the hashing-specific ones.
"""
from __future__ import annotations

import typing

from benchmark import Attack, Perturbed, Range, pgd_toward_codes, snapshot_milestones


class PGD(Attack):
    name = "pgd"
    paper = "Madry et al. Towards Deep Learning Models Resistant to Adversarial Attacks. ICLR 2018"

    iterations: typing.Annotated[int, Range(1)] = 100
    step_size: float = 1 / 255      # sign step in [0, 1] pixels, as THA/CgAT/SAAT's PGD
    random_start: bool = True
    continuation: bool = True       # tanh(alpha * y) with alpha from DHTA's schedule 0.1 ... 1.0
    alpha: float = 0.1              # the fixed tanh scale when continuation is off
    snapshot_every: int = 0         # keep the images every N iterations too; 0: final only

    def perturb(self, x, labels, target_labels):
        clean_codes = self.ctx.model.codes(x)
        images = pgd_toward_codes(self.ctx.model, x, -clean_codes, self.epsilon, self.iterations, self.step_size,
                                  step_rule="sign", random_start=self.random_start, continuation=self.continuation,
                                  alpha=self.alpha, generator=self.ctx.generator,
                                  milestones=snapshot_milestones(self.iterations, self.snapshot_every))
        return Perturbed(images) if isinstance(images, dict) else images
