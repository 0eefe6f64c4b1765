#!/usr/bin/env bash
# Build (once) the Python environment for hashbench and link it as .venv.
# The environment lives outside the clone, keyed by requirements.txt and the Python version, so a
# fresh clone reuses it instead of reinstalling ~5 GB of torch. Override the place with HASHBENCH_ENV_CACHE.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
cache=${HASHBENCH_ENV_CACHE:-$HOME/.cache/hashbench/envs}
key=$( (cat requirements.txt; "$python" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-16)
env="$cache/venv-$key"
if [ ! -x "$env/bin/python" ] || [ ! -f "$env/.complete" ]; then
    echo "hashbench: building the environment in $env (first time only; about 5 GB)" >&2
    mkdir -p "$cache"
    rm -rf "$env"
    "$python" -m venv "$env"
    "$env/bin/python" -m pip install --quiet --upgrade pip >&2 || true
    "$env/bin/python" -m pip install --quiet -r requirements.txt >&2
    touch "$env/.complete"
fi
ln -sfn "$env" .venv
