"""CgAT: Center-guided Adversarial Training (Wang, Lin, Li, WWW 2023; Sec. 3.2-3.3, Algorithm 1).

A min-max fine-tuning of the victim trained without defense (``starts_from_victim``). A bank B (N, K) holds
the current codes of the training set, first those of the victim. Each batch (x, y) of training images:

1. center codes c = CHCM(y; training labels, B) (Eq. 4-5, ``benchmark.center_codes``): the code closest to
   the codes of the items sharing a label with y and farthest from the others;
2. adversarial images by PGD away from c (Eq. 6-9): a random start in the epsilon ball, then ``iterations``
   signed steps of ``step_size`` descending mean_k f(x')_k c_k, with f = tanh(y) for sign (Eq. 8);
3. one optimiser step on Eq. 13, the method's own loss plus the adversarial term of Eq. 12,
       L = L_method(f(x), y) + lam * L_adv,    L_adv = -1/(B K) sum_i f(x'_i)^T c_i,
   which pulls the adversarial codes back to the centers; L_method is whatever the hashing method computes
   (``method.training_loss`` on the clean batch: the method's banks and schedules see clean outputs only);
4. B takes the batch's codes sign(f(x)) from step 3's forward pass, so the centers move with the model.
After each epoch the method's own ``end_epoch`` runs (DSDH's discrete step, ADSH's V step).

Defaults: Sec. 4.1 and the reference code (central_adv_train.py): 30 epochs, PGD with 7 steps of 2/255 in
8/255, SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 32, lr x 0.1 after 50% and 75% of the steps.
lam: our copy of the paper lost Eq. 13's value; the reference code adds the term unweighted (lam = 1).
The paper's SGD also fine-tunes PPL's small FashionMNIST network (from a 10-epoch DPSH victim, the DPSH
loss kept falling and clean mAP moved from 0.676 to 0.669 in 2 epochs), so it stays the default there.

Where the reference code departs from the paper (methods-spec 4.2, Pitfalls 1-3), the paper is the default
and the code's behaviour a named option:
- ``center_weighting="code"``: the code computes the Jaccard weights of Eq. 5, then uses only their sign,
  c = sign(mean of positive codes - mean of negative codes);
- ``center_bank="outputs"``: the code's bank aliases the continuous outputs tanh(y) instead of sign codes;
- ``zero_label="zero"``: an item without labels gets the all-zero center in the code (no gradient at all);
  by default it gets Eq. 3's minimiser with no positives, sign(-mean of all codes);
- ``attack_mode``: the code runs PGD with the model in train mode (dropout on), as is the default here (the
  paper does not say); "eval" attacks the model in eval mode. The small FashionMNIST network has neither
  dropout nor batch norm, so both give the same numbers there.
The code also recomputes the centers for the loss after writing the batch's codes into B (a difference of
the batch's own rows only) and builds the first bank in train mode from augmented images; hashbench uses the
centers of step 1 for both steps and the victim's codes of the plain training images (eval mode); the
code's training images are augmented (random crop and flip), hashbench's are not.
"""
from __future__ import annotations

import typing

import torch

from benchmark import (Defense, OneOf, Range, binarize, center_codes, check_finite, lr_milestones,
                       make_optimizer, pgd_toward_codes, training_outputs)


class CgAT(Defense):
    name = "cgat"
    paper = "Wang, Lin, Li. CgAT: Center-Guided Adversarial Training for Deep Hashing-Based Retrieval. WWW 2023"
    url = "https://github.com/xunguangwang/CgAT"
    starts_from_victim = True

    epochs: typing.Annotated[int, Range(1)] = 30          # Sec. 4.1
    batch_size: typing.Annotated[int, Range(1)] = 32      # reference code (the paper's value is lost in our copy)
    optimizer: typing.Annotated[str, OneOf("sgd", "adam", "rmsprop")] = "sgd"  # Sec. 4.1
    lr: float = 0.01                                      # Sec. 4.1, reference code
    momentum: float = 0.9                                 # Sec. 4.1
    weight_decay: float = 5e-4                            # Sec. 4.1
    adversarial_weight: float = 1.0                       # lam of Eq. 13 (reference code: unweighted)
    train_epsilon: typing.Annotated[float, Range(0, 1)] = 8 / 255  # PGD budget while training (Sec. 4.1)
    step_size: float = 2 / 255                            # PGD step (Sec. 4.1)
    iterations: typing.Annotated[int, Range(1)] = 7       # PGD steps (Sec. 4.1)
    center_weighting: typing.Annotated[str, OneOf("paper", "code")] = "paper"   # Eq. 5; "code": weights ignored
    center_bank: typing.Annotated[str, OneOf("codes", "outputs")] = "codes"     # "outputs": the code's aliasing
    zero_label: typing.Annotated[str, OneOf("negatives", "zero")] = "negatives"  # "zero": the code's 0 center
    attack_mode: typing.Annotated[str, OneOf("train", "eval")] = "train"         # model mode during PGD

    def bank_entries(self, outputs: torch.Tensor) -> torch.Tensor:
        """What the bank holds for pre-activation outputs y: sign codes, or tanh(y) with ``center_bank="outputs"``."""
        return binarize(outputs) if self.center_bank == "codes" else torch.tanh(outputs)

    def adversarial_images(self, model, x, centers, generator):
        """PGD away from the centers (Eq. 9): descends mean f(x') c, i.e. ascends towards -c."""
        model.train(self.attack_mode == "train")
        x_adv = pgd_toward_codes(model, x, -centers, self.train_epsilon, self.iterations, self.step_size,
                                 random_start=True, generator=generator)
        model.train()
        return x_adv

    def fit(self, method, model, train, ctx):
        method.begin(train, model.bits, ctx)
        method.warm_start(model, train, ctx)  # the method's banks as its training left them (CgAT's preinstall)
        train_labels = train.labels.to(ctx.device)                                     # (N, C)
        bank = self.bank_entries(training_outputs(model, train, ctx.device))           # (N, K)
        optimizer = make_optimizer(self.optimizer, model.parameters(), self.lr, self.weight_decay, self.momentum)
        steps_per_epoch = -(-len(train) // self.batch_size)
        schedule = lr_milestones(optimizer, self.epochs * steps_per_epoch)
        model.train()
        for epoch in range(self.epochs):
            totals = {"loss_per_epoch": 0.0, "method_loss_per_epoch": 0.0, "adversarial_loss_per_epoch": 0.0}
            batches = train.batches(self.batch_size, shuffle=True, generator=ctx.generator)
            for step, (x, y, index) in enumerate(batches):
                x, y, index = x.to(ctx.device), y.to(ctx.device), index.to(ctx.device)
                centers = center_codes(y, train_labels, bank, self.center_weighting, self.zero_label)  # (B, K)
                x_adv = self.adversarial_images(model, x, centers, ctx.generator)
                clean_outputs = model.logits(x)                                         # (B, K)
                method_loss = method.training_loss(clean_outputs, y, index)
                adversarial_loss = -(torch.tanh(model.logits(x_adv)) * centers).mean()  # Eq. 12
                loss = method_loss + self.adversarial_weight * adversarial_loss
                check_finite(loss, self.name, epoch, step, kind="defenses")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                bank[index] = self.bank_entries(clean_outputs.detach())
                for key, value in zip(totals, (loss, method_loss, adversarial_loss)):
                    totals[key] += value.item()
                if step % 50 == 0:
                    ctx.progress(f"cgat epoch {epoch + 1}/{self.epochs} step {step + 1}/{steps_per_epoch} "
                                 f"loss {loss.item():.4f}")
            method.end_epoch(model, train, epoch, ctx)
            means = {key: total / steps_per_epoch for key, total in totals.items()}
            for key, mean in means.items():
                ctx.info.setdefault(key, []).append(mean)
            ctx.progress(f"cgat epoch {epoch + 1}/{self.epochs} loss {means['loss_per_epoch']:.4f} "
                         f"(method {means['method_loss_per_epoch']:.4f}, "
                         f"adversarial {means['adversarial_loss_per_epoch']:.4f})")
        model.eval()
