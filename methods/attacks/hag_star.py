"""HAG*: HAG without the hash-activation update (Yang, Liu, Deng, Tao, IEEE TCYB 2020, Sec. IV-D, Table III).

The ablation of Table III: HAG (see hag.py: masked objective Eq. 6-7, SGD with momentum on the image,
2000 iterations, epsilon 0.039) with F(x_adv) = tanh(H(x_adv)) throughout, "tanh(x) as the hash
activation function without updating", instead of alpha rising from 0.1 to 1. On a victim whose outputs
saturate tanh the gradient mostly vanishes, which is the point of the ablation. Same unit conversion of
the learning rate as hag.py (500 on [0, 255] pixels -> 500 / 255^2 on [0, 1]).
"""
from __future__ import annotations

import typing

from benchmark import Attack, Perturbed, Range, descend_images, hag_loss, snapshot_milestones


class HAGStar(Attack):
    name = "hag_star"
    paper = ("Yang, Liu, Deng, Tao. Adversarial Examples for Hamming Space Search. IEEE TCYB 50(4), 2020 "
             "(HAG*, Table III)")

    epsilon: typing.Annotated[float, Range(0, 1)] = 0.039            # Sec. IV-C, [0, 1] pixels
    iterations: typing.Annotated[int, Range(1)] = 2000                # Sec. IV-C
    learning_rate: typing.Annotated[float, Range(0, low_open=True)] = 500 / 255 ** 2  # as hag.py
    momentum: float = 0.9
    threshold: float = 0.5                                            # t of Eq. 7
    snapshot_every: int = 500

    def perturb(self, x, labels, target_labels):
        model = self.ctx.model
        clean = model(x).detach()                                     # F(x) = tanh(H(x)), (B, K)

        def loss(x_adv, iteration):
            return hag_loss(model(x_adv), clean, self.threshold).sum()  # alpha stays 1

        images = descend_images(x, loss, self.epsilon, self.iterations, self.learning_rate, optimizer="sgd",
                                momentum=self.momentum,
                                milestones=snapshot_milestones(self.iterations, self.snapshot_every))
        return Perturbed(images) if isinstance(images, dict) else images
