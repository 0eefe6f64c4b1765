"""PGD against hashing (Madry et al., ICLR 2018), non-targeted.

Projected signed-gradient descent on L = -mean(f(x') * (-b)) with b = sign(f(x)) the clean query's
code, from a uniform random start in the epsilon ball: it pushes the code away from the query's own.
The relaxed code is tanh(0.1 * y) (DHTA's first continuation stage): at alpha = 1 the outputs of a
well-quantised victim saturate and the signed gradient is mostly zero.
This is the plain untargeted baseline; HAG and SDHA are the hashing-specific ones.
"""
from __future__ import annotations

from benchmark import Attack, pgd_toward_codes


class PGD(Attack):
    name = "pgd"
    paper = "Madry et al. Towards Deep Learning Models Resistant to Adversarial Attacks. ICLR 2018"

    iterations: int = 100
    step_size: float = 1 / 255      # sign step in [0, 1] pixels, as THA/CgAT/SAAT's PGD
    random_start: bool = True
    alpha: float = 0.1              # tanh(alpha * y): keeps gradients alive on saturated outputs

    def perturb(self, x, labels, target_labels):
        clean_codes = self.ctx.model.codes(x)
        return pgd_toward_codes(self.ctx.model, x, -clean_codes, self.epsilon, self.iterations, self.step_size,
                                step_rule="sign", random_start=self.random_start, alpha=self.alpha,
                                generator=self.ctx.generator)
