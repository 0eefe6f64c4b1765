#!/usr/bin/env bash
# What to run on a GPU machine and paste into an issue: the device and versions, whether CUDA works with this
# driver and torch build, FAISS's GPU index against the exact kernel, one VGG11 cell at 224x224 end to end, and
# make benchmark. Every part runs, and says clearly what it found, on a machine without a GPU too.
#   make gpu-check                                    # or: bash tools/gpu_check.sh
#   HASHBENCH_GPU_CHECK_SKIP=benchmark make gpu-check # leave out make benchmark (minutes on a CPU)
# The VGG11 cell runs on tools/synthetic_datasets.py's tiny FLICKR-25K copy (224x224 JPEG files, weights from
# scratch, schedules shrunk: tools/dry_run.py), so it needs no dataset and no download. Exit status: 0 when every
# part passed, 1 when one failed (each part's result is listed at the end).
set -uo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
skip=${HASHBENCH_GPU_CHECK_SKIP:-}
results=()
failed=0

section() { printf '\n==== %s\n' "$1"; }
step() {  # step NAME COMMAND...: run it, remember whether it passed
    local name=$1 started=$SECONDS
    shift
    if "$@"; then
        results+=("ok      $name ($((SECONDS - started)) s)")
    else
        results+=("FAILED  $name (exit $?, $((SECONDS - started)) s)")
        failed=1
    fi
}

if [ ! -x "$python" ]; then
    echo "hashbench gpu-check: no environment at .venv; run 'make env' first" >&2
    exit 2
fi
section "machine"
echo "$(uname -srm), $(getconf _NPROCESSORS_ONLN) CPU cores, checkout $(git rev-parse --short HEAD 2>/dev/null || echo '(no git)')"
section "nvidia-smi"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi || echo "nvidia-smi failed (exit $?)"
else
    echo "nvidia-smi is not on PATH: no NVIDIA driver here, so hashbench runs on the CPU"
fi
section "versions"
step "versions" "$python" -m benchmark.running.gpu report
section "CUDA with this driver and torch build"
step "CUDA works (or no GPU listed)" "$python" -m benchmark.running.gpu require
section "FAISS against the exact kernel"
step "faiss ranking identical" "$python" -m benchmark.running.gpu faiss
section "one VGG11 cell at 224x224 (synthetic FLICKR-25K, --device auto)"
step "VGG11 cell" "$python" tools/dry_run.py --backbone vgg11 --attack dhta --cells 1 --device auto
section "make benchmark"
if [[ ",$skip," == *",benchmark,"* ]]; then
    echo "left out (HASHBENCH_GPU_CHECK_SKIP=$skip)"
    results+=("skipped make benchmark")
else
    step "make benchmark" make --no-print-directory benchmark
fi
section "summary"
printf '%s\n' "${results[@]}"
exit $failed
