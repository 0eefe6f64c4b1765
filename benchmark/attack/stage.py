"""The attack stage: prepare an attack once per attacker, perturb the queries, keep the harness's promises.

    targets = target_labels(plan.targets, splits, session)                     # .cache/targets/<key>.pt
    attacked = attacked_queries(plan.attack, victim, attacker, attacker_codes, splits, targets, session)
    attacked = released_queries(plan, codes, released, protection, splits, session)   # a protection's cell

``prepare`` runs on the attacker (the victim itself, or the cell's surrogate) with its random draws seeded
from the attacker's and the attack's identity; what it learned (``state_dict``: a PrototypeNet, a generator)
and what it recorded (``AttackContext.info``: loss curves) are cached under the prepare key, so a second
epsilon or query subset reuses them. The outcome (codes, perturbation statistics, timing, gallery images,
the prepare record) is cached under the attack key, apart from scoring: a change to scoring re-scores, never
re-attacks. Whatever a plugin does, the harness
- hands it copies (images, labels, targets, database codes), keeping its own to check against, so an
  attack that writes into its inputs cannot fake its budget or change another cell's numbers;
- checks the returned images' shape and finiteness, counts those outside the epsilon ball (or [0, 1] for an
  unbounded attack) before projecting them onto it, and records L-inf, L2 and perceptibility;
- times ``perturb`` alone, CUDA-synchronised, restores torch's process-wide settings after every plugin
  call, and fails the cell when a call changed either model (weights, hooks, submodules, attributes, mode:
  ``benchmark.victim.guard``), dropping it from the session's memo.
"""
from __future__ import annotations

import dataclasses
import numbers
import time
from dataclasses import dataclass, field

import torch

from benchmark.attack.base import Attack, AttackContext, Perturbed, project
from benchmark.attack.targets import draw_target_labels
from benchmark.data.dataset import Splits
from benchmark.data.images import ImageSet
from benchmark.parts.steps import reporting_iterations
from benchmark.planning.plan import AttackPlan, CellPlan, TargetsPlan
from benchmark.session import Session
from benchmark.victim.compute import ENCODING_BATCH, PROBE_IMAGES, ComputeSettings, in_batches, probe_attack_batch
from benchmark.victim.guard import PluginLeak, check_model_kept, model_fingerprint, torch_settings_kept
from benchmark.victim.model import HashModel
from benchmark.victim.train import ProtectedImages, Protection, Trained


@dataclass
class AttackOutcome:
    codes: dict[int, torch.Tensor]            # {iterations: (Q, K) adversarial codes}; the largest is final
    target_codes: dict[str, torch.Tensor]     # {"anchor_code": (Q, K)} codes the attack aimed at
    perturbation: dict[str, float]            # of the final images: perceptibility, linf, linf_mean, l2, violations
    seconds: float                            # in perturb, all queries
    gallery: dict = field(default_factory=dict)  # {"clean": (G, C, H, W), "adversarial": (G, C, H, W)} of ``keep``
    snapshot_perturbation: dict[int, dict[str, float]] = field(default_factory=dict)  # the same, earlier snapshots
    batch_size: int = 0                       # queries per batch the attack ran at (after any out-of-memory halving)

    @property
    def final_iterations(self) -> int:
        return max(self.codes)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PerturbationStatistics:
    """Running statistics of the final images against the clean ones, in O(one image) memory: L-inf, L2,
    squared error, and two signs of a degenerate perturbation (``benchmark.scoring.flags``):

    - ``universal_share`` = N ||mean_i delta_i||^2 / sum_i ||delta_i||^2, the share of the perturbation's
      energy in its mean over images: 1 for a perturbation that does not depend on the image, about 1/N for
      independent zero-mean ones; NaN when nothing was perturbed;
    - ``saturated_share``: the share of pixels whose released value sits at an end of the range the budget
      allows, [max(0, x - epsilon), min(1, x + epsilon)] ([0, 1] without an epsilon), within 1% of epsilon
      (of 1 without one): a bounded tanh at its bound everywhere gives 1. Measured on the projected images,
      so a push below 0 that [0, 1] clipped counts as at the bound, whichever sign it had.
    """

    BOUND_TOLERANCE = 0.01  # of epsilon (of the [0, 1] range without one)

    def __init__(self, epsilon: float | None = None):
        self.epsilon = epsilon
        self.squared, self.pixels, self.violations, self.count, self.at_bound = 0.0, 0, 0, 0, 0
        self.delta_sum: torch.Tensor | None = None  # (C * H * W,) float64, the sum of the perturbations
        self.linf, self.l2 = [], []

    def add(self, x: torch.Tensor, x_adv: torch.Tensor, violations: int) -> None:
        difference = (x_adv - x).flatten(1)
        self.linf.append(difference.abs().amax(1).cpu())
        self.l2.append(difference.norm(dim=1).cpu())
        self.squared += float(difference.double().pow(2).sum())
        batch_sum = difference.double().sum(0).cpu()
        self.delta_sum = batch_sum if self.delta_sum is None else self.delta_sum + batch_sum
        self.at_bound += int(self.bound_mask(x, x_adv).sum())
        self.pixels += difference.numel()
        self.violations += violations
        self.count += len(x)

    def bound_mask(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """Pixels of ``x_adv`` at an end of their allowed range (see the class docstring)."""
        radius = 1.0 if self.epsilon is None else self.epsilon
        low = torch.zeros_like(x) if self.epsilon is None else (x - self.epsilon).clamp(min=0)
        high = torch.ones_like(x) if self.epsilon is None else (x + self.epsilon).clamp(max=1)
        tolerance = self.BOUND_TOLERANCE * radius
        return (x_adv <= low + tolerance) | (x_adv >= high - tolerance)

    def universal_share(self) -> float:
        if self.delta_sum is None or self.squared == 0:
            return float("nan")
        return float(self.delta_sum.pow(2).sum()) / self.count / self.squared

    def result(self) -> dict[str, float]:
        linf = torch.cat(self.linf)
        return {"perceptibility": (self.squared / max(self.pixels, 1)) ** 0.5, "linf": float(linf.max()),
                "linf_mean": float(linf.mean()), "l2": float(torch.cat(self.l2).mean()),
                "violations": self.violations / max(self.count, 1), "universal_share": self.universal_share(),
                "saturated_share": self.at_bound / max(self.pixels, 1)}


def check_images(name: str, x_adv, x: torch.Tensor, where: str) -> torch.Tensor:
    if not isinstance(x_adv, torch.Tensor):
        raise TypeError(f"attack {name} returned {type(x_adv).__name__} {where}; expected a tensor or Perturbed")
    if x_adv.shape != x.shape:
        raise ValueError(f"attack {name} returned shape {tuple(x_adv.shape)} {where} for queries of shape "
                         f"{tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise FloatingPointError(f"attack {name} returned NaN or infinite pixels {where}")
    return x_adv.detach().to(x.device, x.dtype)


def enforce_budget(x_adv: torch.Tensor, x: torch.Tensor, epsilon: float | None) -> tuple[torch.Tensor, int]:
    """The images inside the epsilon ball and [0, 1] (only [0, 1] when ``epsilon`` is None); how many were not."""
    tolerance = 1e-6
    outside_range = (x_adv < -tolerance) | (x_adv > 1 + tolerance)
    bad = outside_range.flatten(1).any(1)
    if epsilon is not None:
        bad |= (x_adv - x).flatten(1).abs().amax(1) > epsilon + tolerance
        return project(x_adv, x, epsilon), int(bad.sum())
    return x_adv.clamp(0, 1), int(bad.sum())


def target_labels(plan: TargetsPlan, splits: Splits, s: Session) -> torch.Tensor:
    """One target label per query, drawn once per (split, seed, rule) and shared by every cell of the split."""
    def draw() -> torch.Tensor:
        generator = torch.Generator().manual_seed(plan.seed)
        return draw_target_labels(splits.query.labels, splits.database.labels, generator, plan.rule)

    return s.cached("targets", plan.key, draw)


@dataclass
class Attacked:
    """The attack stage's result: the outcome, and what preparing the attack took and recorded."""

    outcome: "AttackOutcome"
    prepare_seconds: float = 0.0
    prepare_info: dict = field(default_factory=dict)


def attacked_queries(plan: AttackPlan, victim: Trained, attacker: Trained, attacker_database: torch.Tensor,
                     splits: Splits, targets: torch.Tensor, s: Session) -> Attacked:
    """Prepare the attack on the attacker, perturb every query (cached by the attack key, under a claim)."""
    label = plan.attack.name
    stored = s.cached("attacks", plan.key,
                    lambda: attack_all(plan, victim, attacker, attacker_database, splits, targets, s),
                    waiting=lambda: s.stage(f"waiting for another run attacking with {label}"))
    return Attacked(AttackOutcome(**stored["outcome"]), stored["prepare_seconds"], stored["prepare_info"])


def attack_all(plan: AttackPlan, victim: Trained, attacker: Trained, attacker_database: torch.Tensor,
               splits: Splits, targets: torch.Tensor, s: Session) -> dict:
    attack = plan.attack.configure(s.registry)
    if plan.epsilon is not None:
        attack.epsilon = plan.epsilon
    ctx = AttackContext(model=attacker.model, database_codes=attacker_database.clone(),
                        database_labels=splits.database.labels.to(s.device).clone(), train=splits.train,
                        num_classes=splits.num_classes, bits=attacker.plan.bits, device=s.device,
                        generator=torch.Generator().manual_seed(plan.prepare_seed),
                        progress=lambda message: s.stage(f"preparing {attack.label()}: {message}"))
    models = ModelsKept(attack, victim, attacker, s)
    s.stage(f"preparing {attack.label()}")
    prepared = prepare(attack, ctx, plan, s)
    models.check("prepare()", weights=False)  # the weights once, at the end: hashing them is what costs
    ctx.generator.manual_seed(plan.seed)
    compute = dataclasses.replace(s.compute, precision=plan.precision)
    batch_size = s.attack_batch or probe_attack_batch(attacker.model, splits.query.load(torch.arange(
        min(PROBE_IMAGES, len(splits.query)))), s.device, len(splits.query), compute)
    outcome = perturb_queries(attack, splits.query, targets, plan.epsilon, victim.model, batch_size, s.device,
                              s.stage, keep=gallery_queries(len(splits.query), victim.plan.seed), compute=compute)
    models.check("perturb()")
    return {"outcome": vars(outcome), "prepare_seconds": prepared["seconds"], "prepare_info": prepared["info"]}


class ModelsKept:
    """The fingerprints of the victim and the attacker before the attack ran, checked after each of its calls.

    A model an attack changed (weights, hooks, submodules, attributes, mode) is dropped from the session's memo
    before its cell fails, so no later cell of this process uses it. ``weights=False`` skips the weights (a hash
    of every tensor): checked after ``perturb``, a change to them is reported as made in either call."""

    def __init__(self, attack: Attack, victim: Trained, attacker: Trained, s: Session):
        self.attack, self.session = attack, s
        self.models = {"the victim": victim} if attacker is victim else {"the victim": victim, "the surrogate": attacker}
        self.before = {what: model_fingerprint(trained.model) for what, trained in self.models.items()}

    def check(self, call: str, weights: bool = True) -> None:
        for what, trained in self.models.items():
            after = model_fingerprint(trained.model, weights=weights)
            try:
                check_model_kept(self.before[what], after, self.attack, call, what, allowed=("weights",))
                if weights:
                    check_model_kept(self.before[what], after, self.attack, "prepare() or perturb()", what,
                                     allowed=tuple(part for part in after if part != "weights"))
            except PluginLeak:
                for broken in self.models.values():
                    self.session.memo.forget("victims", broken.plan.key)
                raise


def prepare(attack: Attack, ctx: AttackContext, plan: AttackPlan, s: Session) -> dict:
    """Run ``attack.prepare`` or restore its cached learned state; the seconds it took when first run, and
    what it recorded in ``ctx.info`` (loss curves). Learned state is cached under its claim."""
    ran = []

    def run() -> dict:
        started = time.perf_counter()
        with torch_settings_kept(attack, "prepare"):
            attack.prepare(ctx)
        synchronize(ctx.device)
        ran.append(True)
        info = {name: value for name, value in ctx.info.items() if not name.startswith("_")}
        return {"state": attack.state_dict(), "seconds": time.perf_counter() - started, "info": info}

    stored = s.cached("prepared", plan.prepare_key, run, store=lambda value: value["state"] is not None,
                    waiting=lambda: s.stage(f"waiting for another run preparing {attack.label()}"))
    if not ran:  # restored from the cache: the plugin gets its context and learned state back
        attack.ctx = ctx
        with torch_settings_kept(attack, "load_state_dict"):
            attack.load_state_dict(stored["state"])
    return stored


@torch.no_grad()
def released_queries(plan: CellPlan, clean_query_codes: torch.Tensor, released: dict | None, protection: Protection,
                     splits: Splits, s: Session) -> Attacked:
    """A protection cell's queries as its scenario releases them (clean, or protected: c2c/c2a vs a2c/a2a).

    A cell that uses the protection (its database or its victim's training data) but releases clean queries
    still carries the protection's ``universal_share`` and ``saturated_share``, measured on the queries it
    would release, so a degenerate protection is flagged on every cell it touches."""
    def release() -> dict:
        protected_queries = plan.cell.scenario[0] == "a"
        query_codes = released["query"] if protected_queries else clean_query_codes.cpu()
        epsilon = getattr(protection.defense, "epsilon", None) if protection is not None else None
        statistics, protected, seconds = PerturbationStatistics(epsilon), PerturbationStatistics(epsilon), 0.0
        kept = Kept(gallery_queries(len(splits.query), plan.victim.seed))
        images = ProtectedImages(splits.query, protection.defense, device=s.device) if protection is not None else None

        def run(x, _, index):
            nonlocal seconds
            synchronize(s.device)
            started = time.perf_counter()
            x_protected = images.load(index) if images is not None else x
            synchronize(s.device)
            seconds += time.perf_counter() - started
            x_released = x_protected if protected_queries else x
            statistics.add(x, x_released, 0)
            protected.add(x, x_protected, 0)
            kept.add(index, x, x_released)

        batch_size = in_batches(splits.query, s.attack_batch or ENCODING_BATCH, run, s.device)
        perturbation = statistics.result()
        perturbation.update({name: protected.result()[name] for name in ("universal_share", "saturated_share")})
        seconds = seconds if protected_queries else 0.0
        outcome = AttackOutcome({0: query_codes}, {}, perturbation, seconds, kept.result(),
                                batch_size=min(batch_size, len(splits.query)))
        return {"outcome": vars(outcome), "prepare_seconds": 0.0, "prepare_info": {}}

    stored = s.cached("attacks", plan.attack.key, release)
    return Attacked(AttackOutcome(**stored["outcome"]), stored["prepare_seconds"], stored["prepare_info"])


def perturb_queries(attack: Attack, queries: ImageSet, targets: torch.Tensor, epsilon: float | None,
                    victim: HashModel, batch_size: int, device: torch.device, stage=lambda message: None,
                    keep: torch.Tensor | None = None, compute: ComputeSettings | None = None) -> AttackOutcome:
    """Perturb every query, project, encode under the victim; per-iteration codes for snapshot runs.

    A batch that runs out of CUDA memory is perturbed again at half the size, from the random states it started
    with, and the others carry on at that size (``compute.in_batches``): what a query gets does not depend on
    the batch it shares. The final clean and adversarial images of the queries at ``keep`` are returned for the
    gallery; ``batch_size`` on the outcome is the batch the queries ran at in the end.
    """
    compute = compute or ComputeSettings.for_device(device)
    codes: dict[int, list[torch.Tensor]] = {}
    target_codes: dict[str, list[torch.Tensor]] = {}
    statistics: dict[int, PerturbationStatistics] = {}
    kept = Kept(keep)
    seconds, done = 0.0, 0

    def run(x, labels, index):
        nonlocal seconds, done
        x, labels, batch_targets = x.to(device), labels.to(device), targets[index].to(device)
        synchronize(device)
        started = time.perf_counter()
        batch = f"attacking queries {done + 1}-{done + len(x)} of {len(queries)}"
        with torch_settings_kept(attack, "perturb"), compute.attack_precision(device), reporting_iterations(
                lambda step, steps: stage(f"{batch}: iteration {step}/{steps}")):
            output = attack.perturb(x.clone(), labels.clone(), batch_targets.clone())
        synchronize(device)
        elapsed = time.perf_counter() - started
        output = output if isinstance(output, Perturbed) else Perturbed(output)
        snapshots = checked_snapshots(attack, output)
        if codes and set(snapshots) != set(codes):
            raise ValueError(f"attack {attack.name} returned snapshots at iterations {sorted(snapshots)} for one batch "
                             f"and {sorted(codes)} for another")
        final_iteration, released = max(snapshots), {}
        for iteration, images in sorted(snapshots.items()):
            images = check_images(attack.name, images, x, f"at iteration {iteration}")
            images, violations = enforce_budget(images, x, epsilon)
            victim.eval()
            released[iteration] = images, violations, victim.codes(images).cpu()
        aimed = {name: check_codes(attack.name, name, value, len(x))
                 for name, value in checked_code_names(attack, output).items()}
        for iteration, (images, violations, batch_codes) in released.items():  # nothing kept before it all ran
            statistics.setdefault(iteration, PerturbationStatistics(epsilon)).add(x, images, violations)
            if iteration == final_iteration:
                kept.add(index, x, images)
            codes.setdefault(iteration, []).append(batch_codes)
        for name, value in aimed.items():
            target_codes.setdefault(name, []).append(value)
        seconds += elapsed
        done += len(x)
        stage(f"attacking {done}/{len(queries)} queries")

    ctx = getattr(attack, "ctx", None)
    settled = in_batches(queries, batch_size, run, device, generators=[getattr(ctx, "generator", None)],
                         halved=lambda size: stage(f"out of memory: attacking with batches of {size} queries"))
    final = max(statistics)
    return AttackOutcome({it: torch.cat(c) for it, c in codes.items()},
                         {name: torch.cat(c) for name, c in target_codes.items()},
                         statistics[final].result(), seconds, kept.result(),
                         {it: s.result() for it, s in statistics.items() if it != final},
                         min(settled, len(queries)))


def checked_snapshots(attack: Attack, output: Perturbed) -> dict[int, torch.Tensor]:
    """``{iterations: images}`` of one batch, every iteration count a whole number >= 0 (stored as ``int``)."""
    if not isinstance(output.images, dict):
        return {iteration_number(attack, attack.iteration_count(), "iteration_count()"): output.images}
    if not output.images:
        raise ValueError(f"attack {attack.name} returned an empty snapshot dict; expected the final images, or "
                         f"{{iterations: images}} with at least one entry (e.g. {{100: x_100, 200: x_200}})")
    return {iteration_number(attack, key, "a snapshot key"): images for key, images in output.images.items()}


def iteration_number(attack: Attack, value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"attack {attack.name} gave {value!r} ({type(value).__name__}) as {where}; an iteration "
                         f"count must be a whole number >= 0 (snapshots are {{iterations: images}}, e.g. "
                         f"{{100: x_100, 200: x_200}})")
    return int(value)


def checked_code_names(attack: Attack, output: Perturbed) -> dict[str, torch.Tensor]:
    """The codes an attack aimed at, by name; each name becomes part of a metric's name (``<name>_tmap``)."""
    if not isinstance(output.codes, dict):
        raise TypeError(f"attack {attack.name} returned Perturbed.codes of type {type(output.codes).__name__}; "
                        f"expected a dict {{name: (B, K) codes}}, e.g. {{'anchor_code': codes}}")
    for name in output.codes:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"attack {attack.name} named aimed codes {name!r}; a name must be an identifier-like "
                             f"string (letters, digits, underscores), e.g. 'anchor_code'")
    return output.codes


class Kept:
    """Clean and adversarial images of a few chosen queries, gathered across batches."""

    def __init__(self, keep: torch.Tensor | None):
        self.keep = keep if keep is not None else torch.empty(0, dtype=torch.long)
        self.clean, self.adversarial = {}, {}

    def add(self, index: torch.Tensor, x: torch.Tensor, x_adv: torch.Tensor) -> None:
        for position in torch.nonzero(torch.isin(index, self.keep)).flatten().tolist():
            self.clean[int(index[position])] = x[position].cpu()
            self.adversarial[int(index[position])] = x_adv[position].cpu()

    def result(self) -> dict:
        if not self.clean:
            return {}
        order = sorted(self.clean)
        return {"index": torch.tensor(order), "clean": torch.stack([self.clean[i] for i in order]),
                "adversarial": torch.stack([self.adversarial[i] for i in order])}


def check_codes(attack: str, name: str, codes, n: int) -> torch.Tensor:
    if not isinstance(codes, torch.Tensor) or codes.ndim != 2 or len(codes) != n:
        raise ValueError(f"attack {attack} reported {name!r} codes of shape "
                         f"{tuple(getattr(codes, 'shape', ()))}; expected ({n}, K) +-1 codes, one per query")
    if not (codes.abs() == 1).all():
        raise ValueError(f"attack {attack} reported {name!r} codes that are not all -1 or +1")
    return codes.detach().float().cpu()


GALLERY_QUERIES = 4     # queries shown per cell


def gallery_queries(n_query: int, seed: int, count: int = GALLERY_QUERIES) -> torch.Tensor:
    """Indices of the queries shown, a seeded draw that is the same for every attack on one query set."""
    if n_query <= 0:
        raise ValueError(f"gallery_queries needs at least one query; got n_query={n_query}")
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n_query, generator=generator)[:count].sort().values
