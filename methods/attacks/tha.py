"""THA: the targeted hashing attack with a prototype code (Wang, Zhang, Lu, Xu, "Targeted Attack and Defense for
Deep Hashing", SIGIR 2021).

Targeted, L-inf, needs the victim's relaxed codes. Two stages:
  1. prepare: a PrototypeNet P (label -> 4096 -> 512 -> K, tanh) is trained against the frozen surrogate's
     training codes with THA's circle-style loss (benchmark/prototype.py; methods-spec 3.4), target labels drawn
     from the unique label vectors of the database, 32 per step, Adam lr 1e-4, 100 epochs x 300 steps, lr x0.1
     at 50% and 75%;
  2. perturb: the prototype code p = sign(P(l_t)) of each query's target label, then projected signed gradient
     descent on L = -(1/K) f(x + delta)^T p over ||delta||_inf <= epsilon: 100 steps of 1/255, no random start.
The prototype code itself is scored as a query ("prototype_code" rows).

Departures and options: the relaxed code is tanh(y) at the fixed scale 1, as THA's own code does;
``continuation = true`` uses DHTA's tanh(alpha * y) schedule instead, as SAAT's re-implementation does. The
circle loss keeps every (target label, training item) pair where THA's code drops the pairs j <= i of a
triu mask (methods-spec Pitfall 10; ``upper_triangle_only = true`` restores it); ``softplus = true`` gives SAAT's
variant. ``prototype_objective = "prosgan"`` trains P with ProS-GAN's pair likelihood instead.
"""
from __future__ import annotations

import typing
from typing import Annotated

import torch

from benchmark import (Attack, OneOf, Perturbed, PrototypeNet, Range, pgd_toward_codes, seeded_torch,
                       train_prototype_net)


class THA(Attack):
    name = "tha"
    paper = "Wang, Zhang, Lu, Xu. Targeted Attack and Defense for Deep Hashing. SIGIR 2021"
    url = "https://github.com/xunguangwang/Targeted-Attack-and-Defense-for-Deep-Hashing"
    targeted = True

    perturb_parameters: typing.ClassVar[tuple[str, ...]] = ("iterations", "step_size", "continuation")

    iterations: Annotated[int, Range(1)] = 100     # THA code (attack.py); its function default is 2000
    step_size: float = 1 / 255
    continuation: bool = False                     # THA code: fixed tanh scale 1; SAAT: DHTA's schedule
    prototype_objective: Annotated[str, OneOf("circle", "prosgan")] = "circle"
    prototype_epochs: Annotated[int, Range(1)] = 100
    prototype_steps: Annotated[int, Range(1)] = 300  # per epoch
    prototype_batch: Annotated[int, Range(1)] = 32   # target labels per step
    prototype_lr: Annotated[float, Range(0, low_open=True)] = 1e-4
    upper_triangle_only: bool = False              # THA code's triu mask on the pair matrix (Pitfall 10)
    softplus: bool = False                         # SAAT's circle loss

    def prepare(self, ctx):
        self.ctx = ctx
        train_codes, train_labels = ctx.train_codes()
        with seeded_torch(ctx.generator):
            self.prototype_net = PrototypeNet(ctx.num_classes, ctx.bits).to(ctx.device)
        options = ({"upper_triangle_only": self.upper_triangle_only, "softplus": self.softplus}
                   if self.prototype_objective == "circle" else {})
        ctx.info["prototype_loss_per_epoch"] = train_prototype_net(
            self.prototype_net, ctx.database_labels.float().unique(dim=0), train_codes, train_labels,
            self.prototype_objective, self.prototype_epochs, self.prototype_steps, self.prototype_batch,
            self.prototype_lr, ctx.generator, ctx.progress, **options)
        self.prototype_net.requires_grad_(False)

    def perturb(self, x, labels, target_labels):
        prototypes = self.prototype_net.codes(target_labels.float())  # (B, K) in {-1, +1}
        x_adv = pgd_toward_codes(self.ctx.model, x, prototypes, self.epsilon, self.iterations, self.step_size,
                                 step_rule="sign", continuation=self.continuation)
        return Perturbed(x_adv, codes={"prototype_code": prototypes})

    def state_dict(self):
        return {"prototype_net": self.prototype_net.state_dict()}

    def load_state_dict(self, state):
        self.prototype_net = PrototypeNet(self.ctx.num_classes, self.ctx.bits).to(self.ctx.device)
        self.prototype_net.load_state_dict(state["prototype_net"])
        self.prototype_net.requires_grad_(False).eval()
