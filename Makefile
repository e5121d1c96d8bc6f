# Everything a fresh machine needs: `make demo` and `make test` set up the rest.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
BUF    := node_modules/.bin/buf

.PHONY: all venv generate lint-proto lint test demo bench bench-find-all bench-memory bench-find-dated bench-proof bench-propagation bench-rest bench-sync bench-sync-1m wheels clean

all: test

# Three distributions: the verification core, the client, the node (the repository root).
$(STAMP): pyproject.toml packages/core/pyproject.toml packages/client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e packages/core -e packages/client -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## Regenerate counterpart/v1 from protos/ with the pinned tool versions.
generate: $(STAMP)
	$(PY) scripts/gen_protos.py

# package.json pins buf exactly (and buf pins its per-platform binary); no lock file, because
# npm 11 writes one without the other platforms' binaries, which `npm ci` then refuses.
$(BUF): package.json
	npm install --silent --no-package-lock --no-audit --no-fund
	touch $(BUF)

## buf lint (STANDARD) over the wire contract.
lint-proto: $(BUF)
	cd protos && ../$(BUF) lint

## ruff and mypy --strict over the Python code.
lint: $(STAMP)
	$(PY) -m ruff check directory_server packages scripts tests bench deploy
	$(PY) -m mypy directory_server packages/core/src/counterpart_core packages/client/src/directory_client

test: $(STAMP) lint-proto lint
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) scripts/demo.py

bench: $(STAMP)
	$(PY) bench/bench_find.py

## FindCounterpart with one and two serving processes, on SQLite and on PostgreSQL (127.0.0.1:5432,
## db test; a fresh schema, dropped after). Pass a kept dataset with ARGS="--data-dir DIR".
bench-find-all: $(STAMP)
	$(PY) bench/bench_find.py --processes 1,2 --database sqlite,postgres --connections 8 $(ARGS)

## Memory of a node holding 1,000,000 entries (the dataset takes minutes; bench_memory.py keeps it).
bench-memory: $(STAMP)
	$(PY) bench/bench_memory.py --finds 1000 $(ARGS)

## A current FindCounterpart over dated records (the as-of view of now) against the fast path.
bench-find-dated: $(STAMP)
	$(PY) bench/bench_find_dated.py

## One change reaching the nine other nodes of ten (this tree; see bench/README.md on --baseline-ref).
bench-propagation: $(STAMP)
	$(PY) bench/bench_propagation.py

## A node of a 200-member federation at rest, and one change (this tree; see bench/README.md on --baseline-ref).
bench-rest: $(STAMP)
	$(PY) bench/bench_rest.py

# Datasets a benchmark builds once and reuses (a 1M-entry source takes minutes to sign and store).
BENCH_DATA ?= .bench-data

## Full sync of 100,000 entries (distinct records) into an empty node against the one-core raw
## verify-and-hash rate; one-entry pulls; a publish of one changed record (bench/README.md).
bench-sync: $(STAMP)
	$(PY) bench/bench_sync.py --entries 100000 --dataset $(BENCH_DATA)/sync-100k --publish

## The serving side of a one-entry pull: GetConsistencyProof at 1,000,000 entries, against the old full computation.
bench-proof: $(STAMP)
	$(PY) bench/bench_proof.py --entries 1000000

## The same over 1,000,000 entries of one member: 5,000 records, 200 versions each.
bench-sync-1m: $(STAMP)
	$(PY) bench/bench_sync.py --entries 1000000 --records 5000 --batch 50000 \
	    --dataset $(BENCH_DATA)/sync-1m --publish

## Wheels of the three distributions into dist/.
wheels: $(STAMP)
	$(PY) -m pip wheel --quiet --no-deps --wheel-dir dist packages/core packages/client .

clean:
	rm -rf $(VENV) node_modules .pytest_cache build dist *.egg-info packages/*/src/*.egg-info
