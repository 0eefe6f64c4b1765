"""P2P: point-to-point targeted attack (Bai et al., ECCV 2020, Sec. 3.2): DHTA with one anchor.

The target code is the code of one random database item whose label vector equals the target label;
the optimisation is DHTA's (see dhta.py): minimise -(1/K) f(x + delta)^T a, 2000 iterations with tanh
continuation, signed steps of 1/255 in [0, 1] pixel space.
"""
from __future__ import annotations

import torch

from benchmark import Attack, codes_with_label, pgd_toward_codes


class P2P(Attack):
    name = "p2p"
    paper = "Bai, Chen, Li, Wu, Guo, Xia, Yang. Targeted Attack for Deep Hashing based Retrieval. ECCV 2020"
    url = "https://github.com/jiawangbai/DHTA-master"
    targeted = True

    iterations: int = 2000
    step_size: float = 1 / 255
    step_rule: str = "sign"
    continuation: bool = True

    def perturb(self, x, labels, target_labels):
        ctx = self.ctx
        targets = [codes_with_label(ctx.database_codes, ctx.database_labels, t.to(ctx.device), 1, ctx.generator)[0]
                   for t in target_labels]
        return pgd_toward_codes(ctx.model, x, torch.stack(targets), self.epsilon, self.iterations, self.step_size,
                                step_rule=self.step_rule, continuation=self.continuation)
