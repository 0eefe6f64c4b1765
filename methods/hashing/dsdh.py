"""DSDH: Deep Supervised Discrete Hashing (Li, Sun, He, Tan, NeurIPS 2017).

The paper's objective couples a pairwise likelihood on the relaxed outputs u with a linear classifier
W (K x C) on the discrete codes b in {-1, +1}^K of the N training images:

    min  - sum_{s_ij} ( s_ij theta_ij - log(1 + e^{theta_ij}) ) + mu sum_i ||y_i - W^T b_i||^2 + nu ||W||^2
         + eta sum_i ||b_i - u_i||^2,        theta_ij = 1/2 u_i^T u_j,   u = tanh(y).

It alternates two steps:
* network step (every batch), the objective's terms that depend on u, per pair as in the official code
  (whose gradient is divided by B N):
      L = mean_{i,j} ( log(1 + e^{theta_ij}) - s_ij theta_ij ) + eta / (B N) * sum_{i in batch} ||b_i - u_i||^2
          + mu mean_i (y_i - W^T b_i)^2 + nu mean W^2
  (the last two terms do not depend on the network; they are the reference code's reported loss);
* discrete step (``end_epoch``), discrete cyclic coordinate descent, ``dcc_iter`` rounds of
      W = (B B^T + nu/mu I)^-1 B Y^T,   then for each bit k:  B_k = sign(P_k - B'^T W' w_k),  P = W Y + eta/mu U,
  with B (K x N) the codes, U (K x N) a bank of the training outputs filled during the epoch by
  ``observe`` (the reference form), Y (C x N) the labels, and B', W' without bit k.
Both steps live in ``benchmark.DSDHState``, which DSDH-C shares.

Departures: the pairwise term pairs the batch with itself by default (``pairs="batch"``; ``"memory"``
pairs it with the bank, as the reference code does, a bank that starts at zero); the discrete step runs once
per epoch (CgAT; DeepHash-pytorch runs it every batch, the official code per batch on the batch only);
before the first discrete step b_i = sign(u_i) and W = 0. u = tanh(y) as in CgAT (the official and
DeepHash-pytorch code use the raw output). The reference PyTorch code (DeepHash-pytorch, CgAT) drops
the eta ||b - u||^2 term from the network step; the official code and the paper keep it, and so does
hashbench. Adam at lr 1e-3 trains PPL's small network from scratch (references: pretrained AlexNet/VGG).
"""
from __future__ import annotations

import torch

from benchmark import DSDHState, HashingMethod, training_outputs


class DSDH(HashingMethod):
    name = "dsdh"
    paper = "Li, Sun, He, Tan. Deep Supervised Discrete Hashing. NeurIPS 2017"
    url = "https://github.com/liqi-casia/DSDH-HashingCode"

    epochs: int = 40           # DeepHash-pytorch: 150 (RMSprop 1e-5, pretrained AlexNet)
    batch_size: int = 128      # DeepHash-pytorch and the official code
    optimizer: str = "adam"    # DeepHash-pytorch: rmsprop; CgAT: sgd 0.01
    lr: float = 1e-3           # DeepHash-pytorch: 1e-5
    weight_decay: float = 1e-5  # DeepHash-pytorch
    mu: float = 1.0            # classification weight (DeepHash-pytorch, CgAT)
    nu: float = 1.0            # classifier regularisation (DeepHash-pytorch, CgAT)
    eta: float = 55.0          # quantisation weight (DeepHash-pytorch, CgAT)
    dcc_iter: int = 10         # rounds of discrete cyclic coordinate descent (DeepHash-pytorch, CgAT)
    pairs: str = "batch"       # "batch": pairs within the batch; "memory": against the bank of training outputs

    def begin(self, train, bits, ctx):
        if self.pairs not in ("batch", "memory"):
            raise ValueError(f"dsdh.pairs must be 'batch' or 'memory'; got {self.pairs!r}")
        self.state = DSDHState.start(train.labels, bits, ctx.device)  # banks U, Y; codes B; classifier W

    def warm_start(self, model, train, ctx):
        u = torch.tanh(training_outputs(model, train, ctx.device))
        self.state.warm_start(u, self.mu, self.nu, self.eta, self.dcc_iter)

    def observe(self, outputs, labels, index):
        self.state.observe(torch.tanh(outputs), index)

    def loss(self, outputs, labels, index):
        return self.state.network_loss(torch.tanh(outputs), labels, index, self.pairs, self.mu, self.nu, self.eta)

    def end_epoch(self, model, train, epoch, ctx):
        self.state.discrete_step(self.mu, self.nu, self.eta, self.dcc_iter)
