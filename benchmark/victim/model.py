"""The victim: a backbone, then a hash head (fc to K units), with normalisation inside the model.

``HashModel`` takes images in [0, 1]. Grey images are repeated to three channels and small images
resized inside the model when the backbone expects it, so every attack's epsilon is in [0, 1] pixels.

    model = build_victim("smallcnn", bits=32, in_channels=1, image_size=28)
    codes = model.codes(x)          # (B, K) in {-1, +1}
    relaxed = model(x, alpha=0.1)   # tanh(alpha * y), for attacks with continuation
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.victim.compute import full_precision

log = logging.getLogger("hashbench")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)


class PretrainedWeightsUnavailable(RuntimeError):
    pass


class HashModel(nn.Module):
    def __init__(self, features: nn.Module, feature_dim: int, bits: int, mean: tuple, std: tuple,
                 in_channels: int, input_size: int | None = None, backbone: str = ""):
        super().__init__()
        self.features = features
        self.hash_layer = nn.Linear(feature_dim, bits)
        nn.init.normal_(self.hash_layer.weight, std=0.01)  # CgAT/ProS-GAN hash-head init
        nn.init.zeros_(self.hash_layer.bias)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.in_channels = in_channels
        self.input_size = input_size
        self.bits = bits
        self.backbone = backbone

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1 and self.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if self.input_size and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activation outputs y, (B, K)."""
        return self.hash_layer(self.features(self.preprocess(x)))

    def forward(self, x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        """Relaxed codes tanh(alpha * y) in (-1, 1), (B, K)."""
        return torch.tanh(alpha * self.logits(x))

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Binary codes sign(y) in {-1, +1}; an exact zero maps to +1. Always in fp32, even inside an attack's
        bf16 autocast (``benchmark.victim.compute``): a sign near 0 would flip."""
        with full_precision(x.device.type):
            return binarize(self.logits(x))


def binarize(values: torch.Tensor) -> torch.Tensor:
    return torch.where(values >= 0, 1.0, -1.0).to(values.dtype if values.is_floating_point() else torch.float32)


class SmallCNN(nn.Module):
    """PPL's FashionMNIST network below its hash head: two convolutions of 20 and 50 channels, ReLU.

    PPL (AAAI 2021), Implementation Details: "2 convolution layers with respective 20 and 50 channels, on
    the top of which is a fc layer with c hidden units"; ReLU everywhere but the last layer's tanh. That fc
    is ``HashModel.hash_layer`` (c = the code length) and the tanh is ``HashModel.forward``, so the paper's
    network is these features with ``hidden=0``. Kernel 5x5 and 2x2 max-pooling are not stated: they are
    Caffe's LeNet, whose two convolutions have the same 20 and 50 channels. ``hidden=500`` adds LeNet's
    500-unit fc layer (ReLU) below the hash head: the ``smallcnn_fc500`` backbone, not the paper's.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, hidden: int = 0):
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"the small network needs images of side >= 12, got {image_size}")
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 20, 5), nn.ReLU(), nn.MaxPool2d(2),   # (B, 20, (S-4)/2, (S-4)/2)
            nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),            # (B, 50, side, side)
            nn.Flatten(),                                                # (B, 50 * side * side)
        )
        self.fc = nn.Sequential(nn.Linear(50 * side * side, hidden), nn.ReLU()) if hidden else nn.Identity()
        self.out_dim = hidden or 50 * side * side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    paper: str
    input_size: int | None  # resize inside the model to this, None = native size
    channels: int           # channels the backbone expects
    feature_dim: int


BACKBONES = {
    "smallcnn": BackboneSpec("smallcnn", "PPL (AAAI 2021) FashionMNIST net: 2 conv (20, 50) + fc c (the hash head)",
                             None, 0, 800),
    "smallcnn_fc500": BackboneSpec("smallcnn_fc500", "LeNet-like: PPL's 2 conv (20, 50) + fc 500, ReLU + hash head",
                                   None, 0, 500),
    "alexnet": BackboneSpec("alexnet", "Krizhevsky et al., NeurIPS 2012 (torchvision)", 224, 3, 4096),
    "vgg11": BackboneSpec("vgg11", "Simonyan & Zisserman, ICLR 2015 (torchvision)", 224, 3, 4096),
    "vgg16": BackboneSpec("vgg16", "Simonyan & Zisserman, ICLR 2015 (torchvision)", 224, 3, 4096),
    "vgg19": BackboneSpec("vgg19", "Simonyan & Zisserman, ICLR 2015 (torchvision)", 224, 3, 4096),
    "resnet18": BackboneSpec("resnet18", "He et al., CVPR 2016 (torchvision)", 224, 3, 512),
    "resnet50": BackboneSpec("resnet50", "He et al., CVPR 2016 (torchvision)", 224, 3, 2048),
}
SMALL_NETWORK_HIDDEN = {"smallcnn": 0, "smallcnn_fc500": 500}  # trained from scratch, at the images' own size
SCRATCH_SUFFIX = ":scratch"


def parse_backbone(backbone: str) -> tuple[str, bool]:
    """'vgg11' -> ('vgg11', pretrained=True); 'vgg11:scratch' -> ('vgg11', False)."""
    name, pretrained = backbone, True
    if backbone.endswith(SCRATCH_SUFFIX):
        name, pretrained = backbone[: -len(SCRATCH_SUFFIX)], False
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; known: {', '.join(BACKBONES)} "
                         f"(append {SCRATCH_SUFFIX!r} to a torchvision one to train it from random weights)")
    return name, pretrained and name not in SMALL_NETWORK_HIDDEN


def _torchvision_features(name: str, pretrained: bool) -> nn.Module:
    import torchvision

    builder = getattr(torchvision.models, name)
    weights = None
    if pretrained:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        try:
            net = builder(weights=weights, progress=False)
        except Exception as exc:
            raise PretrainedWeightsUnavailable(
                f"ImageNet weights for {name} could not be had from torchvision's cache or download "
                f"({type(exc).__name__}: {exc}). Put {weights.url.rsplit('/', 1)[-1]} in "
                f"$TORCH_HOME/hub/checkpoints, or use backbone '{name}{SCRATCH_SUFFIX}' to train from scratch."
            ) from None
    else:
        net = builder(weights=None)
    if name.startswith("resnet"):
        net.fc = nn.Identity()  # penultimate (pooled) features
        return net
    # AlexNet / VGG: keep the classifier up to fc7 + ReLU (+ its dropouts), drop the last fc
    net.classifier = nn.Sequential(*list(net.classifier.children())[:-1])
    return net


def build_victim(backbone: str, bits: int, in_channels: int, image_size: int,
                 mean: tuple | None = None, std: tuple | None = None) -> HashModel:
    """A fresh victim for images with ``in_channels`` channels of side ``image_size``.

    ``mean``/``std`` are the dataset's channel statistics, used by the small network; the torchvision
    backbones always use ImageNet's.
    """
    name, pretrained = parse_backbone(backbone)
    spec = BACKBONES[name]
    if name in SMALL_NETWORK_HIDDEN:
        features = SmallCNN(in_channels, image_size, SMALL_NETWORK_HIDDEN[name])
        mean = mean or (0.5,) * in_channels
        std = std or (0.5,) * in_channels
        return HashModel(features, features.out_dim, bits, mean, std, in_channels, None, backbone)
    features = _torchvision_features(name, pretrained)
    input_size = spec.input_size if image_size != spec.input_size else None
    return HashModel(features, spec.feature_dim, bits, IMAGENET_MEAN, IMAGENET_STD, 3, input_size, backbone)
