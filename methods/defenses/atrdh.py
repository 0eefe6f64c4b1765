"""ATRDH: adversarial training for deep hashing with targeted examples (Wang, Zhang, Lu, Xu, "Targeted Attack
and Defense for Deep Hashing", SIGIR 2021; the defense of its reference code, defense.py; methods-spec 4.1).

A fine-tuning of the victim trained without defense (``starts_from_victim``), jointly with a fresh
PrototypeNet P (``benchmark.PrototypeNet``) that maps a target label to a prototype code. Each batch (x, y):

1. the clean forward pass; the code memory B (N, K) takes the batch's codes sign f(x) (B starts as the
   victim's codes of the training set);
2. one P step on THA's circle loss against B (``benchmark.circle_prototype_loss``), for one target label per
   image drawn from the unique label vectors of the training set;
3. THA-style targeted examples: PGD towards the prototype codes p = sign P(l_t), a random start in the
   epsilon ball, ``iterations`` signed steps of ``step_size`` descending -mean f(x') p;
4. the benign output memory U (N, K) takes f(x) for the batch, and one step of the hash model on
       L = L_method(f(x), y) + w * 1/(N B) sum_{i, j} ( f(x'_i)^T U_j / K - s~_ij )^2,
   s~_ij = +1 if x_i and training item j share a label, else -1: the adversarial outputs must keep the
   benign pairwise similarities (DPH's loss, between adversarial outputs and the benign memory).
After each epoch the method's own ``end_epoch`` runs (DSDH's discrete step, ADSH's V step).

L_method is the hashing method's own loss (``method.training_loss`` on the clean batch, so its banks and
schedules see clean outputs only), as in SAAT's ATRDH; the reference code hard-codes DPH, whose loss
with a memory bank (``hashing.dph.pairs = "memory"``) is the same term for the benign outputs.

Defaults of the reference code: 100 epochs, batch 32; both networks on Adam, lr 1e-4, betas (0.5, 0.999),
lr x 0.1 after 50% and 75% of the steps; PGD with 7 steps of 2/255 in 8/255 from a random start, the model
in train mode; w = 1 (SAAT: 2); U starts at zero (rows of items not yet seen contribute constants). Departures:
the target labels come from the training set (the defense sees no database; the reference draws from the
database's unique labels); P's loss keeps every (target, training item) pair, as hashbench's THA does
(``prototype_upper_triangle_only`` restores the reference code's triu mask, methods-spec Pitfall 10).
On the small FashionMNIST network the reference schedule is kept (Adam at 1e-4 fine-tunes it).
"""
from __future__ import annotations

import typing

import torch

from benchmark import (Defense, OneOf, PrototypeNet, Range, binarize, check_finite, circle_prototype_loss,
                       lr_milestones, pairwise_similarity, pgd_toward_codes, sample_target_labels, seeded_torch,
                       training_outputs)


class ATRDH(Defense):
    name = "atrdh"
    paper = "Wang, Zhang, Lu, Xu. Targeted Attack and Defense for Deep Hashing. SIGIR 2021"
    url = "https://github.com/xunguangwang/Targeted-Attack-and-Defense-for-Deep-Hashing"
    starts_from_victim = True

    epochs: typing.Annotated[int, Range(1)] = 100         # reference code
    batch_size: typing.Annotated[int, Range(1)] = 32      # reference code
    lr: float = 1e-4                                      # hash model, Adam betas (0.5, 0.999) (reference code)
    prototype_lr: float = 1e-4                            # PrototypeNet, the same Adam (reference code)
    adversarial_weight: float = 1.0                       # w (reference code; SAAT's ATRDH: 2)
    train_epsilon: typing.Annotated[float, Range(0, 1)] = 8 / 255  # PGD budget while training
    step_size: float = 2 / 255                            # PGD step (reference code)
    iterations: typing.Annotated[int, Range(1)] = 7       # PGD steps (reference code)
    attack_mode: typing.Annotated[str, OneOf("train", "eval")] = "train"  # model mode during PGD (reference: train)
    prototype_upper_triangle_only: bool = False           # True: the reference code's triu mask on P's pairs

    def targeted_images(self, model, x, prototypes, generator):
        """THA-style PGD towards the prototype codes."""
        model.train(self.attack_mode == "train")
        x_adv = pgd_toward_codes(model, x, prototypes, self.train_epsilon, self.iterations, self.step_size,
                                 random_start=True, generator=generator)
        model.train()
        return x_adv

    def fit(self, method, model, train, ctx):
        method.begin(train, model.bits, ctx)
        method.warm_start(model, train, ctx)  # the method's banks as its training left them
        train_labels = train.labels.to(ctx.device).float()                             # (N, C)
        unique_labels = train_labels.unique(dim=0)                                      # (M, C) target labels
        codes = binarize(training_outputs(model, train, ctx.device))                    # (N, K) B
        benign = torch.zeros_like(codes)                                                # (N, K) U
        with seeded_torch(ctx.generator):
            prototype_net = PrototypeNet(ctx.num_classes, model.bits).to(ctx.device)
        steps_per_epoch = -(-len(train) // self.batch_size)
        betas = (0.5, 0.999)
        optimizer = torch.optim.Adam(model.parameters(), lr=self.lr, betas=betas)
        prototype_optimizer = torch.optim.Adam(prototype_net.parameters(), lr=self.prototype_lr, betas=betas)
        steps = self.epochs * steps_per_epoch
        schedules = [lr_milestones(optimizer, steps), lr_milestones(prototype_optimizer, steps)]
        prototype_net.train()
        model.train()
        for epoch in range(self.epochs):
            totals = {"loss_per_epoch": 0.0, "method_loss_per_epoch": 0.0, "adversarial_loss_per_epoch": 0.0,
                      "prototype_loss_per_epoch": 0.0}
            batches = train.batches(self.batch_size, shuffle=True, generator=ctx.generator)
            for step, (x, y, index) in enumerate(batches):
                x, y, index = x.to(ctx.device), y.to(ctx.device).float(), index.to(ctx.device)
                clean_outputs = model.logits(x)                                         # (B, K)
                codes[index] = binarize(clean_outputs.detach())
                # the PrototypeNet's step; the prototypes are its codes before the step, as in the reference
                targets = sample_target_labels(unique_labels, len(x), ctx.generator)  # (B, C)
                prototypes = prototype_net.codes(targets)                              # (B, K)
                _, relaxed, _ = prototype_net(targets)
                prototype_loss = circle_prototype_loss(relaxed, targets, codes, train_labels,
                                                       upper_triangle_only=self.prototype_upper_triangle_only)
                check_finite(prototype_loss, self.name, epoch, step, kind="defenses")
                prototype_optimizer.zero_grad(set_to_none=True)
                prototype_loss.backward()
                prototype_optimizer.step()
                # the hash model's step on clean and targeted adversarial images
                x_adv = self.targeted_images(model, x, prototypes, ctx.generator)
                benign[index] = torch.tanh(clean_outputs.detach())
                method_loss = method.training_loss(clean_outputs, y, index)
                similarity = 2 * pairwise_similarity(y, train_labels) - 1             # (B, N) in {-1, +1}
                adversarial = torch.tanh(model.logits(x_adv))                          # (B, K)
                adversarial_loss = (adversarial @ benign.t() / model.bits - similarity).pow(2).mean()
                loss = method_loss + self.adversarial_weight * adversarial_loss
                check_finite(loss, self.name, epoch, step, kind="defenses")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                for schedule in schedules:
                    schedule.step()
                for key, value in zip(totals, (loss, method_loss, adversarial_loss, prototype_loss)):
                    totals[key] += value.item()
                if step % 50 == 0:
                    ctx.progress(f"atrdh epoch {epoch + 1}/{self.epochs} step {step + 1}/{steps_per_epoch} "
                                 f"loss {loss.item():.4f}")
            method.end_epoch(model, train, epoch, ctx)
            means = {key: total / steps_per_epoch for key, total in totals.items()}
            for key, mean in means.items():
                ctx.info.setdefault(key, []).append(mean)
            ctx.progress(f"atrdh epoch {epoch + 1}/{self.epochs} loss {means['loss_per_epoch']:.4f} "
                         f"(method {means['method_loss_per_epoch']:.4f}, "
                         f"adversarial {means['adversarial_loss_per_epoch']:.4f}, "
                         f"prototype {means['prototype_loss_per_epoch']:.4f})")
        model.eval()
