"""DHTA + I-FGSM: DHTA's anchor code reached with 100 signed steps (ProS-GAN Table 2, Wang et al., CVPR 2021).

ProS-GAN compares DHTA (Bai et al., ECCV 2020) optimised three ways; this is the 100-iteration row: the
anchor code a = sign(sum of n_a = 9 database codes of the target label) as in dhta.py, then I-FGSM
(Kurakin et al., ICLR 2017) on DHTA's loss -(1/K) f(x + delta)^T a: 100 steps delta -= 1/255 * sign(grad),
each projected onto the epsilon ball (epsilon = 8/255 in Table 2; the grid's epsilon axis sets it), from
delta = 0. Targeted, scored with t-MAP; the anchor codes are returned as ``anchor_code``.

Table 2 says only "I-FGSM, step 1/255"; the relaxed code follows DHTA's tanh(alpha * y) continuation over
the 100 steps (``continuation``; false: fixed alpha 0.1), since the loss is DHTA's.
"""
from __future__ import annotations

import typing

from benchmark import Attack, Perturbed, Range, anchor_codes, pgd_toward_codes, snapshot_milestones


class IFGSMDHTA(Attack):
    name = "ifgsm_dhta"
    paper = ("Wang, Zhang, Wu, Shen, Lu. Prototype-supervised Adversarial Network for Targeted Attack of Deep "
             "Hashing. CVPR 2021 (Table 2: DHTA + I-FGSM)")
    targeted = True

    n_anchors: typing.Annotated[int, Range(1)] = 9      # DHTA's n_a
    iterations: typing.Annotated[int, Range(1)] = 100   # Table 2
    step_size: float = 1 / 255                          # Table 2, L-inf step in [0, 1] pixels
    continuation: bool = True
    alpha: float = 0.1                                  # the fixed tanh scale when continuation is off
    snapshot_every: int = 0                             # keep the images every N iterations too; 0: final only

    def perturb(self, x, labels, target_labels):
        ctx = self.ctx
        anchors = anchor_codes(ctx.database_codes, ctx.database_labels, target_labels, self.n_anchors,
                               ctx.generator)
        images = pgd_toward_codes(ctx.model, x, anchors, self.epsilon, self.iterations, self.step_size,
                                  step_rule="sign", continuation=self.continuation, alpha=self.alpha,
                                  milestones=snapshot_milestones(self.iterations, self.snapshot_every))
        return Perturbed(images, codes={"anchor_code": anchors})
