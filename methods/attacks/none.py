"""No attack: the clean queries themselves (the papers' "Original" row, C->C)."""
from __future__ import annotations

import typing

from benchmark import Attack


class NoAttack(Attack):
    name = "none"
    paper = "baseline: benign queries (the 'Original' row of ProS-GAN, HAG and CgAT tables)"
    perturbs: typing.ClassVar[bool] = False

    def perturb(self, x, labels, target_labels):
        return x
