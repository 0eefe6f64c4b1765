#!/usr/bin/env bash
# Make sure FashionMNIST's IDX files are available: Debian's dataset-fashion-mnist package puts them
# in /usr/share/datasets/fashion-mnist. Elsewhere, the loader falls back to --data-root, $HASHBENCH_DATA
# or torchvision's download.
set -euo pipefail
folder=/usr/share/datasets/fashion-mnist
if [ -f "$folder/train-images-idx3-ubyte.gz" ] || [ -n "${HASHBENCH_DATA:-}" ]; then
    exit 0
fi
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "hashbench: installing dataset-fashion-mnist (Debian)" >&2
    apt-get update -qq >&2 && apt-get install -y -qq dataset-fashion-mnist >&2
elif command -v apt-get >/dev/null && command -v sudo >/dev/null; then
    sudo apt-get update -qq >&2 && sudo apt-get install -y -qq dataset-fashion-mnist >&2
else
    echo "hashbench: FashionMNIST not in $folder; the loader will try torchvision's download" >&2
fi
