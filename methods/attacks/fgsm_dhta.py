"""DHTA + FGSM: DHTA's anchor code reached with one signed step (ProS-GAN Table 2, Wang et al., CVPR 2021).

ProS-GAN compares DHTA (Bai et al., ECCV 2020) optimised three ways; this is the one-step row: the anchor
code a = sign(sum of n_a = 9 database codes of the target label) as in dhta.py, then FGSM (Goodfellow et
al., ICLR 2015) on DHTA's loss -(1/K) f(x + delta)^T a: delta = -epsilon * sign(grad), epsilon = 8/255
(Table 2's setting; the grid's epsilon axis sets it). Targeted, scored with t-MAP; the anchor codes are
returned as ``anchor_code``.

The relaxed code is tanh(0.1 * y), the first stage of DHTA's continuation: a single step has no schedule,
and at alpha = 1 a well-quantised victim's saturated outputs give no gradient (as fgsm.py).
"""
from __future__ import annotations

import typing

from benchmark import Attack, Perturbed, Range, anchor_codes, pgd_toward_codes


class FGSMDHTA(Attack):
    name = "fgsm_dhta"
    paper = ("Wang, Zhang, Wu, Shen, Lu. Prototype-supervised Adversarial Network for Targeted Attack of Deep "
             "Hashing. CVPR 2021 (Table 2: DHTA + FGSM)")
    targeted = True

    n_anchors: typing.Annotated[int, Range(1)] = 9   # DHTA's n_a
    alpha: float = 0.1                               # tanh(alpha * y) for the one step

    def perturb(self, x, labels, target_labels):
        ctx = self.ctx
        anchors = anchor_codes(ctx.database_codes, ctx.database_labels, target_labels, self.n_anchors,
                               ctx.generator)
        images = pgd_toward_codes(ctx.model, x, anchors, self.epsilon, iterations=1, step_size=self.epsilon,
                                  step_rule="sign", alpha=self.alpha)
        return Perturbed(images, codes={"anchor_code": anchors})
