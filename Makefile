# hashbench: two commands.
#   make bench   set up (environment + FashionMNIST), run the default grid, render the leaderboard
#   make test    set up, run the tests
PYTHON := .venv/bin/python

.PHONY: bench test acceptance env data chromium benchmark benchmark-search clean

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

clean:
	rm -rf .cache results/*.parquet leaderboard/site
