"""FGSM against hashing (Goodfellow et al., ICLR 2015), non-targeted.

One signed-gradient step of size epsilon on L = -mean(f(x') * (-b)), where b = sign(f(x)) is the
clean query's code: the step moves the relaxed code tanh(0.1 * y) away from b, i.e. raises its
Hamming distance.
"""
from __future__ import annotations

from benchmark import Attack, pgd_toward_codes


class FGSM(Attack):
    name = "fgsm"
    paper = "Goodfellow, Shlens, Szegedy. Explaining and Harnessing Adversarial Examples. ICLR 2015"

    alpha: float = 0.1  # tanh(alpha * y), as pgd.py: saturated outputs give no gradient at alpha = 1

    def perturb(self, x, labels, target_labels):
        clean_codes = self.ctx.model.codes(x)
        return pgd_toward_codes(self.ctx.model, x, -clean_codes, self.epsilon, iterations=1,
                                step_size=self.epsilon, step_rule="sign", alpha=self.alpha)
