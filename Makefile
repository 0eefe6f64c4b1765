# hashbench: two commands.
#   make bench   set up (environment + FashionMNIST), run the default grid, render the leaderboard
#   make test    set up, run the tests
PYTHON := .venv/bin/python

.PHONY: bench test acceptance env data chromium benchmark benchmark-search gpu-check dry-run clean

env: .venv/.hashbench-ok
.venv/.hashbench-ok: requirements.txt requirements-gpu.txt tools/setup_env.sh
	bash tools/setup_env.sh
	touch $@

data:
	bash tools/get_fashion_mnist.sh

chromium:
	bash tools/get_chromium.sh

bench: env data
	$(PYTHON) bench.py

test: env data chromium
	$(PYTHON) -m pytest

# the default grid (as make bench runs it) against the figures it must meet; minutes, or seconds after make bench
acceptance: env data
	$(PYTHON) -m pytest tests/acceptance_default_grid.py

# speed against the papers' evaluation loop, FAISS and a plain PyTorch attack loop, side by side (minutes)
benchmark: env
	$(PYTHON) tools/speed.py

benchmark-search: env
	$(PYTHON) -m pytest tests/bench_search.py --benchmark-only

# on a GPU machine: the device, CUDA, faiss-gpu, one VGG11 cell at 224x224 and make benchmark, to paste in an issue
gpu-check: env
	bash tools/gpu_check.sh

# grids/paper-full.toml's blocks on tiny synthetic data at the real shapes (tools/dry_run.py; long on a CPU)
dry-run: env
	$(PYTHON) tools/dry_run.py

clean:
	rm -rf .cache results/*.parquet leaderboard/site
