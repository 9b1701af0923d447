# Benchmarks: strongroom vs restic vs borg (see bench/README.md).
PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
BENCH_ARGS ?=

.PHONY: bench bench-quick

# Full run: /usr/share, /usr/local, /usr/lib/x86_64-linux-gnu (~1.8 GB); bench/results/latest.*
bench:
	$(PYTHON) bench/bench.py $(BENCH_ARGS)

# Small run (/usr/share/doc, /usr/lib/python3*), a few minutes; bench/results/latest-quick.*
bench-quick:
	$(PYTHON) bench/bench.py --quick $(BENCH_ARGS)
