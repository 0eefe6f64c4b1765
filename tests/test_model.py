"""The victim model: backbones, normalisation and resizing inside, codes in {-1, +1}."""
from __future__ import annotations

import pytest
import torch

from benchmark.victim.model import (
    BACKBONES,
    SMALL_NETWORK_HIDDEN,
    PretrainedWeightsUnavailable,
    binarize,
    build_victim,
    parse_backbone,
)


def test_small_network_is_ppls_two_conv_net():
    model = build_victim("smallcnn", 12, in_channels=1, image_size=28, mean=(0.2860,), std=(0.3530,))
    convs = [m for m in model.features.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [20, 50]
    x = torch.rand(5, 1, 28, 28)
    codes = model.codes(x)
    assert codes.shape == (5, 12) and set(codes.unique().tolist()) <= {-1.0, 1.0}
    relaxed = model(x, alpha=0.1)
    assert torch.equal(torch.sign(relaxed), codes) or (relaxed == 0).any()
    assert float(relaxed.detach().abs().max()) < 1


def test_normalisation_lives_inside_the_model():
    model = build_victim("smallcnn", 8, 1, 28, mean=(0.5,), std=(0.25,))
    x = torch.full((1, 1, 28, 28), 0.75)
    assert torch.allclose(model.preprocess(x), torch.ones(1, 1, 28, 28))


def test_binarize_maps_zero_to_plus_one():
    assert torch.equal(binarize(torch.tensor([-0.2, 0.0, 3.0])), torch.tensor([-1.0, 1.0, 1.0]))


@pytest.mark.parametrize("name", [n for n in BACKBONES if n not in SMALL_NETWORK_HIDDEN])
def test_torchvision_backbones_take_small_grey_images(name):
    model = build_victim(f"{name}:scratch", 16, in_channels=1, image_size=28).eval()
    assert model.input_size == 224 and model.in_channels == 3
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 16)
    out.sum().backward()  # attacks still get pixel gradients through resize and channel repeat
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_unknown_backbone_and_missing_weights_are_explained(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="unknown backbone 'vgg13'.*vgg11.*:scratch"):
        parse_backbone("vgg13")
    assert parse_backbone("resnet18") == ("resnet18", True)
    assert parse_backbone("resnet18:scratch") == ("resnet18", False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache; no network here either

    def refuse(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr("torch.hub.load_state_dict_from_url", refuse)
    with pytest.raises(PretrainedWeightsUnavailable, match=r"ImageNet weights for alexnet.*alexnet:scratch"):
        build_victim("alexnet", 16, 3, 224)
