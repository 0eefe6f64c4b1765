"""PPL (AAAI 2021): its network, gradient reversal, SMMD, and the protection's generator."""
from __future__ import annotations

import copy

import pytest
import torch

from benchmark import TrainContext, reverse_gradient, smmd
from benchmark.victim.model import build_victim
from leaderboard.plots import loss_curves


def test_smallcnn_is_the_papers_network():
    """Two convolutions of 20 and 50 channels, then one fc with c units (the hash head), tanh last."""
    model = build_victim("smallcnn", 12, 1, 28)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 20), (20, 50)]
    assert [(f.in_features, f.out_features) for f in linears] == [(50 * 4 * 4, 12)]
    assert linears[0] is model.hash_layer
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) == 2
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(model(x), torch.tanh(model.hash_layer(model.features(model.preprocess(x)))))


def test_the_500_unit_variant_keeps_its_own_name():
    model = build_victim("smallcnn_fc500", 12, 1, 28)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(f.in_features, f.out_features) for f in linears] == [(800, 500), (500, 12)]


@pytest.mark.parametrize("scale", [1.0, 0.3])
def test_gradient_reversal_is_identity_forward_and_minus_lambda_backward(scale):
    x = torch.randn(4, 5, requires_grad=True)
    weights = torch.randn(4, 5)
    y = reverse_gradient(x, scale)
    assert torch.equal(y, x)
    (y * weights).sum().backward()
    assert torch.allclose(x.grad, -scale * weights)


def clustered_codes(n: int = 64, bits: int = 8, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % classes
    centres = torch.sign(torch.randn(classes, bits, generator=generator))
    codes = (centres[labels] + 0.3 * torch.randn(n, bits, generator=generator)).clamp(-1, 1)
    return codes, labels[:, None] == labels[None]


BANDWIDTHS = [16 * 2.0 ** m for m in range(-2, 3)]


def test_smmd_is_zero_for_identical_domains():
    codes, similar = clustered_codes()
    assert smmd(codes, codes.clone(), similar, BANDWIDTHS).abs() < 1e-6


def test_smmd_grows_with_a_shift():
    codes, similar = clustered_codes()
    direction = torch.randn(codes.shape[1], generator=torch.Generator().manual_seed(1))
    values = [smmd(codes, codes + t * direction, similar, BANDWIDTHS).item() for t in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(values, values[1:])), values


def test_smmd_sees_a_misalignment_that_a_label_blind_mmd_misses():
    """Each protected code is another class's clean code: the same set, so plain MMD is zero, but similar
    items no longer match across the domains (PPL: "MMD can be minimized even when dissimilar samples from
    different domains are misaligned")."""
    codes, similar = clustered_codes()
    misaligned = codes.roll(1, dims=0)  # item i gets item i-1's code, of another class
    everything = torch.ones_like(similar)
    assert smmd(codes, misaligned, everything, BANDWIDTHS).abs() < 1e-6  # all pairs weighted alike: MMD
    assert smmd(codes, misaligned, similar, BANDWIDTHS) > 0.1


@pytest.fixture(scope="module")
def ppl_class(registry):
    return registry.get("defenses", "ppl")


def test_generator_output_stays_within_epsilon_and_the_unit_interval(ppl_class):
    ppl = ppl_class.configure({"epsilon": 0.1, "width": 4})
    torch.manual_seed(0)
    ppl.build((1, 28, 28), (0.5,), (0.5,))
    for layer in ppl.generator.decoder:  # push the output layer to saturation
        if isinstance(layer, torch.nn.Conv2d):
            torch.nn.init.normal_(layer.weight, std=3.0)
    x = torch.cat([torch.zeros(2, 1, 28, 28), torch.ones(2, 1, 28, 28), torch.rand(4, 1, 28, 28)])
    z = ppl.protect(x)
    assert z.shape == x.shape
    assert (z - x).abs().max() <= 0.1 + 1e-6
    assert (z - x).abs().max() > 0.09  # saturated, so the bound is what holds it
    assert z.min() >= 0 and z.max() <= 1


@pytest.mark.parametrize("normalization, batch_norms", [("batch", 7), ("none", 0)])
def test_normalization_puts_batchnorm_after_every_hidden_layer_or_none(ppl_class, normalization, batch_norms):
    """"batch": a BatchNorm after each of the seven hidden convolutions (before its ReLU), none after the
    output layer; "none": no normalisation. Either way the output stays within epsilon and [0, 1]."""
    ppl = ppl_class.configure({"epsilon": 0.2, "width": 4, "normalization": normalization})
    torch.manual_seed(0)
    ppl.build((1, 28, 28), (0.5,), (0.5,))
    layers = [*ppl.generator.encoder, *ppl.generator.decoder]
    norms = [i for i, layer in enumerate(layers) if isinstance(layer, torch.nn.BatchNorm2d)]
    convolutions = [i for i, layer in enumerate(layers) if isinstance(layer, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert len(norms) == batch_norms and len(convolutions) == 8
    assert [i - 1 for i in norms] == (convolutions[:-1] if batch_norms else [])
    assert all(isinstance(layers[i + 1], torch.nn.ReLU) for i in norms)
    assert all((layers[i].bias is None) == bool(batch_norms) for i in convolutions[:-1])  # BN cancels a bias
    assert isinstance(layers[-1], torch.nn.Tanh) and layers[-2] is layers[convolutions[-1]]
    x = torch.rand(8, 1, 28, 28)
    for mode in (True, False):  # training (batch statistics) and release (running statistics)
        ppl.generator.train(mode)
        z = ppl.generator.release(x)
        assert (z - x).abs().max() <= 0.2 + 1e-6 and z.min() >= 0 and z.max() <= 1


def test_the_defaults_are_adam_on_mean_losses_with_batchnorm(ppl_class):
    ppl = ppl_class.configure({})
    assert (ppl.optimizer, ppl.loss_reduction, ppl.normalization, ppl.iterations) == ("adam", "mean", "batch", 1000)


def test_database_share_protects_that_share(ppl_class):
    mask = ppl_class.configure({"database_share": 0.25}).database_mask(1000, torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and int(mask.sum()) == 250
    assert bool(ppl_class.configure({}).database_mask(10, torch.Generator()).all())
    with pytest.raises(ValueError, match="database_share"):
        ppl_class.configure({"database_share": 1.5})


def reference_losses(ppl, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """J_o and J_p written out from PPL Eq. 4-11 (sums over pairs and items, or their means), no reversal."""
    s = 2 * (labels @ labels.t() > 0).float() - 1
    h_x, h_z = ppl.surrogate(x), ppl.surrogate(ppl.generator.release(x))
    c = h_x.shape[1]
    reduce = torch.sum if ppl.loss_reduction == "sum" else torch.mean
    j_o = reduce((h_z @ h_z.t() - c * s).pow(2))
    j_s = reduce((h_x @ h_z.t() - c * s).pow(2))
    j_e = reduce((h_x - h_z).pow(2).sum(1))
    d_s = smmd(h_x, h_z, s > 0, [2 * c * 2.0 ** m for m in range(-2, 3)])
    return j_o, ppl.alpha * d_s + ppl.beta * j_s + ppl.gamma * j_e


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_one_step_gives_the_generator_jo_minus_lambda_jp_and_the_surrogate_jo_plus_jp(ppl_class, fashion_splits,
                                                                                       reduction):
    """Eq. 12-14: G descends J_o - lambda J_p, F descends J_o + J_p, from one backward pass."""
    ppl = ppl_class.configure({"width": 4, "reversal": 0.5, "alpha": 2.0, "gamma": 3.0, "loss_reduction": reduction})
    torch.manual_seed(0)
    ppl.build((1, 28, 28), fashion_splits.mean, fashion_splits.std)
    x, labels = fashion_splits.train.load(torch.arange(24)), fashion_splits.train.labels[:24]
    generator, surrogate = list(ppl.generator.parameters()), list(ppl.surrogate.parameters())
    loss, terms = ppl.objective(x, labels)
    got = torch.autograd.grad(loss, generator + surrogate)
    j_o, j_p = reference_losses(ppl, x, labels)
    assert torch.allclose(loss, j_o + j_p) and torch.allclose(terms["J_o"], j_o)
    d_o = torch.autograd.grad(j_o, generator + surrogate, retain_graph=True)
    d_p = torch.autograd.grad(j_p, generator + surrogate)
    for i, (g, o, p) in enumerate(zip(got, d_o, d_p)):
        expected = o - 0.5 * p if i < len(generator) else o + p
        assert (g - expected).norm() <= 1e-4 * expected.norm(), i


def test_algorithm_1_updates_the_surrogate_with_jp_alone(ppl_class, fashion_splits):
    """Algorithm 1's letter: G still descends J_o - lambda J_p, F descends J_p only."""
    ppl = ppl_class.configure({"width": 4, "reversal": 0.5, "surrogate_objective": "algorithm"})
    torch.manual_seed(1)
    ppl.build((1, 28, 28), fashion_splits.mean, fashion_splits.std)
    x, labels = fashion_splits.train.load(torch.arange(24)), fashion_splits.train.labels[:24]
    generator, surrogate = list(ppl.generator.parameters()), list(ppl.surrogate.parameters())
    loss, _ = ppl.objective(x, labels)
    got = torch.autograd.grad(loss, generator + surrogate)
    j_o, j_p = reference_losses(ppl, x, labels)
    d_o = torch.autograd.grad(j_o, generator + surrogate, retain_graph=True)
    d_p = torch.autograd.grad(j_p, generator + surrogate)
    for i, (g, o, p) in enumerate(zip(got, d_o, d_p)):
        expected = o - 0.5 * p if i < len(generator) else p
        assert (g - expected).norm() <= 1e-4 * expected.norm(), i


def flipped_bits(model, x: torch.Tensor, x_changed: torch.Tensor) -> float:
    return (model.codes(x) != model.codes(x_changed)).float().mean().item()


def test_generator_played_against_a_fixed_surrogate_flips_more_codes_than_noise(ppl_class, small_victim,
                                                                                fashion_splits):
    """A weaker property than the full game's: from scratch the surrogate needs about a hundred updates to
    leave the all-zero outputs where the square losses start (see ppl.py), too long for a unit test. Held
    fixed at a trained model (DPSH, 32 bits), the generator alone must learn to move its codes, and more
    than uniform noise of the same budget does: with lambda = 0 (no reversal) it flips fewer than noise.
    40 updates: the release uses BatchNorm's running statistics, still a tenth at their initial values
    after 20 (momentum 0.1), when the generator flipped fewer codes than noise (0.017 against 0.021)."""
    model, _, _ = small_victim
    ppl = ppl_class.configure({"iterations": 40, "batch_size": 64, "width": 8, "lr_generator": 1e-3,
                               "optimizer": "adam", "loss_reduction": "mean"})  # learns within 40 updates
    torch.manual_seed(0)
    ppl.build((1, 28, 28), fashion_splits.mean, fashion_splits.std)
    ppl.surrogate = copy.deepcopy(model)  # frozen: no parameter of it requires a gradient
    ctx = TrainContext(torch.device("cpu"), torch.Generator().manual_seed(0), fashion_splits.num_classes)
    ppl.play(fashion_splits.train.subset(range(2000)), ctx)
    x = fashion_splits.query.load(torch.arange(200))
    noise = torch.empty_like(x).uniform_(-ppl.epsilon, ppl.epsilon, generator=torch.Generator().manual_seed(0))
    by_protection = flipped_bits(model, x, ppl.protect(x))
    by_noise = flipped_bits(model, x, (x + noise).clamp(0, 1))
    assert by_protection > 2 * by_noise, (by_protection, by_noise)
    assert [entry["iteration"] for entry in ctx.info["ppl_losses"]] == [10, 20, 30, 40]
    probes = ctx.info["ppl_surrogate_probe"]  # a curve on the curves page: the last one, after the game
    assert [entry["iteration"] for entry in probes] == [40] and probes[0]["map"] == ctx.info["surrogate_probe"]["map"]


def test_prepare_protection_is_seeded_and_its_state_dict_round_trips(ppl_class, fashion_splits):
    def prepared():
        ppl = ppl_class.configure({"iterations": 3, "batch_size": 16, "width": 4})
        ppl.prepare_protection(fashion_splits.train.subset(range(200)),
                               TrainContext(torch.device("cpu"), torch.Generator().manual_seed(0), 10))
        return ppl

    ppl, again = prepared(), prepared()
    x = fashion_splits.query.load(torch.arange(16))
    assert torch.equal(ppl.protect(x), again.protect(x))
    restored = ppl_class.configure({"iterations": 3, "batch_size": 16, "width": 4})
    restored.load_state_dict(ppl.state_dict())
    assert torch.equal(restored.protect(x), ppl.protect(x))
    assert torch.equal(restored.surrogate.codes(x), ppl.surrogate.codes(x))
    assert not torch.equal(ppl.protect(x), x)


def test_the_surrogates_probe_map_is_recorded_at_intervals_for_the_curves_page(ppl_class, fashion_splits,
                                                                               monkeypatch):
    # the module the class was loaded from (a later Registry.discover() loads the plugin file again, anew)
    monkeypatch.setitem(ppl_class.prepare_protection.__globals__, "PROBE_EVERY", 2)
    ppl = ppl_class.configure({"iterations": 5, "batch_size": 16, "width": 4})
    ctx = TrainContext(torch.device("cpu"), torch.Generator().manual_seed(0), 10)
    ppl.prepare_protection(fashion_splits.train.subset(range(300)), ctx)
    probes = ctx.info["ppl_surrogate_probe"]
    assert [entry["iteration"] for entry in probes] == [2, 4, 5]  # every PROBE_EVERY updates, and the last
    assert all(0 < entry["map"] <= 1 and 0 < entry["chance"] < 1 for entry in probes)
    assert loss_curves(ctx.info)["ppl_surrogate_probe: map"] == [(e["iteration"], e["map"]) for e in probes]


def test_protect_before_training_names_what_to_call(ppl_class):
    with pytest.raises(RuntimeError, match="prepare_protection"):
        ppl_class.configure({}).protect(torch.rand(1, 1, 28, 28))


def test_a_surrogate_at_chance_flags_the_protection(ppl_class, fashion_splits):
    """A surrogate whose codes are all alike retrieves at chance: the protection's training says so."""
    ppl = ppl_class.configure({"width": 4})
    torch.manual_seed(0)
    ppl.build((1, 28, 28), fashion_splits.mean, fashion_splits.std)
    ctx = TrainContext(device=torch.device("cpu"), generator=torch.Generator().manual_seed(0), num_classes=10)
    ppl.check_surrogate(fashion_splits.train, ctx, probe_images=400)
    assert not ctx.info.get("flags")  # a fresh random network still ranks above chance on FashionMNIST
    with torch.no_grad():
        ppl.surrogate.hash_layer.weight.zero_()
        ppl.surrogate.hash_layer.bias.fill_(1.0)  # every image gets the same code
    ppl.check_surrogate(fashion_splits.train, ctx, probe_images=400)
    assert "surrogate_at_chance" in ctx.info["flags"]
    assert ctx.info["surrogate_probe"]["at_chance"]


class Stopped(Exception):
    """A run killed right after it saved a checkpoint."""


def test_a_stopped_game_goes_on_from_its_checkpoint_bit_for_bit(ppl_class, fashion_splits, monkeypatch):
    plugin_globals = ppl_class.prepare_protection.__globals__
    monkeypatch.setitem(plugin_globals, "CHECKPOINT_EVERY", 4)
    monkeypatch.setitem(plugin_globals, "PROBE_EVERY", 5)
    train = fashion_splits.train.subset(range(100))  # 7 batches of 16 an epoch: the stop at 8 is in epoch 2
    settings = {"iterations": 11, "batch_size": 16, "width": 4}

    def game(resumed=None, stop_at=None):
        ppl, saved = ppl_class.configure(settings), []

        def save(state):
            saved.append(copy.deepcopy(state))
            if state["iteration"] == stop_at:
                raise Stopped
        ctx = TrainContext(torch.device("cpu"), torch.Generator().manual_seed(0), 10, resumed=resumed,
                           save_checkpoint=save)
        try:
            ppl.prepare_protection(train, ctx)
        except Stopped:
            pass
        return ppl, ctx, saved

    whole, whole_ctx, whole_saved = game()
    assert [state["iteration"] for state in whole_saved] == [4, 8]
    _, _, stopped_saved = game(stop_at=8)
    resumed, resumed_ctx, _ = game(resumed=stopped_saved[-1])
    for name, value in whole.state_dict()["generator"].items():
        assert torch.equal(value, resumed.state_dict()["generator"][name]), name
    for name, value in whole.state_dict()["surrogate"].items():
        assert torch.equal(value, resumed.state_dict()["surrogate"][name]), name
    assert resumed_ctx.info["ppl_losses"] == whole_ctx.info["ppl_losses"]
    assert [p["iteration"] for p in resumed_ctx.info["ppl_surrogate_probe"]] == [5, 10, 11]
    # and a resume from a checkpoint of the wrong epoch position would not match: the stream's place matters
    shifted = copy.deepcopy(stopped_saved[-1])
    shifted["epoch"]["done"] -= 1
    other, _, _ = game(resumed=shifted)
    assert any(not torch.equal(value, whole.state_dict()["generator"][name])
               for name, value in other.state_dict()["generator"].items())


def test_the_harness_keeps_a_trainings_checkpoints_until_it_is_stored(registry, tmp_path):
    from benchmark.session import Session
    from benchmark.victim.train import drop_checkpoint, resumable

    session = Session.start(registry, tmp_path, torch.device("cpu"))
    fresh = TrainContext(torch.device("cpu"), torch.Generator(), 10)
    assert resumable(fresh, "protections", "k1", session) == 0.0 and fresh.resumed is None
    fresh.save_checkpoint({"iteration": 200})
    again = TrainContext(torch.device("cpu"), torch.Generator(), 10)
    assert resumable(again, "protections", "k1", session) >= 0.0
    assert again.resumed == {"iteration": 200} and again.info["training_runs"] == 2
    other_key = TrainContext(torch.device("cpu"), torch.Generator(), 10)
    resumable(other_key, "protections", "k2", session)
    assert other_key.resumed is None
    forced = Session.start(registry, tmp_path, torch.device("cpu"), recompute=frozenset({"protections"}))
    under_force = TrainContext(torch.device("cpu"), torch.Generator(), 10)
    resumable(under_force, "protections", "k1", forced)
    assert under_force.resumed is None  # --force-victims trains afresh
    drop_checkpoint("protections", "k1", session)
    last = TrainContext(torch.device("cpu"), torch.Generator(), 10)
    resumable(last, "protections", "k1", session)
    assert last.resumed is None
