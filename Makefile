# One command each for set-up, running, tests and benchmarks. `make help` lists them.
.DEFAULT_GOAL := help
SHELL := /bin/bash
VENV := .venv/bin
STAMP := .venv/.installed
SOURCES := pyproject.toml Cargo.toml rust/Cargo.toml $(wildcard rust/src/*.rs)

$(STAMP): $(SOURCES) scripts/bootstrap.sh
	./scripts/bootstrap.sh
	touch $(STAMP)

.PHONY: install
install: $(STAMP) ## Create .venv (Python 3.12+) and install the project, Rust extension included

# The example prompts' datasets, which `make up`'s runner resolves and scores; `make up DATA_DIR=...` for yours.
DATA_DIR ?= examples/agentmark

.PHONY: up
up: $(STAMP) ## Install, then run the gateway with the OpenAI runner on embedded defaults (datasets: DATA_DIR=examples/agentmark)
	$(VENV)/agentmark-gw up --data-dir $(DATA_DIR)

.PHONY: test
test: $(STAMP) ## Install, then run every test: Rust unit tests, the benchmarks once as tests, the pytest suite
	./scripts/system_packages.sh
	@# The Rust example runner is a process in two tests. It builds in the background, in a target
	@# directory of its own so cargo test need not wait for it; those two tests run last and wait.
	mkdir -p target && (cargo build --quiet -p agentmark-runner-rust --target-dir target/rust-runner >target/rust-runner.log 2>&1 &)
	cargo test --no-default-features --quiet
	$(VENV)/python -m pytest benchmarks/test_core_micro.py --benchmark-disable -q -p no:cacheprovider
	$(VENV)/python -m pytest

.PHONY: lint
lint: $(STAMP) ## Lint (ruff, configured in pyproject.toml), type-check (mypy; stubtest: _core.pyi against the extension), clippy
	$(VENV)/python -m ruff check .
	$(VENV)/python -m mypy python/agentmark_gw --ignore-missing-imports --exclude 'protocol/'
	$(VENV)/python -m mypy.stubtest agentmark_gw._core
	cargo clippy --quiet --no-default-features -- -D warnings
	cargo clippy --quiet -p agentmark-gw-core --no-default-features --features client -- -D warnings

.PHONY: protos
protos: $(STAMP) ## Regenerate the Python gRPC stubs from protos/
	$(VENV)/python scripts/generate_protos.py

.PHONY: fuzz
fuzz: ## Fuzz the Rust core's raw-bytes entry points for 60 s (cargo fuzz)
	./scripts/fuzz.sh 60

.PHONY: bench
bench: $(STAMP) ## Micro-benchmarks: the Rust core against its Python twin
	$(VENV)/python -m pytest benchmarks --benchmark-only -p no:cacheprovider

.PHONY: bench-datasets
bench-datasets: $(STAMP) ## One 200-row dataset run spread over 1 and 3 runners, 200 ms model (benchmarks/README.md)
	$(VENV)/python -m benchmarks.dataset_spread

.PHONY: bench-e2e
bench-e2e: $(STAMP) ## End to end: gateway (Hypercorn, Granian, asyncio loop) vs bare Quart vs AgentMark's server: paced token streams (100-1,000 at once), then wrk; added latency, RSS (about 20 min, more on a busy machine)
	@command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk"; exit 1; }
	$(VENV)/python -m benchmarks.e2e --duration 10 --out benchmarks/results/e2e.json --markdown benchmarks/results/e2e.md

.PHONY: help
help: ## Show this help
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

.PHONY: scale-out
scale-out: $(STAMP) ## nginx in front of 2 gateways (2 workers each) and 3 runners, on loopback; Ctrl-C stops it
	$(VENV)/python -m scripts.scale_out

.PHONY: soak
soak: $(STAMP) ## Soak: 10 min of mixed events at 25 req/s; gateway RSS, fds and 5xx checked (benchmarks/results/soak.*)
	$(VENV)/python -m benchmarks.soak --duration 600 --rate 25 --out benchmarks/results/soak.json --markdown benchmarks/results/soak.md
