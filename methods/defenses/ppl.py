"""PPL: Proactive Privacy-preserving Learning for retrieval (Zhang, Huang, Xu, AAAI 2021).

A data protection, trained before release: an auto-encoder generator G turns each clean image x into
z = x + G(x), ||G(x)||_inf <= epsilon, projected into [0, 1] (Eq. 2), so that retrieval models fail
across the clean and protected domains (C->A, A->C) while the protected data keep their own similarity
structure (A->A for models trained on it). No model to fool is known, so G plays a two-player game
against a surrogate retrieval model F (PPL's small network, tanh codes h = tanh(F(.)), Eq. 3):

    J_o = sum_ij (h(z_i)^T h(z_j) - c S_ij)^2                       affinity-preserving, Eq. 4
    J_p = alpha D_s + beta J_s + gamma J_e                           privacy-preserving, Eq. 11
          D_s = SMMD(h(x), h(z); S)                                  domain loss, Eq. 5-8
          J_s = sum_ij (h(x_i)^T h(z_j) - c S_ij)^2                  similarity loss, Eq. 9
          J_e = sum_i ||h(x_i) - h(z_i)||^2                          matching loss, Eq. 10
    theta_g = argmin J_o - J_p,   theta_f = argmin J_o + J_p         Eq. 12

with S_ij = +1 for items sharing a label, -1 otherwise, and c the surrogate's code length. One step on
J = J_o + J_p (Eq. 14) does both: a gradient reversal layer (Eq. 13) sits between G and F on the J_p
path only, so G receives grad J_o - lambda grad J_p and F receives grad J_o + grad J_p.

Readings of the extracted text, where it is garbled or silent:
* Eq. 2 allows an L1, L2 or L-inf bound; the experiments use L-inf, the only one implemented.
* Eq. 4 and 9 read "h(z_i)^T h(z_i)" and "h(x_i)^T h(z_i)" beside S_ij; we use the pairs (i, j).
* Sums or means: the equations sum over a batch's n^2 pairs (J_o, J_s) and n items (J_e), while D_s is
  one normalised number (at most 4). Summed at batch 512, beta J_s has 262,144 terms against 512 for J_e
  and one for D_s, so alpha and gamma can hardly matter. The default follows the letter of the equations
  (``loss_reduction = "sum"``); "mean" averages J_o and J_s per pair and J_e per item.
* The kernel k of SMMD is not named: a mean of five Gaussian kernels exp(-d^2 / s), s = 2c * 2^m for
  m = -2..2 (CDD's five bandwidths, a factor 2 apart, of which PPL's SMMD is a variant), centred on 2c,
  the mean squared distance between two random codes of c bits, so the kernel does not depend on the batch.
* Algorithm 1 nests "for i = 1:t, for j = 1:e, e = [t/m]" and updates F with grad J_p alone; Eq. 12 and
  14 have F minimise J_o + J_p. We follow the equations (``surrogate_objective = "equations"``: they are
  the method's definition, the algorithm box its summary); ``"algorithm"`` is Algorithm 1's letter, where
  J_o reaches G through a copy of F that J_o does not update. ``iterations`` = t = 1000 mini-batch
  updates for FashionMNIST (t * floor(t/m) at t = 1000, m = 512 is also 1000). If e was meant as the
  batches per epoch, t counted epochs: set ``iterations`` to 20 times as many.
* Algorithm 1 says "SGD" without settings: the default is plain SGD (no momentum) at the stated learning
  rates; ``optimizer = "adam"`` is the alternative. Measured on FashionMNIST, DSDH at 16 bits (all 10,000
  queries, the paper grid's set-up): with Adam and mean losses the generator used an L-inf of 0.03 of its
  0.3 and the protection changed nothing (C->C 0.6492, C->A 0.6505, A->C 0.6511, A->A 0.6524); with the
  letter (SGD, sums) C->A 0.6093, A->C 0.5623, A->A 0.5412, and the model trained on protected data
  reaches A->A 0.6787 above its A->C 0.5571 and C->A 0.4831 (paper: drops of about 60%). But under the
  letter the game is degenerate: the summed losses' gradients throw the surrogate between two collapsed
  states for all 1000 updates (J_o per pair 230, every code alike, and 65, outputs near 0, on alternate
  logs), and it ends at chance (mAP 0.145 on clean training images, a random ranking's 0.100), so
  ``check_surrogate`` flags the protection (``surrogate_at_chance``); the generator saturates at
  +-epsilon whatever it plays against (with Algorithm 1's surrogate update, DSDH 16 bits: the clean-trained
  model's four scenarios equal to four decimals, the protected-trained model's within 0.007). The Adam/mean
  surrogate does learn (mAP 0.629), but its generator stays small.
* The generator: "an auto-encoder like structure, where the encoder/decoder consists of 4 convolution
  layers" of 16, 32, 64, 128 channels on FashionMNIST (64 to 512 on CIFAR-10/ImageNet: ``width``).
  Kernels, strides and normalisation are not given: 3x3 and 4x4 convolutions, the middle two with
  stride 2 while the side stays even, ReLU, no normalisation; the decoder mirrors the encoder and ends in
  epsilon * tanh, which keeps ||G(x)||_inf <= epsilon.
* The results use "the generator learned from PPL with 8-bit code length": ``surrogate_bits = 8``.
* The surrogate's hash layer keeps PyTorch's default initialisation. With the victims' N(0, 0.01) (CgAT,
  ProS-GAN) its tanh outputs start near 0, a saddle of the square losses: with S in {-1, +1} and ten
  classes, nine pairs in ten are dissimilar, descent shrank the outputs further, and J_o stayed at c^2
  for 60 updates (on clean data alone, batch 128), where the default initialisation left it by update 80.
"""
from __future__ import annotations

import itertools
import typing
from typing import Annotated

import torch
from torch import nn

from benchmark import (Defense, ImageSet, OneOf, Range, TrainContext, build_victim, check_finite,
                       pairwise_similarity, probe_retrieval, reverse_gradient, smmd)


class Generator(nn.Module):
    """The auto-encoder G: x (B, C, H, W) in [0, 1] -> perturbation in [-epsilon, epsilon], same shape."""

    def __init__(self, channels: int, side: int, width: int, epsilon: float):
        super().__init__()
        w = (width, 2 * width, 4 * width, 8 * width)  # 16, 32, 64, 128 on FashionMNIST
        halvings = [side % 2 == 0, side % 4 == 0]     # stride 2 in layers 2 and 3 while the side stays even

        def down(c_in, c_out, halve):
            return nn.Conv2d(c_in, c_out, 4, 2, 1) if halve else nn.Conv2d(c_in, c_out, 3, 1, 1)

        def up(c_in, c_out, double):
            return nn.ConvTranspose2d(c_in, c_out, 4, 2, 1) if double else nn.Conv2d(c_in, c_out, 3, 1, 1)

        self.encoder = nn.Sequential(
            nn.Conv2d(channels, w[0], 3, 1, 1), nn.ReLU(),
            down(w[0], w[1], halvings[0]), nn.ReLU(),    # (B, 2w, H/2, W/2) on FashionMNIST: 14x14
            down(w[1], w[2], halvings[1]), nn.ReLU(),    # (B, 4w, H/4, W/4): 7x7
            nn.Conv2d(w[2], w[3], 3, 1, 1), nn.ReLU(),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(w[3], w[2], 3, 1, 1), nn.ReLU(),
            up(w[2], w[1], halvings[1]), nn.ReLU(),
            up(w[1], w[0], halvings[0]), nn.ReLU(),
            nn.Conv2d(w[0], channels, 3, 1, 1), nn.Tanh(),
        )
        self.epsilon = epsilon

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.epsilon * self.decoder(self.encoder(x))

    def release(self, x: torch.Tensor) -> torch.Tensor:
        """z = x + G(x), projected into [0, 1] (Eq. 2)."""
        return torch.clamp(x + self(x), 0.0, 1.0)


def pair_loss(a: torch.Tensor, b: torch.Tensor, similarity: torch.Tensor, reduction: str) -> torch.Tensor:
    """sum or mean over pairs of (a_i^T b_j - c S_ij)^2; a, b (n, c) relaxed codes, S (n, n) in {-1, +1}."""
    errors = (a @ b.t() - a.shape[1] * similarity).pow(2)  # (n, n)
    return errors.sum() if reduction == "sum" else errors.mean()


def channel_statistics(images: ImageSet, count: int = 2048) -> tuple[tuple, tuple]:
    """Per-channel mean and std of the first ``count`` images, for the surrogate's normalisation."""
    x = images.load(torch.arange(min(count, len(images))))  # (n, C, H, W)
    return tuple(x.mean((0, 2, 3)).tolist()), tuple(x.std((0, 2, 3)).clamp(min=1e-3).tolist())


class PPL(Defense):
    name = "ppl"
    paper = "Zhang, Huang, Xu. Proactive Privacy-preserving Learning for Retrieval. AAAI 2021"
    protects = True

    release_parameters: typing.ClassVar[tuple[str, ...]] = ("database_share",)

    epsilon: Annotated[float, Range(0, 1)] = 0.3             # L-inf; FashionMNIST (CIFAR-10 0.1, ImageNet 0.032)
    database_share: Annotated[float, Range(0, 1)] = 1.0     # share of the database released protected
    iterations: Annotated[int, Range(1)] = 1000              # mini-batch updates; FashionMNIST (others 500)
    batch_size: Annotated[int, Range(1)] = 512               # FashionMNIST (others 32)
    lr_generator: Annotated[float, Range(0, low_open=True)] = 1e-4
    lr_surrogate: Annotated[float, Range(0, low_open=True)] = 1e-3
    optimizer: Annotated[str, OneOf("sgd", "adam")] = "sgd"  # Algorithm 1 (no momentum given)
    alpha: float = 1.0                                       # weight of the domain loss D_s
    beta: float = 10.0                                       # weight of the similarity loss J_s
    gamma: float = 1.0                                       # weight of the matching loss J_e
    reversal: float = 1.0                                    # lambda of the gradient reversal layer
    loss_reduction: Annotated[str, OneOf("sum", "mean")] = "sum"   # Eq. 4, 9, 10 sum (see the docstring)
    surrogate_objective: Annotated[str, OneOf("equations", "algorithm")] = "equations"  # F: J_o + J_p / J_p
    surrogate_backbone: str = "smallcnn"                     # FashionMNIST; resnet50 for CIFAR-10/ImageNet
    surrogate_bits: Annotated[int, Range(1)] = 8             # the code length of the paper's results
    width: Annotated[int, Range(1)] = 16                     # generator channels width * (1, 2, 4, 8); 64 for RGB

    def build(self, image_shape: tuple[int, int, int], mean: tuple, std: tuple) -> None:
        channels, side, _ = image_shape
        self.image_shape, self.mean, self.std = tuple(image_shape), tuple(mean), tuple(std)
        self.generator = Generator(channels, side, self.width, self.epsilon)
        self.surrogate = build_victim(self.surrogate_backbone, self.surrogate_bits, channels, side, mean, std)
        self.surrogate.hash_layer.reset_parameters()  # PyTorch's default init, not the victims' N(0, 0.01)

    def prepare_protection(self, train: ImageSet, ctx: TrainContext) -> None:
        image_shape = tuple(train.load(torch.tensor([0])).shape[1:])
        seed = int(torch.randint(2**31 - 1, (1,), generator=ctx.generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.build(image_shape, *channel_statistics(train))
        self.play(train, ctx)

    def objective(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """J = J_o + J_p on a batch (Eq. 14), the reversal layer on J_p's path only; and the four terms."""
        s = 2 * pairwise_similarity(labels, labels) - 1                      # (n, n) in {-1, +1}
        z = self.generator.release(x)                                        # (n, C, H, W)
        h_x = self.surrogate(x)                                              # (n, c) in (-1, 1)
        h_z = self.surrogate(z) if self.surrogate_objective == "equations" else self._frozen_surrogate(z)
        h_z_reversed = self.surrogate(reverse_gradient(z, self.reversal))   # J_p: F minimises, G maximises
        bandwidths = [2 * self.surrogate.bits * 2.0 ** m for m in range(-2, 3)]
        j_e = (h_x - h_z_reversed).pow(2).sum(1)                             # (n,)
        terms = {"J_o": pair_loss(h_z, h_z, s, self.loss_reduction),
                 "D_s": smmd(h_x, h_z_reversed, s > 0, bandwidths),
                 "J_s": pair_loss(h_x, h_z_reversed, s, self.loss_reduction),
                 "J_e": j_e.sum() if self.loss_reduction == "sum" else j_e.mean()}
        j_p = self.alpha * terms["D_s"] + self.beta * terms["J_s"] + self.gamma * terms["J_e"]
        return terms["J_o"] + j_p, terms

    def _frozen_surrogate(self, z: torch.Tensor) -> torch.Tensor:
        """F(z) whose gradient reaches z (G) but not F's parameters: J_o under Algorithm 1."""
        frozen = {name: value.detach() for name, value in self.surrogate.named_parameters()}
        return torch.func.functional_call(self.surrogate, frozen, (z,))

    def play(self, train: ImageSet, ctx: TrainContext) -> None:
        """Algorithm 1: the two-player game of the built generator and surrogate, one step per mini-batch."""
        generator, surrogate = self.generator.to(ctx.device).train(), self.surrogate.to(ctx.device).train()
        groups = [{"params": generator.parameters(), "lr": self.lr_generator},
                  {"params": surrogate.parameters(), "lr": self.lr_surrogate}]
        optimizer = torch.optim.Adam(groups) if self.optimizer == "adam" else torch.optim.SGD(groups)
        batches = itertools.chain.from_iterable(
            train.batches(self.batch_size, shuffle=True, generator=ctx.generator) for _ in itertools.count())
        for iteration in range(self.iterations):
            x, labels, _ = next(batches)
            loss, terms = self.objective(x.to(ctx.device), labels.to(ctx.device))
            check_finite(loss, self.name, 0, iteration)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if (iteration + 1) % 10 == 0 or iteration + 1 == self.iterations:
                values = {name: term.item() for name, term in terms.items()}
                ctx.info.setdefault("ppl_losses", []).append({"iteration": iteration + 1, **values})
                ctx.progress(f"iteration {iteration + 1}/{self.iterations} "
                             + " ".join(f"{name} {value:.4g}" for name, value in values.items()))
        generator.eval()
        surrogate.eval()
        self.check_surrogate(train, ctx)

    def check_surrogate(self, train: ImageSet, ctx: TrainContext, probe_images: int = 2000) -> None:
        """Flag a surrogate that ends the game unable to retrieve clean training images (a quarter of the probe
        queries the rest): the generator was then trained against no working retrieval model."""
        n = min(probe_images, len(train))
        codes = torch.cat([self.surrogate.codes(train.load(index).to(ctx.device)).cpu()
                           for index in torch.arange(n).split(256)])
        labels, queries = train.labels[:n], max(1, n // 4)
        probe = probe_retrieval(codes[:queries], labels[:queries], codes[queries:], labels[queries:])
        ctx.info["surrogate_probe"] = probe
        if probe["at_chance"]:
            ctx.flag("surrogate_at_chance", f"PPL's surrogate ends its game at chance on clean training images "
                                            f"(mAP {probe['map']:.3f}, a random ranking's {probe['chance']:.3f}): "
                                            f"the generator was trained against no working retrieval model")

    def _check_prepared(self) -> None:
        if not hasattr(self, "generator"):
            raise RuntimeError("ppl has no generator yet: call prepare_protection(train, ctx) or load_state_dict()")

    @torch.no_grad()
    def protect(self, x: torch.Tensor) -> torch.Tensor:
        self._check_prepared()
        generator = self.generator.to(x.device).eval()
        return generator.release(x)

    def database_mask(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """A seeded draw of round(database_share * n) items to release protected (all of them by default)."""
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.randperm(n, generator=generator)[:round(self.database_share * n)]] = True
        return mask

    def state_dict(self) -> dict:
        self._check_prepared()
        cpu = lambda module: {k: v.detach().cpu() for k, v in module.state_dict().items()}  # noqa: E731
        return {"image_shape": self.image_shape, "mean": self.mean, "std": self.std,
                "generator": cpu(self.generator), "surrogate": cpu(self.surrogate)}

    def load_state_dict(self, state: dict) -> None:
        self.build(tuple(state["image_shape"]), tuple(state["mean"]), tuple(state["std"]))
        self.generator.load_state_dict(state["generator"])
        self.surrogate.load_state_dict(state["surrogate"])
        self.generator.eval()
        self.surrogate.eval()
