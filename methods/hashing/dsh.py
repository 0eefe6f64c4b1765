"""DSH: Deep Supervised Hashing for Fast Image Retrieval (Liu, Wang, Shan, Chen, CVPR 2016).

Contrastive loss on the raw outputs u = y, with the paper's regulariser pulling every output to +-1:

    L = mean_{i,j} [ (1 - d_ij)/2 * ||u_i - u_j||^2 + d_ij/2 * max(m - ||u_i - u_j||^2, 0) ]
        + alpha * mean_{i,k} | |u_ik| - 1 |,

with d_ij = 1 if i and j share no label (dissimilar) and 0 otherwise, and the margin m = 2K.
Departures: pairs are taken within the batch by default (``pairs="batch"``), as in the paper;
``"memory"`` pairs the batch with a bank of all training outputs as DeepHash-pytorch does. Both
terms are means (DeepHash-pytorch), not the paper's sums. Adam at lr 1e-3 trains PPL's small network
from scratch, where DeepHash-pytorch fine-tunes a pretrained AlexNet with RMSprop at 1e-5.
"""
from __future__ import annotations

import torch

from benchmark import HashingMethod, pairwise_similarity, training_outputs


class DSH(HashingMethod):
    name = "dsh"
    paper = "Liu, Wang, Shan, Chen. Deep Supervised Hashing for Fast Image Retrieval. CVPR 2016"
    url = "https://github.com/swuxyj/DeepHash-pytorch"

    epochs: int = 40           # DeepHash-pytorch: 250 (spec 2.4; 90 in one of its versions)
    batch_size: int = 128      # DeepHash-pytorch: 64
    optimizer: str = "adam"    # DeepHash-pytorch: rmsprop
    lr: float = 1e-3           # DeepHash-pytorch: 1e-5 (pretrained AlexNet)
    weight_decay: float = 1e-5  # DeepHash-pytorch
    alpha: float = 0.1         # regulariser weight (DeepHash-pytorch)
    margin: float = 2.0        # m = margin * K (paper and DeepHash-pytorch: m = 2K)
    pairs: str = "batch"       # "batch": pairs within the batch; "memory": against a bank of all training outputs

    def begin(self, train, bits, ctx):
        if self.pairs not in ("batch", "memory"):
            raise ValueError(f"dsh.pairs must be 'batch' or 'memory'; got {self.pairs!r}")
        if self.pairs == "memory":
            self.bank_outputs = torch.zeros(len(train), bits, device=ctx.device)  # (N, K)
            self.bank_labels = train.labels.to(ctx.device)                         # (N, C)

    def warm_start(self, model, train, ctx):
        if self.pairs == "memory":
            self.bank_outputs = training_outputs(model, train, ctx.device)

    def observe(self, outputs, labels, index):
        if self.pairs == "memory":
            self.bank_outputs[index] = outputs

    def loss(self, outputs, labels, index):
        u = outputs  # (B, K), raw outputs as in the paper
        if self.pairs == "memory":
            others, other_labels = self.bank_outputs, self.bank_labels
        else:
            others, other_labels = u, labels
        # (B, n) squared Euclidean distances, expanded to avoid a (B, n, K) tensor
        distance = (u.pow(2).sum(1, keepdim=True) + others.pow(2).sum(1) - 2 * u @ others.t()).clamp(min=0)
        dissimilar = 1 - pairwise_similarity(labels, other_labels)            # (B, n) in {0, 1}
        margin = self.margin * u.shape[1]
        contrastive = (1 - dissimilar) / 2 * distance + dissimilar / 2 * (margin - distance).clamp(min=0)
        regulariser = (u.abs() - 1).abs().mean()
        return contrastive.mean() + self.alpha * regulariser
