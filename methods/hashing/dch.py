"""DCH: Deep Cauchy Hashing for Hamming Space Retrieval (Cao, Long, Liu, Wang, CVPR 2018).

A Cauchy cross-entropy over the pairs of the batch plus a Cauchy quantisation loss, on u = tanh(y):

    d(u_i, u_j) = K/2 * (1 - cos(u_i, u_j)),   with cos clamped to at most 0.99,
    L = mean_{i,j} w_ij [ s_ij log(d_ij / gamma) + log(1 + gamma / d_ij) ]
        + lam * mean_i log(1 + d(|u_i|, 1) / gamma),
    w_ij = S / S_1 if s_ij = 1,  S / S_0 if s_ij = 0  (w = 1 if the batch lacks one kind of pair),

where S_1 / S_0 are the numbers of similar / dissimilar pairs in the batch, S = S_0 + S_1 (the i = j
pairs included, as in the reference code), and 1 the all-ones vector. The clamp keeps d > 0 for
identical directions (DeepHash-pytorch, CgAT). Departure: Adam at lr 1e-3 trains PPL's small network
from scratch; DeepHash-pytorch fine-tunes a pretrained AlexNet with RMSprop at 1e-5.
"""
from __future__ import annotations

import torch

from benchmark import HashingMethod, pairwise_similarity


class DCH(HashingMethod):
    name = "dch"
    paper = "Cao, Long, Liu, Wang. Deep Cauchy Hashing for Hamming Space Retrieval. CVPR 2018"
    url = "https://github.com/swuxyj/DeepHash-pytorch"

    epochs: int = 40           # DeepHash-pytorch: 150 (RMSprop 1e-5, pretrained AlexNet)
    batch_size: int = 128      # DeepHash-pytorch
    optimizer: str = "adam"    # DeepHash-pytorch: rmsprop
    lr: float = 1e-3           # DeepHash-pytorch: 1e-5
    weight_decay: float = 1e-5  # DeepHash-pytorch
    gamma: float = 20.0        # Cauchy scale (DeepHash-pytorch, CgAT)
    lam: float = 0.1           # quantisation weight lambda (DeepHash-pytorch, CgAT)

    def cauchy_distance(self, a, b):
        """K/2 (1 - cos(a_i, b_j)), (A, B); cos clamped to at most 0.99 so that d > 0."""
        cos = (a @ b.t()) / (a.norm(dim=1, keepdim=True) * b.norm(dim=1)).clamp(min=1e-4)
        return a.shape[1] / 2 * (1 - cos.clamp(max=0.99))

    def loss(self, outputs, labels, index):
        u = torch.tanh(outputs)  # (B, K)
        s = pairwise_similarity(labels, labels)  # (B, B) in {0, 1}
        total, positives = s.numel(), s.sum()
        negatives = total - positives
        if positives > 0 and negatives > 0:
            w = s * total / positives + (1 - s) * total / negatives
        else:
            w = torch.ones_like(s)
        d = self.cauchy_distance(u, u)
        cauchy = w * (s * torch.log(d / self.gamma) + torch.log(1 + self.gamma / d))
        d_quant = self.cauchy_distance(u.abs(), torch.ones_like(u[:1]))  # (B, 1)
        quantisation = torch.log(1 + d_quant / self.gamma)
        return cauchy.mean() + self.lam * quantisation.mean()
