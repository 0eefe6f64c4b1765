"""DSDH-C: DSDH (Li et al., NeurIPS 2017) with the coordinate-wise sliced-Wasserstein quantisation loss
of Doan, Yang, Li (HSWD, CVPR 2022), CgAT's default victim (``DSDHCLoss``).

Everything of ``dsdh`` (same network step, same once-per-epoch discrete step; see dsdh.py), plus

    L_C = L_DSDH + q_weight * SWD_C(u),
    SWD_C(u) = 1/(B K) sum_k sum_r ( sort(u_{:,k})_r - sort(z_{:,k})_r )^2,

the squared 1-D Wasserstein distance, bit by bit, between the batch's relaxed outputs u (B, K) and a fresh
draw z (B, K) of independent uniform +-1 samples (the target distribution of balanced binary codes; drawn
once per batch by ``observe``, so the loss itself draws nothing).
Both plugins run DSDH's two steps through ``benchmark.DSDHState`` (plugins import only from ``benchmark``,
whose code is part of the victims' cache key). The departures are DSDH's (see dsdh.py); the +-1 samples come
from a generator seeded from the TrainContext, so runs are reproducible.
"""
from __future__ import annotations

import torch

from benchmark import DSDHState, HashingMethod, training_outputs


class DSDHC(HashingMethod):
    name = "dsdh_c"
    paper = ("Li, Sun, He, Tan. Deep Supervised Discrete Hashing. NeurIPS 2017; with the quantisation loss of "
             "Doan, Yang, Li. One Loss for Quantization: Deep Hashing with Discrete Wasserstein Distributional "
             "Matching. CVPR 2022")
    url = "https://github.com/xunguangwang/CgAT"

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
    q_weight: float = 0.1      # weight of the sliced-Wasserstein quantisation loss (CgAT quantization_alpha)

    def begin(self, train, bits, ctx):
        if self.pairs not in ("batch", "memory"):
            raise ValueError(f"dsdh_c.pairs must be 'batch' or 'memory'; got {self.pairs!r}")
        self.state = DSDHState.start(train.labels, bits, ctx.device)  # banks U, Y; codes B; classifier W
        seed = int(torch.randint(2**62, (1,), generator=ctx.generator))
        self.sampler = torch.Generator().manual_seed(seed)  # the +-1 target samples of the quantisation loss
        self.target = None  # (B, K) the current batch's draw, set by observe

    def warm_start(self, model, train, ctx):
        u = torch.tanh(training_outputs(model, train, ctx.device))
        self.state.warm_start(u, self.mu, self.nu, self.eta, self.dcc_iter)

    def observe(self, outputs, labels, index):
        """Records the batch in DSDH's bank and draws the batch's +-1 target samples."""
        self.state.observe(torch.tanh(outputs), index)
        self.target = torch.randint(0, 2, outputs.shape, generator=self.sampler).to(outputs) * 2 - 1  # (B, K)

    def loss(self, outputs, labels, index):
        u = torch.tanh(outputs)  # (B, K)
        dsdh = self.state.network_loss(u, labels, index, self.pairs, self.mu, self.nu, self.eta)
        return dsdh + self.q_weight * self.sliced_wasserstein(u)

    def sliced_wasserstein(self, u):
        """SWD_C: bit-wise squared 1-D Wasserstein distance to the batch's +-1 samples, a mean over (B, K)."""
        if self.target is None or self.target.shape != u.shape:
            drawn = None if self.target is None else tuple(self.target.shape)
            raise ValueError(f"dsdh_c.loss got outputs of shape {tuple(u.shape)}, but observe drew the +-1 "
                             f"samples for shape {drawn}: call observe on the batch first")
        return (u.sort(dim=0).values - self.target.sort(dim=0).values).pow(2).mean()

    def end_epoch(self, model, train, epoch, ctx):
        self.state.discrete_step(self.mu, self.nu, self.eta, self.dcc_iter)
