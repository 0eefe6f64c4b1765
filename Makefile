# hashbench: two commands.
#   make bench   set up (environment + FashionMNIST), run the default grid, render the leaderboard
#   make test    set up, run the tests
PYTHON := .venv/bin/python

.PHONY: bench test env data benchmark-search clean

env: .venv/.hashbench-ok
.venv/.hashbench-ok: requirements.txt tools/setup_env.sh
	bash tools/setup_env.sh
	touch $@

data:
	bash tools/get_fashion_mnist.sh

bench: env data
	$(PYTHON) bench.py

test: env data
	$(PYTHON) -m pytest

benchmark-search: env
	$(PYTHON) -m pytest tests/bench_search.py --benchmark-only

clean:
	rm -rf .cache results/*.parquet leaderboard/site
