#!/usr/bin/env bash
# Build (once) the Python environment for hashbench and link it as .venv.
# The environment lives outside the clone, keyed by the requirement files, the FAISS build and the Python
# version, so a fresh clone reuses it instead of reinstalling ~5 GB of torch. Override the place with
# HASHBENCH_ENV_CACHE.
# FAISS: on a machine with an NVIDIA GPU (nvidia-smi lists one) faiss-gpu (requirements-gpu.txt) replaces
# faiss-cpu; HASHBENCH_FAISS=cpu or HASHBENCH_FAISS=gpu decides instead.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
cache=${HASHBENCH_ENV_CACHE:-$HOME/.cache/hashbench/envs}
faiss=${HASHBENCH_FAISS:-auto}
gpu_listed=no
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    gpu_listed=yes
fi
if [ "$faiss" = auto ]; then
    faiss=cpu
    if [ "$gpu_listed" = yes ]; then
        faiss=gpu
        if [ "$(uname -m)" != x86_64 ]; then  # faiss-gpu ships x86_64 wheels only
            echo "hashbench: faiss-gpu has no wheel for $(uname -m); using faiss-cpu (searches run on the CPU," \
                 "torch still uses the GPU)" >&2
            faiss=cpu
        fi
    fi
fi
case "$faiss" in
    cpu) requirements=(-r requirements.txt) ;;
    gpu) grep -v '^faiss-cpu' requirements.txt > "${TMPDIR:-/tmp}/hashbench-requirements-gpu.txt"
         requirements=(-r "${TMPDIR:-/tmp}/hashbench-requirements-gpu.txt" -r requirements-gpu.txt) ;;
    *) echo "hashbench: HASHBENCH_FAISS must be auto, cpu or gpu; got '$faiss'" >&2; exit 2 ;;
esac
key_files=(requirements.txt)
[ "$faiss" = gpu ] && key_files+=(requirements-gpu.txt)
key=$( (cat "${key_files[@]}"; "$python" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-16)
env="$cache/venv-$key"
[ "$faiss" = gpu ] && env="$env-gpu"
if [ ! -x "$env/bin/python" ] || [ ! -f "$env/.complete" ]; then
    echo "hashbench: building the environment in $env (faiss: $faiss; first time only; about 5 GB)" >&2
    mkdir -p "$cache"
    rm -rf "$env"
    "$python" -m venv "$env"
    "$env/bin/python" -m pip install --quiet --upgrade pip >&2 || true
    if ! "$env/bin/python" -m pip install --quiet "${requirements[@]}" >&2; then
        [ "$faiss" = gpu ] || exit 1
        echo "hashbench: faiss-gpu did not install; falling back to faiss-cpu in $env (searches run on the CPU," \
             "torch still uses the GPU; HASHBENCH_FAISS=cpu skips the attempt)" >&2
        "$env/bin/python" -m pip install --quiet -r requirements.txt >&2
    fi
    touch "$env/.complete"
fi
ln -sfn "$env" .venv
# On a machine whose nvidia-smi lists a GPU: check that torch's CUDA build works with its driver, else fail
# naming both (the environment stays linked, so --device cpu still runs).
if [ "$gpu_listed" = yes ]; then
    "$env/bin/python" -m benchmark.running.gpu require
fi
