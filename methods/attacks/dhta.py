"""DHTA: Deep Hashing Targeted Attack (Bai et al., "Targeted Attack for Deep Hashing based Retrieval", ECCV 2020).

Point-to-set attack. For each query and its target label t:
  1. anchor code a = sign(sum_{j=1..n_a} b_j) over the codes of n_a database items whose label vector
     equals t (component-wise voting, paper Eq. 6; n_a = 9), drawn without replacement where n_a such
     items exist (the original code), with replacement otherwise;
  2. minimise L = -(1/K) f(x + delta)^T a over ||delta||_inf <= epsilon (paper Eq. 8), for 2000
     iterations, with tanh(alpha * y) continuation (alpha = 0.1 ... 1.0 in ten stages).
P2P is the same attack with n_a = 1 (the code of one random item of the target label).
The anchor codes are returned too (``anchor_code``): the harness scores them as queries, the t-MAP an
attack that reached its anchor exactly would get (the reference code's "theory" row).

Step rule (``step_rule``; each paper ran DHTA differently, methods-spec 3.3 and Pitfall 5), all in [0, 1]
pixels, ``step_size`` None meaning the rule's own size (benchmark.STEP_SIZE_BY_RULE):
- "sign" (default; THA/SAAT re-implementations): delta -= 1/255 * sign(grad);
- "l2" (the original code): an L2-normalised gradient step. The original takes a step of L2 length 1 in
  ImageNet-normalised input space with epsilon 0.032 there, on 224x224x3 images: in pixels that is an L2
  length of about sigma = 0.226, i.e. a root-mean-square change of 0.226 / sqrt(150528) = 5.8e-4 (0.15/255)
  per pixel, against an L-inf budget of 0.032 * sigma = 0.0072 (1.9/255), a ratio of about 1:12. hashbench
  measures the l2 step as its rms per pixel, so that a size means the same at any image size; the default
  1/255 is as long as a sign step of 1/255. For the original's ratio at epsilon e, set step_size = e / 12.4;
- "raw" (ProS-GAN's dhta.py): delta -= 1 * grad of the per-image loss, unnormalised; on a trained victim
  the gradient is small, which is why ProS-GAN Table 2 reports DHTA's perceptibility (0.84e-2) far below a
  signed attack's (about 3e-2).
"""
from __future__ import annotations

import typing

from benchmark import (STEP_SIZE_BY_RULE, Attack, OneOf, Perturbed, Range, anchor_codes, pgd_toward_codes,
                       snapshot_milestones)


class DHTA(Attack):
    name = "dhta"
    paper = "Bai, Chen, Li, Wu, Guo, Xia, Yang. Targeted Attack for Deep Hashing based Retrieval. ECCV 2020"
    url = "https://github.com/jiawangbai/DHTA-master"
    targeted = True

    n_anchors: typing.Annotated[int, Range(1)] = 9          # paper Sec. 4.1
    iterations: typing.Annotated[int, Range(1)] = 2000      # paper Sec. 4.1
    step_rule: typing.Annotated[str, OneOf("sign", "l2", "raw")] = "sign"
    step_size: float | None = None                           # None: the rule's size (see the docstring)
    continuation: bool = True
    snapshot_every: int = 0                                  # keep the images every N iterations too; 0: final only

    def perturb(self, x, labels, target_labels):
        ctx = self.ctx
        anchors = anchor_codes(ctx.database_codes, ctx.database_labels, target_labels, self.n_anchors,
                               ctx.generator)
        step_size = STEP_SIZE_BY_RULE[self.step_rule] if self.step_size is None else self.step_size
        images = pgd_toward_codes(ctx.model, x, anchors, self.epsilon, self.iterations, step_size,
                                  step_rule=self.step_rule, continuation=self.continuation,
                                  milestones=snapshot_milestones(self.iterations, self.snapshot_every))
        return Perturbed(images, codes={"anchor_code": anchors})
