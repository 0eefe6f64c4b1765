"""Whether this machine's GPU is usable: what ``nvidia-smi`` lists against what torch's build can use.

    python -m benchmark.running.gpu report     # the device, driver and versions (what tools/gpu_check.sh shows)
    python -m benchmark.running.gpu require    # exit 1, naming the driver and torch's CUDA build, when a GPU is
                                               # listed but torch cannot use it (tools/setup_env.sh runs this)
    python -m benchmark.running.gpu faiss      # FAISS's GPU index against the exact torch ranking

``pick_device("auto")`` (benchmark/running/runner.py) refuses to fall back to the CPU when ``nvidia-smi -L``
lists a GPU that torch cannot use (``gpu_problem``), so a broken CUDA set-up never runs a grid on the CPU
unnoticed.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

import torch

NVIDIA_SMI_SECONDS = 30


def nvidia_smi(*arguments: str) -> list[str] | None:
    """The output lines of ``nvidia-smi ARGUMENTS``; None when it is not on PATH or fails."""
    program = shutil.which("nvidia-smi")
    if program is None:
        return None
    try:
        done = subprocess.run([program, *arguments], capture_output=True, text=True, timeout=NVIDIA_SMI_SECONDS)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def listed_gpus() -> list[str]:
    """The GPUs ``nvidia-smi -L`` lists ("GPU 0: NVIDIA H100 ... (UUID: ...)"), none without nvidia-smi."""
    return [line for line in nvidia_smi("-L") or [] if line.startswith("GPU")]


def driver_version() -> str:
    lines = nvidia_smi("--query-gpu=driver_version", "--format=csv,noheader")
    return lines[0] if lines else "unknown (nvidia-smi gives no driver_version)"


def torch_build() -> str:
    return f"torch {torch.__version__} built for CUDA {torch.version.cuda or 'none (a CPU-only build)'}"


def unsupported_architecture(device: int = 0) -> str | None:
    """Why torch's build has no kernels for this GPU, or None: it needs sm_XY with the same major and a minor
    no higher than the device's (binary compatible), or PTX (compute_XY) no newer than the device."""
    major, minor = torch.cuda.get_device_capability(device)
    built = torch.cuda.get_arch_list()
    for arch in built:
        kind, _, number = arch.partition("_")
        if not number.isdigit():
            continue
        arch_major, arch_minor = divmod(int(number), 10)
        if kind == "sm" and arch_major == major and arch_minor <= minor:
            return None
        if kind == "compute" and (arch_major, arch_minor) <= (major, minor):
            return None
    return (f"{torch.cuda.get_device_name(device)} is sm_{major}{minor}, but {torch_build()} has kernels only for "
            f"{', '.join(built) or 'no architecture'}")


def gpu_problem() -> str | None:
    """Why a GPU that nvidia-smi lists cannot be used by torch here, or None (no GPU listed, or it works)."""
    gpus = listed_gpus()
    if not gpus:
        return None
    if not torch.cuda.is_available():
        return (f"nvidia-smi lists {len(gpus)} GPU(s) ({gpus[0]}) with driver {driver_version()}, but "
                f"{torch_build()} cannot use them (torch.cuda.is_available() is False). The driver must support "
                f"CUDA {torch.version.cuda or '(none: install a CUDA build of torch)'}: update the driver, or install "
                f"a torch wheel built for the driver's CUDA version (nvidia-smi shows it), e.g. from "
                f"https://download.pytorch.org/whl/cu126")
    return unsupported_architecture()


def describe_device(device: torch.device) -> str:
    if device.type != "cuda":
        return f"{device} ({torch_build()}; no GPU listed by nvidia-smi)" if not listed_gpus() else str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"{device} ({torch.cuda.get_device_name(index)}, driver {driver_version()}, {torch_build()})"


def cuda_smoke_test() -> None:
    """A matrix product and a convolution on the GPU, checked against the CPU; raises RuntimeError if not."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(256, 256, generator=generator), torch.randn(256, 256, generator=generator)
    image, kernel = torch.randn(2, 3, 32, 32, generator=generator), torch.randn(4, 3, 3, 3, generator=generator)
    on_gpu = (a.cuda() @ b.cuda()).cpu(), torch.nn.functional.conv2d(image.cuda(), kernel.cuda()).cpu()
    expected = a.double() @ b.double(), torch.nn.functional.conv2d(image.double(), kernel.double())
    for name, got, want in zip(("matmul", "conv2d"), on_gpu, expected):
        error = (got.double() - want).abs().max().item()
        if not error < 1e-1:  # TF32 tolerance; NaN fails too
            raise RuntimeError(f"CUDA {name} differs from the CPU's by {error:.3g}")


def report() -> int:
    import platform

    print(f"python {platform.python_version()}, {torch_build()}, cuDNN {torch.backends.cudnn.version()}")
    try:
        import faiss

        gpu_index = "GpuIndexBinaryFlat available" if hasattr(faiss, "GpuIndexBinaryFlat") else "CPU build"
        print(f"faiss {faiss.__version__} ({gpu_index})")
    except ImportError:
        print("faiss does not import (the torch search backend is used)")
    gpus = listed_gpus()
    print(f"nvidia-smi: {len(gpus)} GPU(s) listed" + (f", driver {driver_version()}" if gpus else
                                                      " (not on PATH or none listed)"))
    for line in gpus:
        print(f"  {line}")
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(index)
            print(f"torch sees cuda:{index} {torch.cuda.get_device_name(index)} (sm_{major}{minor}); built for "
                  f"{' '.join(torch.cuda.get_arch_list())}")
    else:
        print("torch sees no CUDA device")
    return 0


def require() -> int:
    """0 when torch can use every GPU nvidia-smi lists (or none is listed), else 1 with the reason."""
    problem = gpu_problem()
    if problem is None and torch.cuda.is_available():
        try:
            cuda_smoke_test()
        except RuntimeError as exc:
            problem = f"CUDA does not work with driver {driver_version()} and {torch_build()}: {exc}"
    if problem:
        print(f"hashbench: {problem}", file=sys.stderr)
        return 1
    where = (f"CUDA works: {describe_device(torch.device('cuda'))}" if torch.cuda.is_available()
             else "no GPU listed by nvidia-smi: nothing to check (hashbench runs on the CPU)")
    print(f"hashbench: {where}")
    return 0


def faiss_check(queries: int = 500, database: int = 20_000, bits: int = 32, k: int = 1000) -> int:
    """FAISS's ranking (its GPU index where the build has one and the codes are on a GPU) against the exact
    torch kernel on random codes: 0 when identical, 1 when they differ, 0 with a note when there is no FAISS."""
    from benchmark.scoring.search import available_backends, rank

    if "faiss" not in available_backends():
        print("faiss does not import: the torch backend ranks (nothing to compare)")
        return 0
    import faiss

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 2, (queries + database, bits), generator=generator).float() * 2 - 1
    query_codes, database_codes = codes[:queries].to(device), codes[queries:].to(device)
    exact = rank(query_codes, database_codes, k)
    by_faiss = rank(query_codes, database_codes, k, backend="faiss")
    index = ("GpuIndexBinaryFlat" if device.type == "cuda" and hasattr(faiss, "GpuIndexBinaryFlat")
             else "IndexBinaryFlat (CPU)")
    same = all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(exact, by_faiss))
    print(f"faiss {faiss.__version__} {index} top-{k}, {queries} x {database} codes at {bits} bits on {device}: "
          + ("identical to the exact kernel" if same else "DIFFERS from the exact kernel"))
    return 0 if same else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("check", choices=["report", "require", "faiss"])
    args = parser.parse_args(argv)
    return {"report": report, "require": require, "faiss": faiss_check}[args.check]()


if __name__ == "__main__":
    sys.exit(main())
