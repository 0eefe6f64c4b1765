"""DHTA: Deep Hashing Targeted Attack (Bai et al., "Targeted Attack for Deep Hashing based Retrieval", ECCV 2020).

Point-to-set attack. For each query and its target label t:
  1. anchor code a = sign(sum_{j=1..n_a} b_j) over the codes of n_a database items whose label vector
     equals t (component-wise voting, paper Eq. 6; n_a = 9);
  2. minimise L = -(1/K) f(x + delta)^T a over ||delta||_inf <= epsilon (paper Eq. 8), for 2000
     iterations, with tanh(alpha * y) continuation (alpha = 0.1 ... 1.0 in ten stages).
P2P is the same attack with n_a = 1 (the code of one random item of the target label).

Departures: the original code steps delta by the L2-normalised gradient in ImageNet-normalised input
space with epsilon 0.032 there (about 1.9/255 in pixels); hashbench works in [0, 1] pixels with the
signed step of 1/255 used by the THA/SAAT re-implementations (step_rule="l2" gives the original rule).
Anchor items are drawn with replacement (ProS-GAN, SAAT), so a label carried by fewer than n_a
items still gets an anchor.
"""
from __future__ import annotations

import torch

from benchmark import Attack, codes_with_label, label_vote_code, pgd_toward_codes


class DHTA(Attack):
    name = "dhta"
    paper = "Bai, Chen, Li, Wu, Guo, Xia, Yang. Targeted Attack for Deep Hashing based Retrieval. ECCV 2020"
    url = "https://github.com/jiawangbai/DHTA-master"
    targeted = True

    n_anchors: int = 9          # paper Sec. 4.1
    iterations: int = 2000      # paper Sec. 4.1
    step_size: float = 1 / 255
    step_rule: str = "sign"     # original code: "l2" with step 1 in normalised space
    continuation: bool = True

    def anchor_codes(self, target_labels: torch.Tensor) -> torch.Tensor:
        ctx = self.ctx
        return torch.stack([
            label_vote_code(codes_with_label(ctx.database_codes, ctx.database_labels, target.to(ctx.device),
                                             self.n_anchors, ctx.generator))
            for target in target_labels])

    def perturb(self, x, labels, target_labels):
        anchors = self.anchor_codes(target_labels)
        return pgd_toward_codes(self.ctx.model, x, anchors, self.epsilon, self.iterations, self.step_size,
                                step_rule=self.step_rule, continuation=self.continuation)
