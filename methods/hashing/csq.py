"""CSQ: Central Similarity Quantization for Efficient Image and Video Retrieval (Yuan et al., CVPR 2020).

Each class gets a hash centre; each image is pulled to the centre of its labels, on u = tanh(y):

    L = mean_{i,k} BCE( (u_ik + 1)/2, (c_ik + 1)/2 ) + lam * mean_{i,k} (|u_ik| - 1)^2,
    BCE(p, t) = -( t log p + (1 - t) log(1 - p) ),

computed as binary cross-entropy with logits 2y, since (tanh(y) + 1)/2 = sigmoid(2y) (equal, and stable
when u saturates). Centres (the paper's Algorithm 1): the first C rows of [H_K; -H_K], H_K the
Sylvester-Hadamard matrix (pairwise Hamming distance K/2 between rows of H_K); when 2K < C the
missing rows are random balanced +-1 vectors (K/2 entries -1), redrawn up to ``center_tries`` times
until the minimum pairwise distance exceeds K/4 and the mean is at least K/2 (DeepHash-pytorch,
CgAT), else the draw with the largest minimum is kept. Multi-label centre: c = sign(sum of the label
centres), where a zero sum takes the bit of one fixed random centre.

Departures: when K is not a power of two (no Sylvester matrix) every centre is such a random
balanced vector (the reference code needs scipy's Hadamard, which has no such K). All randomness
comes from the TrainContext's generator. Adam at lr 1e-3 trains PPL's small network from scratch
(DeepHash-pytorch: Adam 1e-3 on a pretrained AlexNet/ResNet; CgAT: SGD 0.01).
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from benchmark import HashingMethod, binarize


class CSQ(HashingMethod):
    name = "csq"
    paper = ("Yuan, Wang, Zhang, Tay, Jie, Liu, Feng. Central Similarity Quantization for Efficient Image and "
             "Video Retrieval. CVPR 2020")
    url = "https://github.com/yuanli2333/Hadamard-Matrix-for-hashing"

    epochs: int = 40           # DeepHash-pytorch: 150 (pretrained AlexNet)
    batch_size: int = 128      # DeepHash-pytorch CSQ.py (commit 0fc62a5; spec 2.7 cites 64 from another version)
    optimizer: str = "adam"    # DeepHash-pytorch CSQ.py (0fc62a5; spec 2.7: rmsprop)
    lr: float = 1e-3           # DeepHash-pytorch CSQ.py (0fc62a5; spec 2.7: 1e-5)
    weight_decay: float = 1e-5  # as the other methods (DeepHash-pytorch CSQ.py: 0)
    lam: float = 1e-4          # quantisation weight lambda (DeepHash-pytorch, CgAT; SAAT 0.05)
    center_tries: int = 20     # redraws of the random centres (DeepHash-pytorch, CgAT)

    def begin(self, train, bits, ctx):
        self.centers = hash_centers(ctx.num_classes, bits, ctx.generator, self.center_tries).to(ctx.device)
        self.tie_center = (torch.randint(0, 2, (bits,), generator=ctx.generator) * 2 - 1).float().to(ctx.device)

    def label_centers(self, labels):
        """c = sign(sum of the label centres), ties taken from the fixed random centre; (B, K) in {-1, +1}."""
        total = labels @ self.centers  # (B, K)
        return torch.where(total == 0, self.tie_center.expand_as(total), binarize(total))

    def loss(self, outputs, labels, index):
        u = torch.tanh(outputs)  # (B, K)
        target = (self.label_centers(labels) + 1) / 2  # (B, K) in {0, 1}
        center_loss = F.binary_cross_entropy_with_logits(2 * outputs, target)  # = BCE((u + 1)/2, target)
        return center_loss + self.lam * (u.abs() - 1).pow(2).mean()


def sylvester_hadamard(bits: int) -> torch.Tensor:
    """H_K for K a power of two: H_1 = [1], H_2n = [[H_n, H_n], [H_n, -H_n]]."""
    h = torch.ones(1, 1)
    while h.shape[0] < bits:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def hash_centers(num_classes: int, bits: int, generator: torch.Generator, tries: int) -> torch.Tensor:
    """(C, K) centres in {-1, +1}: Hadamard rows first, then random balanced rows checked for spread."""
    fixed = torch.empty(0, bits)
    if bits & (bits - 1) == 0:
        h = sylvester_hadamard(bits)
        fixed = torch.cat([h, -h])[:num_classes]  # (min(C, 2K), K)
    missing = num_classes - len(fixed)
    if missing == 0:
        return fixed
    best, best_min = None, -1.0
    for _ in range(tries):
        order = torch.rand(missing, bits, generator=generator).argsort(dim=1)
        draw = torch.where(order < bits // 2, -1.0, 1.0)  # each row: K/2 entries -1 at random places
        centers = torch.cat([fixed, draw])
        distance = (bits - centers @ centers.t()) / 2  # Hamming distances
        pairs = distance[torch.triu_indices(num_classes, num_classes, 1).unbind()]
        if pairs.min() > bits / 4 and pairs.mean() >= bits / 2:
            return centers
        if pairs.min() > best_min:
            best, best_min = centers, pairs.min().item()
    return best
