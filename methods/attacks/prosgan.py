"""ProS-GAN: prototype-supervised adversarial network (Wang, Zhang, Wu, Shen, Lu, "Prototype-supervised
Adversarial Network for Targeted Attack of Deep Hashing", CVPR 2021, Sec. 3-4).

Targeted and generative: after training, one forward pass per query, no gradient of the victim. Not
epsilon-bounded (the paper has no budget: only the reconstruction loss keeps x' near x); ``bounded = true``
projects the output onto the epsilon ball so it can be compared with DHTA at equal budget (the generator is
trained the same way either way). Three networks, trained in ``prepare`` against the frozen surrogate:
  P  PrototypeNet (benchmark/prototype.py): target label l_t -> semantic feature r_t (512) -> prototype code
     h_t = sign(tanh(.)) and predicted label; trained first, alone, with Eq. 3-4.
  G  generator: a decoder D_t upsamples r_t to an image-sized map x_t; [x_t, x] (x in [-1, 1]) goes through an
     encoder-decoder G_xt (7x7 conv, two stride-2 convs, 3 + 3 residual blocks, two stride-2 transposed convs,
     instance norm), whose output is concatenated with x (the skip connection) and mapped by a 3x3 conv and
     tanh to x' in [-1, 1]; the adversarial image is (x' + 1) / 2.
  D  discriminator: stride-2 4x4 convs with spectral norm and LeakyReLU(0.01), then one conv over the remaining
     map to C + 1 outputs (the C class scores and real/fake).
Losses (Eq. 5-13, LSGAN as in the reference code), for a query x with label y and a target label l_t:
  G: w_rec MSE(x', x) + w_ham (1 - (1/K) f(x')^T h_t) + w_adv ||D(x') - [l_t, 0]||^2      (Eq. 5, 7, 8, 10)
  D: 1/2 (||D(x) - [y, 0]||^2 + ||D(x') - [l_t, 1]||^2)   (Eq. 11-13: real = 0, fake = 1), every 3rd step
with f(x') = tanh(y(x')) the surrogate's relaxed code and the mean squared errors over pixels in [-1, 1].

Sizes: the reference networks are built for 224 x 224 colour images (D_t: fc to 128 x 14 x 14, four
upsamplings; D: five stride-2 convs to 7 x 7 and a 7 x 7 conv). Here the image size and channels come from the
training images, and each network halves (or doubles) the side as often as the reference does but at most as
often as the side is even: 224 x 224 colour keeps the reference layout; 56 x 56 grey mosaics get D_t from 7 x 7
with three upsamplings and D with three stride-2 convs to 7 x 7; 28 x 28 grey FashionMNIST gets D_t from 7 x 7
with two upsamplings, G_xt's two stride-2 convs (28 -> 7) and D with two stride-2 convs to 7 x 7. Widths are the
reference's (``generator_width`` 64, D_t starting at twice that, ``discriminator_width`` 64).

Schedule (reference code, methods-spec 3.5): P as in benchmark/prototype.py (64 labels per step, 100 x 300
steps); G and D with Adam lr 1e-4, betas (0.5, 0.999), batch 24, 50 epochs at the full rate and 50 more decaying
linearly towards 0; target labels drawn uniformly from the unique label vectors of the database. ``epochs``,
``decay_epochs``, ``steps_per_epoch`` and ``prototype_epochs``/``prototype_steps`` shorten it for a CPU.

Departures: the Hamming term's weight is the reference code's 5; the paper's Eq. 5 writes 1 (``hamming_weight``).
The weights only make sense with the code's normalisation (means over pixels in [-1, 1], not Eq. 8's sum), so we
take the code's set. w_rec is 50 (NUS-WIDE and MS-COCO, and the code's default dataset); the paper uses 100 on
FLICKR-25K. The paper's D ends in a sigmoid, the code's does not (``discriminator_sigmoid``).
"""
from __future__ import annotations

import typing
from typing import Annotated

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from benchmark import (Attack, OneOf, Perturbed, PrototypeNet, Range, binarize, project, sample_target_labels,
                       seeded_torch, train_prototype_net)


def halvings(side: int, most: int) -> int:
    """How many times ``side`` can be halved exactly, at most ``most``."""
    count = 0
    while count < most and side % 2 == 0:
        side, count = side // 2, count + 1
    return count


class ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.InstanceNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.InstanceNorm2d(width))

    def forward(self, x):
        return x + self.body(x)


class LabelDecoder(nn.Module):
    """D_t: semantic feature r_t (B, 512) -> a map (B, channels, side, side)."""

    def __init__(self, channels: int, side: int, width: int, feature_dim: int = 512):
        super().__init__()
        upsamplings = halvings(side, 4)
        self.width, self.base = width, side >> upsamplings
        self.fc = nn.Sequential(nn.Linear(feature_dim, width * self.base * self.base), nn.ReLU())
        layers = []
        for _ in range(upsamplings):
            narrower = max(width // 2, 1)
            layers += [nn.ConvTranspose2d(width, narrower, 4, stride=2, padding=1, bias=False),
                       nn.InstanceNorm2d(narrower), nn.ReLU()]
            width = narrower
        self.upsample = nn.Sequential(*layers, nn.Conv2d(width, channels, 3, padding=1, bias=False))

    def forward(self, feature):
        return self.upsample(self.fc(feature).view(-1, self.width, self.base, self.base))


class Generator(nn.Module):
    """G = (D_t, G_xt): images in [0, 1] and semantic features -> adversarial images in [0, 1], same shape."""

    def __init__(self, channels: int, side: int, width: int = 64):
        super().__init__()
        self.label_decoder = LabelDecoder(channels, side, 2 * width)
        downsamplings = halvings(side, 2)
        layers = [nn.Conv2d(2 * channels, width, 7, padding=3), nn.InstanceNorm2d(width), nn.ReLU()]
        for _ in range(downsamplings):
            layers += [nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.InstanceNorm2d(2 * width), nn.ReLU()]
            width *= 2
        layers += [ResidualBlock(width) for _ in range(6)]  # 3 ending the encoder, 3 starting the decoder
        for _ in range(downsamplings):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, stride=2, padding=1, bias=False),
                       nn.InstanceNorm2d(width // 2), nn.ReLU()]
            width //= 2
        self.encoder_decoder = nn.Sequential(*layers)
        self.output = nn.Sequential(nn.Conv2d(width + channels, channels, 3, padding=1, bias=False), nn.Tanh())

    def forward(self, images, feature):
        x = 2 * images - 1
        decoded = self.encoder_decoder(torch.cat([self.label_decoder(feature), x], dim=1))
        return (self.output(torch.cat([decoded, x], dim=1)) + 1) / 2


class Discriminator(nn.Module):
    """Images in [0, 1] -> (B, C + 1): C class scores and the fake score."""

    def __init__(self, channels: int, side: int, num_classes: int, width: int = 64, sigmoid: bool = False):
        super().__init__()
        layers = []
        for _ in range(halvings(side, 5)):
            layers += [spectral_norm(nn.Conv2d(channels, width, 4, stride=2, padding=1)), nn.LeakyReLU(0.01)]
            channels, width, side = width, 2 * width, side // 2
        self.features = nn.Sequential(*layers)
        self.scores = nn.Conv2d(channels, num_classes + 1, side, bias=False)
        self.sigmoid = sigmoid

    def forward(self, images):
        scores = self.scores(self.features(2 * images - 1)).flatten(1)
        return torch.sigmoid(scores) if self.sigmoid else scores


def lsgan_loss(scores: torch.Tensor, labels: torch.Tensor, fake: bool) -> torch.Tensor:
    """MSE between D's scores and [labels, fake flag] (Eq. 10-13; real = 0, fake = 1)."""
    flag = torch.full((len(labels), 1), float(fake), device=labels.device)
    return F.mse_loss(scores, torch.cat([labels, flag], dim=1))


class ProSGAN(Attack):
    name = "prosgan"
    paper = ("Wang, Zhang, Wu, Shen, Lu. Prototype-supervised Adversarial Network for Targeted Attack of Deep "
             "Hashing. CVPR 2021")
    url = "https://github.com/xunguangwang/ProS-GAN"
    targeted = True
    learned_generator = True                          # its adversarial image is the generator's tanh output

    perturb_parameters: typing.ClassVar[tuple[str, ...]] = ("bounded",)  # a bounded run reuses the generator

    bounded: bool = False                             # paper: no epsilon; true: output projected onto the epsilon ball
    reconstruction_weight: float = 50.0               # alpha, Sec. 4.2: 50 NUS-WIDE and MS-COCO, 100 FLICKR-25K
    hamming_weight: float = 5.0                       # reference code; the paper's Eq. 5 has 1
    adversarial_weight: float = 1.0                   # beta, Sec. 4.2
    discriminator_every: Annotated[int, Range(1)] = 3  # D steps on every 3rd batch (reference code)
    discriminator_sigmoid: bool = False               # paper Sec. 3.4 (sigmoid); reference code: raw LSGAN scores
    epochs: Annotated[int, Range(0)] = 50             # at the full lr (reference n_epochs); 50 + 50 = 100, Sec. 4.2
    decay_epochs: Annotated[int, Range(0)] = 50       # lr decaying linearly towards 0 (reference n_epochs_decay)
    steps_per_epoch: Annotated[int, Range(0)] = 0     # 0: one pass over the training set (the reference)
    batch_size: Annotated[int, Range(1)] = 24         # Sec. 4.2
    lr: Annotated[float, Range(0, low_open=True)] = 1e-4
    generator_width: Annotated[int, Range(1)] = 64    # reference ngf
    discriminator_width: Annotated[int, Range(1)] = 64  # reference ndf
    prototype_objective: Annotated[str, OneOf("prosgan", "circle")] = "prosgan"
    prototype_epochs: Annotated[int, Range(1)] = 100
    prototype_steps: Annotated[int, Range(1)] = 300   # per epoch
    prototype_batch: Annotated[int, Range(1)] = 64    # target labels per step
    prototype_lr: Annotated[float, Range(0, low_open=True)] = 1e-4

    def prepare(self, ctx):
        self.ctx = ctx
        channels, side = image_shape(ctx.train)
        self.build(channels, side)
        train_codes, train_labels = ctx.train_codes()
        self.unique_labels = ctx.database_labels.float().unique(dim=0)  # (M, C): where target labels come from
        ctx.info["prototype_loss_per_epoch"] = train_prototype_net(
            self.prototype_net, self.unique_labels, train_codes, train_labels, self.prototype_objective,
            self.prototype_epochs, self.prototype_steps, self.prototype_batch, self.prototype_lr, ctx.generator,
            ctx.progress)
        self.prototype_net.requires_grad_(False)
        self.train_generator()

    def build(self, channels: int, side: int) -> None:
        ctx = self.ctx
        self.image_shape = (channels, side)
        with seeded_torch(ctx.generator):
            self.prototype_net = PrototypeNet(ctx.num_classes, ctx.bits).to(ctx.device)
            self.generator = Generator(channels, side, self.generator_width).to(ctx.device)
            self.discriminator = Discriminator(channels, side, ctx.num_classes, self.discriminator_width,
                                               self.discriminator_sigmoid).to(ctx.device)

    def train_generator(self) -> None:
        ctx, G, D = self.ctx, self.generator, self.discriminator
        optimizer_g = torch.optim.Adam(G.parameters(), lr=self.lr, betas=(0.5, 0.999))
        optimizer_d = torch.optim.Adam(D.parameters(), lr=self.lr, betas=(0.5, 0.999))
        # the reference's linear rule: full lr for ``epochs``, then 1 - k / (decay_epochs + 1) in decay epoch k
        rate = lambda epoch: 1.0 - max(0, epoch + 1 - self.epochs) / (self.decay_epochs + 1)  # noqa: E731
        schedulers = [torch.optim.lr_scheduler.LambdaLR(o, rate) for o in (optimizer_g, optimizer_d)]
        total_epochs = self.epochs + self.decay_epochs
        G.train()
        D.train()
        for epoch in range(total_epochs):
            sums, steps = torch.zeros(3), 0
            for step, (x, y, _) in enumerate(ctx.train.batches(self.batch_size, shuffle=True, generator=ctx.generator)):
                if self.steps_per_epoch and step >= self.steps_per_epoch:
                    break
                x, y = x.to(ctx.device), y.to(ctx.device).float()
                targets = sample_target_labels(self.unique_labels, len(x), ctx.generator)
                feature, relaxed, _ = self.prototype_net(targets)
                prototypes = binarize(relaxed)                                     # (B, K) in {-1, +1}
                x_adv = G(x, feature)
                if step % self.discriminator_every == 0:
                    D.requires_grad_(True)
                    d_loss = (lsgan_loss(D(x), y, fake=False) + lsgan_loss(D(x_adv.detach()), targets, fake=True)) / 2
                    optimizer_d.zero_grad(set_to_none=True)
                    d_loss.backward()
                    optimizer_d.step()
                D.requires_grad_(False)
                reconstruction = F.mse_loss(2 * x_adv - 1, 2 * x - 1)
                hamming = 1 - (ctx.model(x_adv) * prototypes).mean()
                adversarial = lsgan_loss(D(x_adv), targets, fake=False)
                g_loss = (self.reconstruction_weight * reconstruction + self.hamming_weight * hamming
                          + self.adversarial_weight * adversarial)
                if not torch.isfinite(g_loss):
                    raise FloatingPointError(f"ProS-GAN generator loss became {g_loss.item()} in epoch {epoch + 1}")
                optimizer_g.zero_grad(set_to_none=True)
                g_loss.backward()
                optimizer_g.step()
                sums += torch.tensor([reconstruction.item(), hamming.item(), adversarial.item()])
                steps += 1
            for scheduler in schedulers:
                scheduler.step()
            means = (sums / max(steps, 1)).tolist()
            ctx.info.setdefault("generator_losses_per_epoch", []).append(
                dict(zip(("reconstruction", "hamming", "adversarial"), means)))
            ctx.progress(f"ProS-GAN epoch {epoch + 1}/{total_epochs}: reconstruction {means[0]:.4f} "
                         f"hamming {means[1]:.4f} adversarial {means[2]:.4f}")
        G.requires_grad_(False).eval()
        D.requires_grad_(False).eval()

    def perturb(self, x, labels, target_labels):
        with torch.no_grad():
            feature, relaxed, _ = self.prototype_net(target_labels.float())
            x_adv = self.generator(x, feature)
        if self.bounded:
            x_adv = project(x_adv, x, self.epsilon)
        return Perturbed(x_adv, codes={"prototype_code": binarize(relaxed)})

    def state_dict(self):
        return {"image_shape": self.image_shape, "prototype_net": self.prototype_net.state_dict(),
                "generator": self.generator.state_dict(), "discriminator": self.discriminator.state_dict()}

    def load_state_dict(self, state):
        self.build(*state["image_shape"])
        for part in ("prototype_net", "generator", "discriminator"):
            getattr(self, part).load_state_dict(state[part])
            getattr(self, part).requires_grad_(False).eval()


def image_shape(images) -> tuple[int, int]:
    """(channels, side) of a set of square images; a clear error for anything else."""
    shape = tuple(images.load(torch.arange(1)).shape[1:])
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"ProS-GAN's generator needs square images (C, S, S); the training images are {shape}")
    return shape[0], shape[1]
