"""CgAT's attack: PGD away from the center code (Wang, Lin, Li, "CgAT: Center-Guided Adversarial Training for
Deep Hashing-Based Retrieval", WWW 2023; Sec. 3.3 Eq. 6-9, the "Ours" row of Table 4). Untargeted.

The center code c of the query's labels is the code nearest the training codes of relevant items and
farthest from those of irrelevant ones (CHCM, Eq. 3-5, ``benchmark.center_codes``; training codes and
labels from ``ctx.train_codes()``, the surrogate's own codes of its training set). The attack maximises
the Hamming distance to c through its surrogate (Eq. 8):

    min_delta  mean_k f(x + delta)_k c_k   over ||delta||_inf <= epsilon,

by PGD (Eq. 9): a uniform random start in the ball, signed steps, projection after each.

Settings: the paper gives PGD's step and count only for the attack inside adversarial training (2/255, 7
iterations, CgAT's code) and none for Table 4's attack, which must be stronger than HAG's and SDHA's. The
defaults here are those of the center-code ("mainstay") attack of SAAT, by an author of CgAT: 100 iterations
of 1/255, with tanh(alpha * y) continuation 0.1 ... 1.0 (CgAT's own code uses alpha = 1; on a victim whose
outputs saturate tanh that leaves little gradient). ``iterations = 7, step_size = 2/255, continuation =
false`` is the training-time attack. The center code uses the paper's Jaccard weights by default
(``weighting = "code"``: the reference code's unweighted form) and the code farthest from all training
codes for a query without labels (see benchmark/centers.py).
"""
from __future__ import annotations

import typing

from benchmark import Attack, OneOf, Perturbed, Range, center_codes, pgd_toward_codes, snapshot_milestones


class CgATAttack(Attack):
    name = "cgat"
    paper = ("Wang, Lin, Li. CgAT: Center-Guided Adversarial Training for Deep Hashing-Based Retrieval. WWW 2023 "
             "(Table 4, 'Ours')")
    url = "https://github.com/xunguangwang/CgAT"

    iterations: typing.Annotated[int, Range(1)] = 100      # SAAT's center-code attack; CgAT training: 7
    step_size: float = 1 / 255                             # L-inf sign step, [0, 1] pixels; CgAT training: 2/255
    random_start: bool = True                              # Sec. 3.3, CgAT's hash_adv
    continuation: bool = True                              # tanh(alpha * y), alpha 0.1 ... 1.0
    alpha: float = 1.0                                     # the fixed tanh scale when continuation is off
    weighting: typing.Annotated[str, OneOf("paper", "code")] = "paper"   # CHCM weights (Eq. 5)
    snapshot_every: int = 0                                # keep the images every N iterations too; 0: final only

    def prepare(self, ctx):
        self.ctx = ctx
        self.train_codes, self.train_labels = ctx.train_codes()               # (N, K), (N, C)

    def perturb(self, x, labels, target_labels):
        centers = center_codes(labels, self.train_labels, self.train_codes, weighting=self.weighting)  # (B, K)
        images = pgd_toward_codes(self.ctx.model, x, -centers, self.epsilon, self.iterations, self.step_size,
                                  step_rule="sign", random_start=self.random_start,
                                  continuation=self.continuation, alpha=self.alpha, generator=self.ctx.generator,
                                  milestones=snapshot_milestones(self.iterations, self.snapshot_every))
        return Perturbed(images) if isinstance(images, dict) else images
