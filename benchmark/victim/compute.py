"""How a run computes on its device: the device class and the precision settings, planned into the key of every
stage that computes numbers on the device, so a shared cache never mixes TF32 GPU results with CPU ones.

    compute = ComputeSettings.for_device(torch.device("cuda"), precision="bf16")
    compute.apply()                        # TF32 flags and cudnn.benchmark, process-wide (on CUDA only)
    model = compute.laid_out(model)        # channels_last on CUDA: a layout change, the same arithmetic
    with compute.attack_precision(device):  # bf16 autocast around an attack's forwards, when asked
        output = attack.perturb(x, labels, targets)

The settings are fixed by the device and ``precision``, never read from whatever the process was left with:
on CUDA, convolutions in TF32 (torch's default there) and matrix products in fp32 (its default), channels_last
and cudnn.benchmark on (the attack's batch shape is fixed). On the CPU none of them exists, and the settings
are plain fp32. ``bf16`` casts only the attack's forwards and backwards through the model; a victim's binary
codes (``HashModel.codes``: a sign near 0 would flip) and every training step stay in fp32, so the precision is in
the attack key alone (``device_settings`` in the others).
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import torch

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class ComputeSettings:
    device_class: str = "cpu"        # "cpu", or "cuda:sm_<major><minor>" (the GPU's compute capability)
    precision: str = "fp32"          # the attack's forwards: "fp32", or "bf16" autocast
    tf32_matmul: bool = False        # torch.backends.cuda.matmul.allow_tf32
    tf32_cudnn: bool = False         # torch.backends.cudnn.allow_tf32
    channels_last: bool = False      # the victim's weights (and so its activations) in NHWC
    cudnn_benchmark: bool = False    # cudnn picks its convolution algorithms by timing them

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; accepted: {', '.join(PRECISIONS)}")

    @classmethod
    def for_device(cls, device: torch.device, precision: str = "fp32") -> ComputeSettings:
        if device.type != "cuda":
            return cls(device.type, precision)
        major, minor = torch.cuda.get_device_capability(device)
        return cls(f"cuda:sm_{major}{minor}", precision, tf32_matmul=False, tf32_cudnn=True, channels_last=True,
                   cudnn_benchmark=True)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def device_settings(self) -> dict:
        """All but ``precision``: the key part of the stages that run no attack forward (training, encoding)."""
        return {name: value for name, value in self.as_dict().items() if name != "precision"}

    def apply(self) -> None:
        """Set torch's process-wide flags these settings name (only on CUDA: the CPU has none of them)."""
        if self.device_class.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = self.tf32_matmul
            torch.backends.cudnn.allow_tf32 = self.tf32_cudnn
            torch.backends.cudnn.benchmark = self.cudnn_benchmark

    def laid_out(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def attack_precision(self, device: torch.device):
        """bf16 autocast for the attack's forwards when ``precision`` is "bf16"; else nothing."""
        if self.precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def full_precision(device_type: str):
    """Autocast off inside (binary codes are taken in fp32 even inside an attack's bf16 region)."""
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


# ---------------------------------------------------------------- batches sized to the device

PROBE_IMAGES = 4        # images of the probe batch that measures an attack's activation memory per image
MEMORY_SHARE = 0.5      # of the free memory given to the attack's activations: the rest is for the attack's own
                        # tensors (database codes, (B, N) distance tables), the victim's encoding and fragmentation
MAX_BATCH = 8192        # no batch beyond this however small the model: a (B, N) table of a large database grows too
ENCODING_BATCH = 1000   # images per encoding batch (no gradient), halved on out-of-memory


def batch_for_memory(free_bytes: float, per_image_bytes: float, limit: int) -> int:
    """Queries per attack batch: ``MEMORY_SHARE`` of the free memory over one image's cost, in 1..limit."""
    if per_image_bytes <= 0:
        return max(1, min(limit, MAX_BATCH))
    return max(1, min(limit, MAX_BATCH, int(free_bytes * MEMORY_SHARE // per_image_bytes)))


def probe_attack_batch(model: torch.nn.Module, images: torch.Tensor, device: torch.device, limit: int,
                       compute: ComputeSettings) -> int:
    """On CUDA, the attack batch from the free memory and the peak memory of one forward and backward (to the
    input) of ``images`` (a few queries) through ``model``, per image; ``limit`` (the number of queries) elsewhere."""
    if device.type != "cuda":
        return limit
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    x = images.to(device).clone().requires_grad_(True)
    with compute.attack_precision(device):
        loss = model(x).float().sum()
    torch.autograd.grad(loss, x)
    per_image = (torch.cuda.max_memory_allocated(device) - before) / len(images)
    del x, loss
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    return batch_for_memory(free, per_image, limit)


class RandomStates:
    """The states of the random generators a batch may draw from (its own, torch's CPU and CUDA ones), kept so
    that a batch retried after an out-of-memory error draws what it drew the first time."""

    def __init__(self, generators, device: torch.device):
        self.generators = [g for g in generators if g is not None]
        self.states = [g.get_state() for g in self.generators]
        self.cpu = torch.random.get_rng_state()
        self.device = device
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self) -> None:
        for generator, state in zip(self.generators, self.states):
            generator.set_state(state)
        torch.random.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


def in_batches(images, batch_size: int, run, device: torch.device, generators=(),
               halved=lambda size: None) -> int:
    """``run(x, labels, index)`` on consecutive batches of ``images`` (an ``ImageSet``), ``batch_size`` at a time.

    A batch that runs out of CUDA memory is run again at half its size (``halved(size)`` is told), from the
    generators' states it started with, and the rest carry on at that size; the batches done are kept, so
    ``run`` must keep nothing of a batch until it returns. An out-of-memory error at one image is raised.
    Returns the batch size it settled at."""
    done = 0
    while done < len(images):
        start, failed = done, 0
        rest = images if start == 0 else images.subset(torch.arange(start, len(images)))
        for x, labels, index in rest.batches(batch_size):
            states = RandomStates(generators, device)
            try:
                run(x, labels, index + start)
            except torch.cuda.OutOfMemoryError:
                if len(index) == 1:
                    raise
                states.restore()
                failed = len(index)
                break
            done += len(index)
        if failed:  # outside the except clause, so that the failed batch's tensors are freed
            batch_size = max(1, failed // 2)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            halved(batch_size)
    return batch_size
