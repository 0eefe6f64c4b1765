"""Uniform noise in [-epsilon, +epsilon]: the papers' "Noise" row (ProS-GAN Table 1).

Not an attack: it shows how much a random perturbation of the same budget moves mAP and t-MAP.
"""
from __future__ import annotations

import torch

from benchmark import Attack, project


class UniformNoise(Attack):
    name = "noise"
    paper = "baseline: additive noise from U(-eps, +eps), ProS-GAN (Wang et al., CVPR 2021) Sec. 4.2"

    def perturb(self, x, labels, target_labels):
        noise = torch.rand(x.shape, generator=self.ctx.generator).to(x.device) * 2 - 1
        return project(x + self.epsilon * noise, x, self.epsilon)
