"""P2P: point-to-point targeted attack (Bai et al., ECCV 2020, Sec. 3.2): DHTA with one anchor.

The target code is the code of one random database item whose label vector equals the target label;
the optimisation is DHTA's (see dhta.py, also for the step rules): minimise -(1/K) f(x + delta)^T a,
2000 iterations with tanh continuation, signed steps of 1/255 in [0, 1] pixel space by default.
The target code is returned as ``anchor_code`` and scored by the harness like DHTA's.
"""
from __future__ import annotations

import typing

from benchmark import (STEP_SIZE_BY_RULE, Attack, OneOf, Perturbed, Range, anchor_codes, pgd_toward_codes,
                       snapshot_milestones)


class P2P(Attack):
    name = "p2p"
    paper = "Bai, Chen, Li, Wu, Guo, Xia, Yang. Targeted Attack for Deep Hashing based Retrieval. ECCV 2020"
    url = "https://github.com/jiawangbai/DHTA-master"
    targeted = True

    iterations: typing.Annotated[int, Range(1)] = 2000
    step_rule: typing.Annotated[str, OneOf("sign", "l2", "raw")] = "sign"
    step_size: float | None = None          # None: the rule's size (benchmark.STEP_SIZE_BY_RULE)
    continuation: bool = True
    snapshot_every: int = 0                 # keep the images every N iterations too; 0: final only

    def perturb(self, x, labels, target_labels):
        ctx = self.ctx
        targets = anchor_codes(ctx.database_codes, ctx.database_labels, target_labels, 1, ctx.generator)
        step_size = STEP_SIZE_BY_RULE[self.step_rule] if self.step_size is None else self.step_size
        images = pgd_toward_codes(ctx.model, x, targets, self.epsilon, self.iterations, step_size,
                                  step_rule=self.step_rule, continuation=self.continuation,
                                  milestones=snapshot_milestones(self.iterations, self.snapshot_every))
        return Perturbed(images, codes={"anchor_code": targets})
