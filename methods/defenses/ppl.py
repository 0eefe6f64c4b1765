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

Readings, where the extracted text is garbled or silent (the alternative kept as an option where it changes
numbers; every parameter is on every row as ``defense_params``):
* Bound: Eq. 2 allows L1, L2 or L-inf; the experiments use L-inf, the only one implemented.
* Pairs: Eq. 4 and 9 read "h(z_i)^T h(z_i)" and "h(x_i)^T h(z_i)" beside S_ij; we use the pairs (i, j).
* Optimizer and reduction (``optimizer``, ``loss_reduction``): Algorithm 1 says "SGD" without settings and
  the equations sum over a batch's n^2 pairs. Default: Adam for both players at the stated learning rates,
  on mean losses (J_o, J_s per pair, J_e per item), after the nearest public re-implementation of this
  family (PPCL, the cross-modal follow-up: Adam for G, mean losses; momentum SGD for its retrieval nets,
  which the paper does not describe). The letter, ``sgd`` with ``sum``, is numerically
  degenerate: at batch 512 the summed gradients blow the surrogate's weights up (about 1e4) and saturate G
  at +epsilon on every pixel of every image within 30 updates, so its protection is clamp(x + 0.3, 0, 1),
  a brightness shift (flags ``perturbation_universal``, ``generator_saturated``, ``surrogate_at_chance``).
* Generator (``normalization``, ``width``): "an auto-encoder like structure, where the encoder/decoder
  consists of 4 convolution layers" of 16, 32, 64, 128 channels on FashionMNIST (64 to 512 on CIFAR-10 and
  ImageNet). Kernels, strides and normalisation are not given: 3x3 and 4x4 convolutions, the middle two
  with stride 2 while the side stays even, ReLU; the decoder mirrors the encoder and ends in epsilon * tanh
  (so ||G(x)||_inf <= epsilon). Default ``batch``: BatchNorm after every hidden layer, as PPCL has; without
  it (``none``) and with Adam on mean losses G stays nearly silent (L-inf 0.03 of its 0.3).
* Kernel: the k of SMMD is not named: a mean of five Gaussian kernels exp(-d^2 / s), s = 2c * 2^m for
  m = -2..2 (CDD's five bandwidths, of which SMMD is a variant), centred on 2c, the mean squared distance
  between two random c-bit codes, so the kernel does not depend on the batch.
* Surrogate update (``surrogate_objective``): Eq. 12 and 14 have F minimise J_o + J_p (default: the
  equations define the method); Algorithm 1 updates F with grad J_p alone (``algorithm``: J_o then reaches
  G through a copy of F that J_o does not update).
* Schedule (``iterations``): Algorithm 1 nests "for i = 1:t, for j = 1:e, e = [t/m]"; t = 1000 mini-batch
  updates on FashionMNIST (t * floor(t/m) at t = 1000, m = 512 is also 1000). If t counted epochs, set 20
  times as many (about 8.5 hours on one CPU thread): the game is checkpointed every ``CHECKPOINT_EVERY``
  updates in the stage cache, and a stopped run goes on from its latest checkpoint, bit for bit.
* Surrogate: the code length of the results' generator, ``surrogate_bits = 8``; its hash layer keeps
  PyTorch's default initialisation (the victims' N(0, 0.01) starts its tanh near 0, a saddle of the square
  losses). ``check_surrogate`` flags one that ends the game at chance (``surrogate_at_chance``); its probe
  mAP is recorded every ``PROBE_EVERY`` updates (``ppl_surrogate_probe``) beside the losses (``ppl_losses``).
"""
from __future__ import annotations

import typing
from typing import Annotated

import torch
from torch import nn

from benchmark import (Defense, ImageSet, OneOf, Range, TrainContext, build_victim, check_finite,
                       pairwise_similarity, probe_retrieval, reverse_gradient, smmd)


PROBE_EVERY = 100  # updates between two probes of the surrogate's retrieval (recorded, not used)
CHECKPOINT_EVERY = 200  # updates between two checkpoints in the stage cache, from which a stopped run goes on


class Generator(nn.Module):
    """The auto-encoder G: x (B, C, H, W) in [0, 1] -> perturbation in [-epsilon, epsilon], same shape.

    ``normalization`` "batch" puts BatchNorm after every hidden layer (before its ReLU; that layer then has no
    bias, which the normalisation would cancel), "none" leaves it out.
    """

    def __init__(self, channels: int, side: int, width: int, epsilon: float, normalization: str = "batch"):
        super().__init__()
        w = (width, 2 * width, 4 * width, 8 * width)  # 16, 32, 64, 128 on FashionMNIST
        halvings = [side % 2 == 0, side % 4 == 0]     # stride 2 in layers 2 and 3 while the side stays even
        norm = normalization == "batch"

        def hidden(c_in: int, c_out: int, resample: str = "") -> list[nn.Module]:
            """One hidden layer: a 3x3 convolution, or 4x4 with stride 2 ("down") or its transpose ("up")."""
            if resample == "down":
                layer = nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not norm)
            elif resample == "up":
                layer = nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=not norm)
            else:
                layer = nn.Conv2d(c_in, c_out, 3, 1, 1, bias=not norm)
            return [layer, nn.BatchNorm2d(c_out), nn.ReLU()] if norm else [layer, nn.ReLU()]

        self.encoder = nn.Sequential(
            *hidden(channels, w[0]),
            *hidden(w[0], w[1], "down" if halvings[0] else ""),  # (B, 2w, H/2, W/2) on FashionMNIST: 14x14
            *hidden(w[1], w[2], "down" if halvings[1] else ""),  # (B, 4w, H/4, W/4): 7x7
            *hidden(w[2], w[3]),
        )
        self.decoder = nn.Sequential(
            *hidden(w[3], w[2]),
            *hidden(w[2], w[1], "up" if halvings[1] else ""),
            *hidden(w[1], w[0], "up" if halvings[0] else ""),
            nn.Conv2d(w[0], channels, 3, 1, 1), nn.Tanh(),
        )
        self.epsilon = epsilon

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.epsilon * self.decoder(self.encoder(x))

    def release(self, x: torch.Tensor) -> torch.Tensor:
        """z = x + G(x), projected into [0, 1] (Eq. 2)."""
        return torch.clamp(x + self(x), 0.0, 1.0)


def shuffled_batches(train: ImageSet, batch_size: int, generator: torch.Generator, resumed: dict | None = None):
    """Endless shuffled epochs of ``(images, labels, epoch)``, ``epoch`` saying where the batch sits (the
    generator's state when its epoch's order was drawn, and the batches of it already given), so that a
    checkpoint can restart the stream in the middle of an epoch exactly where it stopped."""
    skip = 0
    if resumed:
        generator.set_state(resumed["epoch"]["state"])
        skip = resumed["epoch"]["done"]
    while True:
        state = generator.get_state()
        for done, (x, labels, _) in enumerate(train.batches(batch_size, shuffle=True, generator=generator), 1):
            if done > skip:
                yield x, labels, {"state": state, "done": done}
        skip = 0


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
    learned_generator = True                                 # released = x + epsilon * tanh(.)

    release_parameters: typing.ClassVar[tuple[str, ...]] = ("database_share",)

    epsilon: Annotated[float, Range(0, 1)] = 0.3             # L-inf; FashionMNIST (CIFAR-10 0.1, ImageNet 0.032)
    database_share: Annotated[float, Range(0, 1)] = 1.0     # share of the database released protected
    iterations: Annotated[int, Range(1)] = 1000              # mini-batch updates; FashionMNIST (others 500)
    batch_size: Annotated[int, Range(1)] = 512               # FashionMNIST (others 32)
    lr_generator: Annotated[float, Range(0, low_open=True)] = 1e-4
    lr_surrogate: Annotated[float, Range(0, low_open=True)] = 1e-3
    optimizer: Annotated[str, OneOf("adam", "sgd")] = "adam"  # Algorithm 1 says SGD: degenerate (docstring)
    alpha: float = 1.0                                       # weight of the domain loss D_s
    beta: float = 10.0                                       # weight of the similarity loss J_s
    gamma: float = 1.0                                       # weight of the matching loss J_e
    reversal: float = 1.0                                    # lambda of the gradient reversal layer
    loss_reduction: Annotated[str, OneOf("mean", "sum")] = "mean"  # Eq. 4, 9, 10 sum: degenerate (docstring)
    surrogate_objective: Annotated[str, OneOf("equations", "algorithm")] = "equations"  # F: J_o + J_p / J_p
    surrogate_backbone: str = "smallcnn"                     # FashionMNIST; resnet50 for CIFAR-10/ImageNet
    surrogate_bits: Annotated[int, Range(1)] = 8             # the code length of the paper's results
    width: Annotated[int, Range(1)] = 16                     # generator channels width * (1, 2, 4, 8); 64 for RGB
    normalization: Annotated[str, OneOf("batch", "none")] = "batch"  # in G; not stated (docstring)

    def build(self, image_shape: tuple[int, int, int], mean: tuple, std: tuple) -> None:
        channels, side, _ = image_shape
        self.image_shape, self.mean, self.std = tuple(image_shape), tuple(mean), tuple(std)
        self.generator = Generator(channels, side, self.width, self.epsilon, self.normalization)
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
        start = self.resume(ctx.resumed, optimizer, ctx) if ctx.resumed else 0
        batches = shuffled_batches(train, self.batch_size, ctx.generator, ctx.resumed)
        for iteration in range(start, self.iterations):
            x, labels, epoch = next(batches)
            loss, terms = self.objective(x.to(ctx.device), labels.to(ctx.device))
            check_finite(loss, self.name, 0, iteration)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if (iteration + 1) % 10 == 0 or iteration + 1 == self.iterations:
                self.record_losses(iteration + 1, terms, ctx)
            if (iteration + 1) % PROBE_EVERY == 0 and iteration + 1 < self.iterations:
                self.record_probe(iteration + 1, self.probe_surrogate(train, ctx.device), ctx)
            if (iteration + 1) % CHECKPOINT_EVERY == 0 and iteration + 1 < self.iterations:
                ctx.save_checkpoint(self.checkpoint(iteration + 1, optimizer, epoch, ctx))
        generator.eval()
        surrogate.eval()
        self.check_surrogate(train, ctx)

    def checkpoint(self, iteration: int, optimizer: torch.optim.Optimizer, epoch: dict, ctx: TrainContext) -> dict:
        """Everything the game needs to go on from ``iteration`` as if it had never stopped."""
        return {"iteration": iteration, "players": self.state_dict(), "optimizer": optimizer.state_dict(),
                "epoch": epoch, "info": {name: ctx.info[name] for name in ("ppl_losses", "ppl_surrogate_probe")
                                         if name in ctx.info}}

    def resume(self, checkpoint: dict, optimizer: torch.optim.Optimizer, ctx: TrainContext) -> int:
        self.generator.load_state_dict(checkpoint["players"]["generator"])
        self.surrogate.load_state_dict(checkpoint["players"]["surrogate"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        ctx.info.update(checkpoint["info"])
        ctx.progress(f"resuming at iteration {checkpoint['iteration']}/{self.iterations}")
        return checkpoint["iteration"]

    def record_losses(self, iteration: int, terms: dict[str, torch.Tensor], ctx: TrainContext) -> None:
        values = {name: term.item() for name, term in terms.items()}
        ctx.info.setdefault("ppl_losses", []).append({"iteration": iteration, **values})
        ctx.progress(f"iteration {iteration}/{self.iterations} "
                     + " ".join(f"{name} {value:.4g}" for name, value in values.items()))

    @staticmethod
    def record_probe(iteration: int, probe: dict, ctx: TrainContext) -> None:
        """The surrogate's probe mAP beside a random ranking's, a curve on the leaderboard's curves page."""
        ctx.info.setdefault("ppl_surrogate_probe", []).append(
            {"iteration": iteration, "map": probe["map"], "chance": probe["chance"]})

    @torch.no_grad()
    def probe_surrogate(self, train: ImageSet, device: torch.device, probe_images: int = 2000) -> dict:
        """``probe_retrieval`` of the surrogate on clean training images: a quarter of them query the rest."""
        n, training = min(probe_images, len(train)), self.surrogate.training
        self.surrogate.eval()  # a BatchNorm backbone's running statistics stay as the game left them
        codes = torch.cat([self.surrogate.codes(train.load(index).to(device)).cpu()
                           for index in torch.arange(n).split(256)])
        self.surrogate.train(training)
        labels, queries = train.labels[:n], max(1, n // 4)
        return probe_retrieval(codes[:queries], labels[:queries], codes[queries:], labels[queries:])

    def check_surrogate(self, train: ImageSet, ctx: TrainContext, probe_images: int = 2000) -> None:
        """Flag a surrogate that ends the game unable to retrieve clean training images: the generator was
        then trained against no working retrieval model."""
        probe = self.probe_surrogate(train, ctx.device, probe_images)
        ctx.info["surrogate_probe"] = probe
        self.record_probe(self.iterations, probe, ctx)
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
