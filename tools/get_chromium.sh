#!/usr/bin/env bash
# Make sure a headless Chromium is available for the leaderboard's browser test (tests/test_browser.py):
# Debian's `chromium` package, installed with apt-get as root or through sudo. Nothing is downloaded
# outside the package manager. Set HASHBENCH_CHROMIUM to use another Chromium binary instead.
set -euo pipefail
if [ -n "${HASHBENCH_CHROMIUM:-}" ] || command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
    exit 0
fi
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "hashbench: installing chromium (Debian) for the browser test" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
elif command -v apt-get >/dev/null && command -v sudo >/dev/null; then
    sudo apt-get update -qq >&2 && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
else
    echo "hashbench: no chromium and no apt-get; the browser test will be skipped (set HASHBENCH_CHROMIUM)" >&2
fi
