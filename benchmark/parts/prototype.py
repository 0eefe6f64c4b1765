"""The PrototypeNet: a target label vector -> a prototype hash code, shared by THA, ProS-GAN and ATRDH.

ProS-GAN (Wang, Zhang, Wu, Shen, Lu, CVPR 2021, Sec. 3.2) and THA (Wang, Zhang, Lu, Xu, SIGIR 2021) learn a
network P that embeds a target label l_t into a semantic feature r_t and a relaxed prototype code h_t, whose
sign is the code the attack aims at; ProS-GAN adds a classifier head that predicts l_t back from r_t:

    l_t (C) -> Linear(C, 4096) -> ReLU -> Linear(4096, 512) = r_t -> Linear(512, K) -> tanh = h_t
                                                              r_t -> Linear(512, C) -> sigmoid = l_hat

P is trained against the frozen victim's codes B (N, K) of its training set (labels Y, (N, C)); each step
draws a batch of n target labels from the unique label vectors of the database. Two objectives:

  "prosgan" (ProS-GAN Eq. 3-4, with the reference code's normalisation; alpha_1 = 1, alpha_2 = 1e-4,
  alpha_3 = 1, paper Sec. 4.2):
      L = -1/(N n) sum_ij (s_ij theta_ij - log(1 + e^theta_ij)) + alpha_2/n ||sign(H) - H||_F^2
          + alpha_3 MSE(l_hat, l_t),          theta_ij = 1/2 h_i^T b_j,  s_ij = [l_i shares a class with y_j]
  "circle" (THA, methods-spec 3.4: the reference code's circle-style loss, gamma = 1, margin 0):
      L = 1/n ( logsumexp_{(i,j) negative} a_ij s_ij + logsumexp_{(i,j) positive} -a_ij s_ij )
          + 1e-4/n ||sign(H) - H||_F^2,       s_ij = h_i^T b_j / K,
      a_ij = max(0, 2 - s_ij) on positive pairs and max(0, s_ij + 2) on negative ones, held constant.
      Departures, both kept as options (methods-spec Pitfall 10): THA's code masks the n x N pair matrix with
      triu(diagonal=1), a leftover of square-matrix circle-loss code that drops the pairs j <= i; we keep every
      pair (``upper_triangle_only=True`` restores the mask). SAAT's re-implementation wraps the sum in a
      softplus; THA's own code does not (``softplus=True`` adds it).

Schedule of both reference codes: Adam, lr 1e-4, betas (0.5, 0.999), 100 epochs x 300 steps, the lr times 0.1
at 50% and 75% of the steps; n = 64 target labels per step (ProS-GAN), 32 (THA).

    net = PrototypeNet(num_classes=10, bits=32)
    train_prototype_net(net, database_labels.unique(dim=0), train_codes, train_labels, "prosgan",
                        epochs=2, steps_per_epoch=50, generator=torch.Generator().manual_seed(0))
    codes = net.codes(target_labels)   # (B, K) in {-1, +1}

A defense that trains P jointly with its hash model (ATRDH) builds ``prototype_optimizer`` once and calls
``prototype_step`` once per batch.
"""
from __future__ import annotations

import contextlib
import typing

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.victim.hashing import logistic_pair_loss, pairwise_similarity
from benchmark.victim.model import binarize

PROTOTYPE_OBJECTIVES = ("prosgan", "circle")


class PrototypeNet(nn.Module):
    """Label vector (C) -> semantic feature (512) -> relaxed prototype code (K) and predicted label (C)."""

    def __init__(self, num_classes: int, bits: int, hidden: int = 4096, feature_dim: int = 512):
        super().__init__()
        self.feature = nn.Sequential(nn.Linear(num_classes, hidden), nn.ReLU(), nn.Linear(hidden, feature_dim))
        self.hash_head = nn.Linear(feature_dim, bits)
        self.class_head = nn.Linear(feature_dim, num_classes)

    def forward(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(semantic feature r_t (B, 512), relaxed code h_t (B, K) in (-1, 1), predicted label (B, C) in (0, 1))."""
        feature = self.feature(labels)
        return feature, torch.tanh(self.hash_head(feature)), torch.sigmoid(self.class_head(feature))

    @torch.no_grad()
    def codes(self, labels: torch.Tensor) -> torch.Tensor:
        """Prototype codes sign(h_t), (B, K) in {-1, +1}."""
        return binarize(self(labels)[1])


def quantization_loss(relaxed: torch.Tensor) -> torch.Tensor:
    """||sign(H) - H||_F^2 / n: how far the relaxed codes are from binary, per target label."""
    return (binarize(relaxed).detach() - relaxed).pow(2).sum() / len(relaxed)


def prosgan_prototype_loss(relaxed: torch.Tensor, predicted: torch.Tensor, target_labels: torch.Tensor,
                           train_codes: torch.Tensor, train_labels: torch.Tensor,
                           quantization_weight: float = 1e-4, classifier_weight: float = 1.0) -> torch.Tensor:
    """ProS-GAN's L_pro (Eq. 3): pair likelihood against the training codes, quantisation, classification."""
    theta = 0.5 * relaxed @ train_codes.t()                                   # (n, N)
    likelihood = logistic_pair_loss(theta, pairwise_similarity(target_labels, train_labels)).mean()
    classification = F.mse_loss(predicted, target_labels)
    return likelihood + quantization_weight * quantization_loss(relaxed) + classifier_weight * classification


def circle_prototype_loss(relaxed: torch.Tensor, target_labels: torch.Tensor, train_codes: torch.Tensor,
                          train_labels: torch.Tensor, quantization_weight: float = 1e-4, gamma: float = 1.0,
                          softplus: bool = False, upper_triangle_only: bool = False) -> torch.Tensor:
    """THA's circle-style loss over all (target label, training item) pairs, plus quantisation."""
    similarity = relaxed @ train_codes.t() / relaxed.shape[1]                 # (n, N) in [-1, 1]
    shares_class = pairwise_similarity(target_labels, train_labels).bool()
    positive, negative = shares_class, ~shares_class
    if upper_triangle_only:  # THA's reference code: pairs j <= i dropped (methods-spec Pitfall 10)
        positive, negative = positive.triu(diagonal=1), negative.triu(diagonal=1)
    s_p, s_n = similarity[positive], similarity[negative]
    a_p = torch.clamp_min(2 - s_p.detach(), 0)
    a_n = torch.clamp_min(s_n.detach() + 2, 0)
    pair_loss = logsumexp_or_zero(gamma * a_n * s_n) + logsumexp_or_zero(-gamma * a_p * s_p)
    if softplus:  # SAAT's re-implementation
        pair_loss = F.softplus(pair_loss)
    return pair_loss / len(relaxed) + quantization_weight * quantization_loss(relaxed)


def logsumexp_or_zero(values: torch.Tensor) -> torch.Tensor:
    """logsumexp of a 1-D tensor; 0 for an empty one (a batch with no positive pair), not -inf."""
    return torch.logsumexp(values, dim=0) if values.numel() else values.sum()


def prototype_loss(net: PrototypeNet, target_labels: torch.Tensor, train_codes: torch.Tensor,
                   train_labels: torch.Tensor, objective: str = "prosgan", **options) -> torch.Tensor:
    """The objective's loss of ``net`` on a batch of target labels (n, C); ``options`` go to that loss."""
    _, relaxed, predicted = net(target_labels)
    if objective == "prosgan":
        return prosgan_prototype_loss(relaxed, predicted, target_labels, train_codes, train_labels, **options)
    if objective == "circle":
        return circle_prototype_loss(relaxed, target_labels, train_codes, train_labels, **options)
    raise ValueError(f"prototype objective must be one of {', '.join(map(repr, PROTOTYPE_OBJECTIVES))}; "
                     f"got {objective!r}")


def sample_target_labels(unique_labels: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` rows drawn uniformly with replacement from ``unique_labels`` (M, C), as the reference codes do."""
    pick = torch.randint(len(unique_labels), (count,), generator=generator)
    return unique_labels[pick.to(unique_labels.device)]


def prototype_optimizer(net: PrototypeNet, lr: float = 1e-4,
                        total_steps: int = 0) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.MultiStepLR]:
    """The reference codes' Adam (betas 0.5, 0.999) and step schedule (x0.1 at 50% and 75% of ``total_steps``).

    Call ``scheduler.step()`` after every optimiser step.
    """
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.5, 0.999))
    milestones = [total_steps // 2, total_steps * 3 // 4] if total_steps else []
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)


def prototype_step(net: PrototypeNet, optimizer: torch.optim.Optimizer, unique_labels: torch.Tensor,
                   train_codes: torch.Tensor, train_labels: torch.Tensor, generator: torch.Generator,
                   objective: str = "prosgan", batch_size: int = 64, **options) -> float:
    """One optimiser step of ``net`` on freshly drawn target labels; returns the loss before the step."""
    targets = sample_target_labels(unique_labels, batch_size, generator)
    loss = prototype_loss(net, targets, train_codes, train_labels, objective, **options)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"PrototypeNet loss ({objective}) became {loss.item()}; lower its lr")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def train_prototype_net(net: PrototypeNet, unique_labels: torch.Tensor, train_codes: torch.Tensor,
                        train_labels: torch.Tensor, objective: str = "prosgan", epochs: int = 100,
                        steps_per_epoch: int = 300, batch_size: int = 64, lr: float = 1e-4,
                        generator: torch.Generator | None = None,
                        progress: typing.Callable[[str], None] = lambda message: None, **options) -> list[float]:
    """Train ``net`` for ``epochs`` x ``steps_per_epoch`` steps with the reference schedule; mean loss per epoch.

    ``unique_labels``: the label vectors to draw targets from (the database's unique rows); ``train_codes``
    (N, K) in {-1, +1} and ``train_labels`` (N, C): the frozen victim's training codes and their labels.
    """
    if objective not in PROTOTYPE_OBJECTIVES:
        raise ValueError(f"prototype objective must be one of {', '.join(map(repr, PROTOTYPE_OBJECTIVES))}; "
                         f"got {objective!r}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    optimizer, scheduler = prototype_optimizer(net, lr, epochs * steps_per_epoch)
    train_codes, train_labels = train_codes.float(), train_labels.float()
    net.train()
    losses = []
    for epoch in range(epochs):
        total = 0.0
        for _ in range(steps_per_epoch):
            total += prototype_step(net, optimizer, unique_labels, train_codes, train_labels, generator,
                                    objective, batch_size, **options)
            scheduler.step()
        losses.append(total / max(steps_per_epoch, 1))
        progress(f"PrototypeNet epoch {epoch + 1}/{epochs} loss {losses[-1]:.4f}")
    net.eval()
    return losses


@contextlib.contextmanager
def seeded_torch(generator: torch.Generator):
    """Run the block with torch's global RNG seeded from ``generator`` (fresh weights depend on the seed only),
    and restore the global RNG afterwards."""
    seed = int(torch.randint(2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
