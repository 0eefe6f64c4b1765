"""--device auto and the environment's CUDA check against what nvidia-smi lists (a stub nvidia-smi first on PATH)."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmark.running import gpu
from benchmark.running.runner import pick_device

ROOT = Path(__file__).resolve().parent.parent
LISTING = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-6f0d3c1e-0000-0000-0000-000000000000)"
DRIVER = "535.54.03"


def stub_nvidia_smi(folder: Path, listing: str | None, exit_code: int = 0) -> Path:
    """An nvidia-smi that answers -L with ``listing`` and the driver query with DRIVER."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(f"""#!/bin/sh
case "$1" in
  -L) printf '%s\\n' '{listing or "No devices were found"}'; exit {exit_code} ;;
  --query-gpu=driver_version) echo {DRIVER} ;;
  *) echo "stub nvidia-smi: unexpected $*" >&2; exit 2 ;;
esac
""")
    script.chmod(0o755)
    return folder


@pytest.fixture
def gpu_listed(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{stub_nvidia_smi(tmp_path / 'bin', LISTING)}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def no_nvidia_smi(tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no nvidia-smi anywhere on PATH
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_refuses_the_cpu_when_a_listed_gpu_is_unusable(gpu_listed):
    with pytest.raises(ValueError) as raised:
        pick_device("auto")
    message = str(raised.value)
    assert "NVIDIA H100" in message and f"driver {DRIVER}" in message
    assert f"torch {torch.__version__} built for CUDA {torch.version.cuda or 'none'}" in message
    assert "--device cpu" in message
    assert pick_device("cpu") == torch.device("cpu")  # asking for the CPU still works
    with pytest.raises(ValueError, match=f"driver {DRIVER}.*--device cpu"):
        pick_device("cuda")


def test_auto_picks_the_cpu_without_nvidia_smi_and_says_so(no_nvidia_smi, caplog):
    with caplog.at_level(logging.INFO, logger="hashbench"):
        assert pick_device("auto") == torch.device("cpu")
    assert "--device auto chose cpu" in caplog.text and "no GPU listed" in caplog.text


def test_auto_picks_the_cpu_when_nvidia_smi_lists_no_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{stub_nvidia_smi(tmp_path / 'bin', None, exit_code=6)}{os.pathsep}"
                               f"{os.environ['PATH']}")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.listed_gpus() == []
    assert pick_device("auto") == torch.device("cpu")


def test_a_gpu_without_kernels_in_the_torch_build_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=0: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_80", "sm_90"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=0: "Tesla V100")
    assert "Tesla V100 is sm_70" in gpu.unsupported_architecture()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=0: (8, 6))  # runs sm_80 code
    assert gpu.unsupported_architecture() is None
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_90", "compute_80"])  # PTX JIT-compiles
    assert gpu.unsupported_architecture() is None


def run_check(check: str, path: str) -> subprocess.CompletedProcess:
    """``python -m benchmark.running.gpu CHECK`` as tools/setup_env.sh runs it, with this PATH (CUDA hidden)."""
    env = {**os.environ, "PATH": path, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "benchmark.running.gpu", check], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_environment_check_fails_naming_driver_and_build(tmp_path):
    stub = stub_nvidia_smi(tmp_path / "bin", LISTING)
    done = run_check("require", f"{stub}{os.pathsep}{os.environ['PATH']}")
    assert done.returncode == 1
    assert f"driver {DRIVER}" in done.stderr and f"torch {torch.__version__}" in done.stderr


def test_the_environment_check_passes_without_a_gpu(tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    done = run_check("require", str(empty))
    assert done.returncode == 0 and "no GPU listed by nvidia-smi" in done.stdout
    report = run_check("report", str(empty))
    assert report.returncode == 0 and f"torch {torch.__version__}" in report.stdout
    assert "nvidia-smi: 0 GPU(s) listed" in report.stdout


def test_faiss_matches_the_exact_kernel_here():
    assert gpu.faiss_check(queries=50, database=3_000, bits=32, k=100) == 0


def fake_checkout(tmp_path: Path) -> tuple[Path, Path]:
    """A checkout holding setup_env.sh, the requirement files and the harness, and an environment cache whose
    environments (CPU and GPU FAISS) are already built: wrappers around this test's Python."""
    checkout, cache = tmp_path / "checkout", tmp_path / "envs"
    (checkout / "tools").mkdir(parents=True)
    for name in ("tools/setup_env.sh", "requirements.txt", "requirements-gpu.txt"):
        (checkout / name).write_bytes((ROOT / name).read_bytes())
    (checkout / "benchmark").symlink_to(ROOT / "benchmark")
    version = subprocess.run([sys.executable, "-c", "import sys; print(sys.version)"], capture_output=True,
                             text=True, check=True).stdout
    import hashlib

    for files, suffix in ((["requirements.txt"], ""), (["requirements.txt", "requirements-gpu.txt"], "-gpu")):
        text = b"".join((ROOT / f).read_bytes() for f in files) + version.encode()
        env = cache / f"venv-{hashlib.sha256(text).hexdigest()[:16]}{suffix}"
        (env / "bin").mkdir(parents=True)
        (env / "bin" / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        (env / "bin" / "python").chmod(0o755)
        (env / ".complete").touch()
    return checkout, cache


def run_setup(checkout: Path, cache: Path, path: str) -> subprocess.CompletedProcess:
    env = {"PATH": path, "HOME": os.environ.get("HOME", "/tmp"), "PYTHON": sys.executable,
           "HASHBENCH_ENV_CACHE": str(cache), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(checkout / "tools/setup_env.sh")], env=env, capture_output=True, text=True,
                          timeout=300)


def test_make_env_fails_naming_driver_and_build_when_a_listed_gpu_is_unusable(tmp_path):
    checkout, cache = fake_checkout(tmp_path)
    stub = stub_nvidia_smi(tmp_path / "bin", LISTING)
    done = run_setup(checkout, cache, f"{stub}{os.pathsep}/usr/bin{os.pathsep}/bin")
    assert done.returncode == 1, done.stderr
    assert f"driver {DRIVER}" in done.stderr and f"torch {torch.__version__}" in done.stderr
    assert (checkout / ".venv").resolve().name.endswith("-gpu")  # linked all the same: --device cpu still runs


def test_make_env_needs_no_cuda_check_without_a_gpu(tmp_path):
    checkout, cache = fake_checkout(tmp_path)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    done = run_setup(checkout, cache, f"{empty}{os.pathsep}/usr/bin{os.pathsep}/bin")
    assert done.returncode == 0, done.stderr
    assert not (checkout / ".venv").resolve().name.endswith("-gpu")
