"""HashNet: Deep Learning to Hash by Continuation (Cao, Long, Wang, Yu, ICCV 2017).

The paper's weighted maximum likelihood over pairs, on the continuation activation u = tanh(beta * y):

    L = 1/S * sum_{i,j} w_ij ( log(1 + exp(alpha u_i^T u_j)) - s_ij alpha u_i^T u_j ),
    w_ij = S / S_1 if s_ij = 1,  S / S_0 if s_ij = 0,

with S_1 / S_0 the numbers of similar / dissimilar pairs and S = S_0 + S_1 (the paper's weights, as CgAT,
PGAN, TAD and DeepHash-pytorch compute them), and alpha the scale of the inner product. Continuation:
beta starts at 1 and, every ``scale_step`` training iterations, becomes (1 + gamma * iteration)^power
(the official code's hash layer). beta lives in the method, not in the victim: codes are sign(y),
which beta does not change, and attacks choose their own tanh scale.

Departures: pairs are taken within the batch by default (``pairs="batch"``; ``"memory"`` pairs the
batch with a bank of all training outputs as in CgAT/PGAN/DeepHash-pytorch, a bank that starts at
zero); Adam at lr 1e-3 trains PPL's small network from scratch, where the references fine-tune a
pretrained AlexNet (RMSprop 1e-5 in DeepHash-pytorch, SGD 0.01 in TAD).
"""
from __future__ import annotations

import math

import torch

from benchmark import HashingMethod, logistic_pair_loss, pairwise_similarity, training_outputs


class HashNet(HashingMethod):
    name = "hashnet"
    paper = "Cao, Long, Wang, Yu. HashNet: Deep Learning to Hash by Continuation. ICCV 2017"
    url = "https://github.com/thuml/HashNet"

    epochs: int = 40           # DeepHash-pytorch: 150 (RMSprop 1e-5, pretrained AlexNet)
    batch_size: int = 128      # DeepHash-pytorch: 64; TAD: 24
    optimizer: str = "adam"    # DeepHash-pytorch: rmsprop; TAD: sgd
    lr: float = 1e-3           # DeepHash-pytorch: 1e-5; TAD: 0.01
    weight_decay: float = 1e-5  # DeepHash-pytorch
    alpha: float = 0.1         # inner-product scale (CgAT, PGAN, TAD); SAAT and DeepHash-pytorch's main use 10/K
    gamma: float = 0.005       # beta = (1 + gamma * iteration)^power (official code's hash layer; PGAN/TAD backbones)
    power: float = 0.5         # official code
    scale_step: int = 200      # iterations between beta updates (official code)
    pairs: str = "batch"       # "batch": pairs within the batch; "memory": against a bank of all training outputs

    def begin(self, train, bits, ctx):
        if self.pairs not in ("batch", "memory"):
            raise ValueError(f"hashnet.pairs must be 'batch' or 'memory'; got {self.pairs!r}")
        if self.pairs == "memory":
            self.bank_outputs = torch.zeros(len(train), bits, device=ctx.device)  # (N, K)
            self.bank_labels = train.labels.to(ctx.device)                         # (N, C)
        self.iteration = 0
        self.beta = 1.0

    def warm_start(self, model, train, ctx):
        """Continuation where ``fit`` ended: its iteration count, the beta of its last schedule point."""
        self.iteration = self.epochs * math.ceil(len(train) / self.batch_size)
        last_update = (self.iteration - 1) // self.scale_step * self.scale_step
        self.beta = (1 + self.gamma * last_update) ** self.power
        if self.pairs == "memory":
            self.bank_outputs = torch.tanh(self.beta * training_outputs(model, train, ctx.device))

    def observe(self, outputs, labels, index):
        """One training iteration: the continuation schedule moves, the bank records the batch."""
        if self.iteration % self.scale_step == 0:
            self.beta = (1 + self.gamma * self.iteration) ** self.power
        self.iteration += 1
        if self.pairs == "memory":
            self.bank_outputs[index] = torch.tanh(self.beta * outputs)

    def loss(self, outputs, labels, index):
        u = torch.tanh(self.beta * outputs)  # (B, K)
        if self.pairs == "memory":
            others, other_labels = self.bank_outputs, self.bank_labels
        else:
            others, other_labels = u, labels
        similarity = pairwise_similarity(labels, other_labels)  # (B, n) in {0, 1}
        pair_loss = logistic_pair_loss(self.alpha * u @ others.t(), similarity)
        total, positives = similarity.numel(), similarity.sum()
        negatives = total - positives
        # w_ij = S/S_1 or S/S_0; the clamp only matters for a kind of pair absent from the batch (no terms to weight)
        weights = torch.where(similarity > 0, total / positives.clamp(min=1), total / negatives.clamp(min=1))
        return (weights * pair_loss).sum() / total

    def end_epoch(self, model, train, epoch, ctx):
        ctx.info["hashnet_beta"] = self.beta
