"""ADSH: Asymmetric Deep Supervised Hashing (Jiang, Li, AAAI 2018).

Asymmetric: the network encodes queries, while the database points have free binary codes V (N, K).
Here the training set plays the database of the learning problem. Each outer iteration samples m
database points Omega, trains the network on them for a few epochs, then updates V in closed form:

* network step, on u = tanh(y) of the sampled points (batch index i, Omega_i its database index):
      L = 1/(N B) * [ sum_{i,j} ( u_i^T v_j - K s_ij )^2 + gamma sum_i || v_{Omega_i} - u_i ||^2 ],
  s_ij = 1 for similar pairs and -r otherwise, r = #similar / #dissimilar pairs of the matrix
  (the reference code's soft similarity; the paper uses {-1, +1});
* V step (after the inner epochs), bit by bit, with U (m, K) the sampled points' outputs collected by
  ``observe`` during the inner epochs and U_bar (N, K) equal to U at Omega and 0 elsewhere:
      Q = -2K S^T U - 2 gamma U_bar,   V_k = -sign( 2 V_{-k} (U_{-k}^T U_k) + Q_k ),
  where S is (m, N) and V_{-k}, U_{-k} drop bit k.

Departures: V starts as random +-1 codes drawn from the TrainContext's generator, where the reference
code starts from V = 0: then the first outer iteration only pulls u to 0 (the square term has no
gradient), which on PPL's small network trained from scratch left the codes at chance for the next
three outer iterations (mAP 0.10 at 32 bits, against 0.61 after the first one from random V).
The paper keeps V as the codes of the database points inside the training set;
hashbench encodes both queries and database with the network, so that every attack is measured the
same way on every method. A defense that goes on training a trained victim (``warm_start``) starts
from V = the codes of the training points, and its epochs over the whole training set end in a V step on
all of them (m = N; the similarity matrix is then N x N). ``epochs`` counts outer iterations (each
``inner_epochs`` passes over m points). Adam at lr 1e-3 trains PPL's small network from scratch
(DeepHash-pytorch: Adam 1e-4 on a pretrained AlexNet); fewer outer iterations than the reference's 150
suffice on FashionMNIST.
"""
from __future__ import annotations

import torch

from benchmark import HashingMethod, binarize, check_finite, pairwise_similarity, training_outputs


class ADSH(HashingMethod):
    name = "adsh"
    paper = "Jiang, Li. Asymmetric Deep Supervised Hashing. AAAI 2018"
    url = "https://github.com/jiangqy/ADSH-AAAI2018"

    epochs: int = 50           # outer iterations (DeepHash-pytorch max_iter: 150)
    inner_epochs: int = 3      # epochs over the sampled points per outer iteration (DeepHash-pytorch)
    num_samples: int = 2000    # m, points sampled per outer iteration (DeepHash-pytorch)
    batch_size: int = 64       # DeepHash-pytorch
    optimizer: str = "adam"    # DeepHash-pytorch
    lr: float = 1e-3           # DeepHash-pytorch: 1e-4 (pretrained AlexNet)
    weight_decay: float = 1e-5  # DeepHash-pytorch
    gamma: float = 200.0       # weight of ||v - u||^2 (paper, DeepHash-pytorch)

    def begin(self, train, bits, ctx):
        self.Y = train.labels.to(ctx.device)                        # (N, C)
        # (N, K) database codes, random +-1 before the first V step (the reference starts from 0)
        self.V = binarize(torch.randn(len(train), bits, generator=ctx.generator)).to(ctx.device)
        self.U_bar = torch.zeros(len(train), bits, device=ctx.device)  # (N, K) outputs of the sampled points
        self.sample = None  # database indices of the current outer iteration's points (None: every point)

    def warm_start(self, model, train, ctx):
        """V as training leaves it: the codes of the training points under the trained network (the gamma
        term of the loss pulls v_i and u_i together)."""
        self.V = binarize(training_outputs(model, train, ctx.device))

    def similarity(self, labels):
        """s_ij = 1 if similar, -r otherwise, r = #similar / #dissimilar; (B, N)."""
        s = pairwise_similarity(labels, self.Y)
        r = s.sum() / (1 - s).sum().clamp(min=1)
        return s * (1 + r) - r

    def observe(self, outputs, labels, index):
        self.U_bar[index] = torch.tanh(outputs)

    def loss(self, outputs, labels, index):
        u = torch.tanh(outputs)  # (B, K)
        square = (u @ self.V.t() - u.shape[1] * self.similarity(labels)).pow(2).sum()
        quantisation = (self.V[index] - u).pow(2).sum()
        return (square + self.gamma * quantisation) / (len(self.V) * len(u))

    @torch.no_grad()
    def update_codes(self, sample):
        """The closed-form bitwise V step; ``sample`` holds the database indices of the sampled points."""
        U = self.U_bar[sample]                                   # (m, K)
        Q = -2 * U.shape[1] * self.similarity(self.Y[sample]).t() @ U - 2 * self.gamma * self.U_bar  # (N, K)
        for k in range(U.shape[1]):
            rest = [j for j in range(U.shape[1]) if j != k]
            self.V[:, k] = -binarize(2 * self.V[:, rest] @ (U[:, rest].t() @ U[:, k]) + Q[:, k])

    def end_epoch(self, model, train, epoch, ctx):
        """The V step after the outer iteration's inner epochs; in a defense's loop, where an epoch visits
        every training point, on all of them (ADSH with m = N)."""
        sample = self.sample if self.sample is not None else torch.arange(len(self.V), device=self.V.device)
        self.update_codes(sample)

    def fit(self, model, train, ctx):
        self.begin(train, model.bits, ctx)
        optimizer = self.make_optimizer(model)
        model.train()
        m = min(self.num_samples, len(train))
        for outer in range(self.epochs):
            sample = torch.randperm(len(train), generator=ctx.generator)[:m]
            points = train.subset(sample)
            self.sample = sample.to(ctx.device)
            self.U_bar.zero_()
            total, steps = 0.0, 0
            for _ in range(self.inner_epochs):
                for x, y, local in points.batches(self.batch_size, shuffle=True, generator=ctx.generator):
                    index = sample[local].to(ctx.device)
                    loss = self.training_loss(model.logits(x.to(ctx.device)), y.to(ctx.device), index)
                    check_finite(loss, self.name, outer, steps)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total, steps = total + loss.item(), steps + 1
            self.end_epoch(model, train, outer, ctx)
            ctx.info.setdefault("loss_per_epoch", []).append(total / max(steps, 1))
            ctx.progress(f"outer iteration {outer + 1}/{self.epochs} loss {total / max(steps, 1):.4f}")
        model.eval()
