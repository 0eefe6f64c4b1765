"""DPH: the basic pairwise hashing model of HAG (Yang, Liu, Deng, Tao, IEEE TCYB 2018, Sec. III-C, Eq. 11-12).

The victim of HAG ("targeted hashing model"): inner products of the relaxed codes regressed onto
{-1, +1} pairwise labels (paper Eq. 11, in the per-batch form of the reference code):

    L = 1/(N B) * sum_{i in batch} sum_j ( u_i^T u_j / K - s~_ij )^2,
    u = tanh(y),   s~_ij = 2 s_ij - 1  (+1 if i and j share a label, -1 otherwise, paper Eq. 12),

where j runs over the N partners of each batch item.

Departures: the paper averages over all N^2 training pairs, and the reference code (TAD/PGAN/SAAT
dph.py) pairs the batch with a memory bank of all training outputs (``pairs="memory"``); hashbench
pairs within the batch by default (``pairs="batch"``, N = B), because a bank that starts at zero
stalled DPSH at zero output on PPL's small network trained from scratch (the lead's measurement, not
repeated for DPH). The paper fine-tunes a pretrained VGG16 with SGD (lr 1e-3, momentum 0.9, batch
24); the small network is trained from scratch with Adam at a lower lr: the loss's gradient is
proportional to the outputs, which start near 0 (no quantisation term pushes them away, unlike
DPSH), and Adam at lr 1e-3 drives them to zero within a few steps, where training stalls (mAP 0.34
after 10 epochs at 32 bits, against 0.66 at lr 3e-4).
"""
from __future__ import annotations

import torch

from benchmark import HashingMethod, pairwise_similarity, training_outputs


class DPH(HashingMethod):
    name = "dph"
    paper = ("Yang, Liu, Deng, Tao. Adversarial Examples for Hamming Space Search. IEEE Trans. Cybernetics 2018 "
             "(vol. 50, 2020), Sec. III-C")
    url = "https://github.com/xunguangwang/Targeted-Attack-and-Defense-for-Deep-Hashing"

    epochs: int = 40           # HAG Sec. IV-C gives no epoch count; as dpsh
    batch_size: int = 128      # HAG Sec. IV-C: 24
    optimizer: str = "adam"    # HAG Sec. IV-C: SGD, momentum 0.9
    lr: float = 3e-4           # HAG Sec. IV-C: 1e-3 (SGD, pretrained VGG16); Adam at 1e-3 collapses to zero output
    weight_decay: float = 1e-5  # TAD/PGAN hashing code
    pairs: str = "batch"       # "batch": pairs within the batch; "memory": against a bank of all training outputs

    def begin(self, train, bits, ctx):
        if self.pairs not in ("batch", "memory"):
            raise ValueError(f"dph.pairs must be 'batch' or 'memory'; got {self.pairs!r}")
        if self.pairs == "memory":
            self.bank_outputs = torch.zeros(len(train), bits, device=ctx.device)  # (N, K)
            self.bank_labels = train.labels.to(ctx.device)                         # (N, C)

    def warm_start(self, model, train, ctx):
        if self.pairs == "memory":
            self.bank_outputs = torch.tanh(training_outputs(model, train, ctx.device))

    def observe(self, outputs, labels, index):
        if self.pairs == "memory":
            self.bank_outputs[index] = torch.tanh(outputs)

    def loss(self, outputs, labels, index):
        u = torch.tanh(outputs)  # (B, K)
        if self.pairs == "memory":
            others, other_labels = self.bank_outputs, self.bank_labels
        else:
            others, other_labels = u, labels
        target = 2 * pairwise_similarity(labels, other_labels) - 1  # (B, n) in {-1, +1}
        return (u @ others.t() / u.shape[1] - target).pow(2).mean()
