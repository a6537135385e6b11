# StreamFlow — developer entry points. Everything runs from a fresh clone with Python >= 3.11.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test lint typecheck unit e2e kafka kafka-stop bench bench-quick schema helm-check clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## run the web-form example on the embedded transport and print its trace
	rm -rf .streamflow/demo
	$(BIN)/streamflow run topologies/web-form-to-cms/integration.yaml \
	  --input topologies/web-form-to-cms/events.ndjson \
	  --mocks topologies/web-form-to-cms/mocks.yaml --broker local://.streamflow/demo

lint: $(STAMP)
	$(BIN)/ruff check streamflow tests bench
	$(BIN)/mypy streamflow tests/kafka_broker.py tests/integration/test_helm.py

test: $(STAMP) lint  ## lint, type-check, then every test (Kafka tests start a local broker)
	$(BIN)/streamflow validate topologies/
	$(BIN)/streamflow test topologies/
	$(BIN)/streamflow schema --check
	$(BIN)/streamflow steps --markdown | diff -u docs/steps.md - || (echo "docs/steps.md is out of date: streamflow steps --markdown > docs/steps.md"; exit 1)
	bash scripts/helm-check.sh
	$(BIN)/pytest -q -ra

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

kafka: $(STAMP)  ## start (or reuse) a single-node Apache Kafka broker on 127.0.0.1:9092
	PYTHON=$(BIN)/python bash scripts/kafka.sh start

kafka-stop:
	bash scripts/kafka.sh stop

bench: $(STAMP)  ## full benchmark run -> bench/results, docs/benchmarks.md (BENCH_ARGS="--only ceiling,sf-1step")
	$(BIN)/python -m bench.run $(BENCH_ARGS)

bench-quick: $(STAMP)  ## the same on a few thousand events: checks the harness (< 5 min)
	$(BIN)/python -m bench.run --quick $(BENCH_ARGS)

helm-check:  ## helm lint + helm template of helm/streamflow with every examples/*.yaml (builds helm once)
	bash scripts/helm-check.sh

schema: $(STAMP)
	$(BIN)/streamflow schema

clean:
	rm -rf .streamflow .mypy_cache .ruff_cache .pytest_cache
