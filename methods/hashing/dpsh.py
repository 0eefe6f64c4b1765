"""DPSH: Feature Learning based Deep Supervised Hashing with Pairwise Labels (Li, Wang, Kang, IJCAI 2016).

Minimises the negative log-likelihood of the pairwise labels plus a quantisation penalty (paper Eq. 4):

    L = - sum_{s_ij in S} ( s_ij * theta_ij - log(1 + e^{theta_ij}) ) + eta * sum_i || b_i - u_i ||^2,
    theta_ij = 1/2 u_i^T u_j,   b_i = sign(u_i).

Departures: u = tanh(y) (the victim's tanh head, as in CgAT and ProS-GAN) rather than the raw output;
both terms are means, not sums. Pairs are taken within the batch by default (``pairs="batch"``):
the memory-bank form of the reference code (``pairs="memory"``, a bank of training outputs that
starts at zero) stalls at zero output on PPL's small network trained from scratch.
"""
from __future__ import annotations

import torch

from benchmark import HashingMethod, logistic_pair_loss, pairwise_similarity, training_outputs


class DPSH(HashingMethod):
    name = "dpsh"
    paper = "Li, Wang, Kang. Feature Learning based Deep Supervised Hashing with Pairwise Labels. IJCAI 2016"
    url = "https://github.com/jiangqy/DPSH-pytorch"

    epochs: int = 40
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-5
    eta: float = 0.1      # quantisation weight (DeepHash-pytorch's alpha = 0.1; CgAT uses 0.001)
    pairs: str = "batch"  # "batch": pairs within the batch; "memory": the batch against a bank of all training outputs

    def begin(self, train, bits, ctx):
        if self.pairs not in ("batch", "memory"):
            raise ValueError(f"dpsh.pairs must be 'batch' or 'memory'; got {self.pairs!r}")
        if self.pairs == "memory":
            self.bank_outputs = torch.zeros(len(train), bits, device=ctx.device)
            self.bank_labels = train.labels.to(ctx.device)

    def warm_start(self, model, train, ctx):
        if self.pairs == "memory":
            self.bank_outputs = torch.tanh(training_outputs(model, train, ctx.device))

    def observe(self, outputs, labels, index):
        if self.pairs == "memory":
            self.bank_outputs[index] = torch.tanh(outputs)

    def loss(self, outputs, labels, index):
        u = torch.tanh(outputs)
        if self.pairs == "memory":
            others, other_labels = self.bank_outputs, self.bank_labels
        else:
            others, other_labels = u, labels
        theta = 0.5 * u @ others.t()
        likelihood = logistic_pair_loss(theta, pairwise_similarity(labels, other_labels)).mean()
        quantisation = (u - torch.sign(u).detach()).pow(2).mean()
        return likelihood + self.eta * quantisation
