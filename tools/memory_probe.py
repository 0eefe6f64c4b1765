"""Activation memory of attacking one image, per backbone, and the attack batch the probe rule would choose.

    python tools/memory_probe.py                       # vgg11, vgg16, resnet50 at 224x224, on the CPU
    python tools/memory_probe.py --backbones alexnet vgg19 --cards 24 40 80

For each backbone (random weights: memory does not depend on them) it runs the attack's forward, tanh(alpha * y),
under ``torch.autograd.graph.saved_tensors_hooks`` and sums the bytes of the distinct storages autograd saves for
the backward to the input, leaving out the weights (saved too, but once per model, not per image). That is the
per-image cost a batch multiplies. Then ``benchmark.victim.compute.batch_for_memory`` (the rule the CUDA probe
applies to ``torch.cuda.max_memory_allocated`` of a probe batch) gives the batch for a card of each size, with its
free memory taken as the card less the model's weights. The CUDA probe also counts the backward's transient
buffers, so on a GPU it chooses somewhat less than printed here.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.victim.compute import MEMORY_SHARE, batch_for_memory
from benchmark.victim.model import build_victim

MIB, GIB = 2 ** 20, 2 ** 30


def saved_activation_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves in the forward of ``x`` (not the model's parameters)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    weights |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    x = x.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(x, alpha=0.1).sum()
    torch.autograd.grad(loss, x)
    return sum(storages.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["vgg11", "vgg16", "resnet50"])
    parser.add_argument("--size", type=int, default=224, help="image side (default 224)")
    parser.add_argument("--cards", nargs="+", type=float, default=[40, 80], help="GPU memory sizes in GiB")
    parser.add_argument("--queries", type=int, default=100_000, help="the most queries a batch could hold")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"per-image cost: autograd's saved activations of one {args.size}x{args.size} image (weights left out); "
          f"batch: {MEMORY_SHARE:.0%} of (card - weights) / cost")
    print(f"{'backbone':<10} {'weights MiB':>11} {'per image MiB':>13} " + " ".join(f"{f'{c:g} GiB':>9}"
                                                                               for c in args.cards))
    for backbone in args.backbones:
        torch.manual_seed(0)
        model = build_victim(f"{backbone}:scratch", 64, 3, args.size).eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        one = saved_activation_bytes(model, torch.rand(1, 3, args.size, args.size))
        two = saved_activation_bytes(model, torch.rand(2, 3, args.size, args.size))
        per_image = max(one, two - one)  # the same when nothing is saved per batch rather than per image
        batches = [batch_for_memory(card * GIB - weights, per_image, args.queries) for card in args.cards]
        print(f"{backbone:<10} {weights / MIB:>11.0f} {per_image / MIB:>13.1f} "
              + " ".join(f"{b:>9}" for b in batches))
    return 0


if __name__ == "__main__":
    sys.exit(main())
